//! Per-layer time of MobileNetV3-Large's forward pass (batch B, random values), through the same
//! `ops` calls the model makes: where the milliseconds go.
//!
//! With `wrn` as the first argument: Wide ResNet-50-2's convolutions instead (3x3 ones through a
//! `PreparedWeight`, so they take the kernel the model takes; 1x1 stride-1 ones through a packed
//! `PointwiseWeight`, as the model, unless `IMGCLASS_PACK1X1=0`).
//!
//!     cargo run --release --example layer_profile -- [wrn] [batch] [iters]
//!
//! `INTERLEAVE=1` (Wide ResNet only): after every whole pass, each layer is also run twice and the
//! second run timed ("hot": its weights and input in cache), so the time each layer loses inside the
//! pass is measured side by side with its hot time, under the same host load. Inside the pass each
//! layer reads the fresh outputs of the layers before it, as in the model.
use candle_core::{Device, Result, Tensor};
use imgclass::models::mobilenet_v3::{make_divisible, MOBILENET_V3_LARGE_BLOCKS};
use imgclass::ops::{self, Activation, ConvParams};
use std::time::Instant;

fn rnd(shape: &[usize]) -> Result<Tensor> {
    Tensor::randn(0f32, 0.1, shape, &Device::Cpu)
}

struct Timer {
    rows: Vec<(String, f64)>,
    iters: usize,
}

impl Timer {
    fn time<T>(&mut self, name: String, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut best = f64::MAX;
        let mut times = Vec::with_capacity(self.iters);
        let mut out = f()?;
        for _ in 0..self.iters {
            let t = Instant::now();
            out = f()?;
            let dt = t.elapsed().as_secs_f64() * 1e3;
            best = best.min(dt);
            times.push(dt);
        }
        times.sort_by(f64::total_cmp);
        self.rows.push((name, times[times.len() / 2]));
        Ok(out)
    }
}

fn main() -> Result<()> {
    ops::configure_threads();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1);
    let iters = args.get(1).copied().unwrap_or(200);
    if std::env::args().nth(1).as_deref() == Some("wrn") {
        return ops::in_pool(|| run_wrn(n, iters));
    }
    ops::in_pool(|| run(n, iters))
}

fn run(n: usize, iters: usize) -> Result<()> {
    let mut t = Timer {
        rows: Vec::new(),
        iters,
    };
    let pw = ConvParams {
        stride: 1,
        padding: 0,
        groups: 1,
    };
    let x = rnd(&[n, 3, 224, 224])?;
    let w = rnd(&[16, 3, 3, 3])?;
    let b = rnd(&[16])?;
    let stem = ConvParams {
        stride: 2,
        padding: 1,
        groups: 1,
    };
    let mut x = t.time("stem 3x3/2 3->16 @112".into(), || {
        ops::conv2d(&x, &w, Some(&b), stem, Activation::Hardswish, None)
    })?;
    for (i, c) in MOBILENET_V3_LARGE_BLOCKS.iter().enumerate() {
        let act = if c.use_hs {
            Activation::Hardswish
        } else {
            Activation::Relu
        };
        let input = x.clone();
        let side = x.dims()[2];
        let mut y = x.clone();
        if c.expanded_channels != c.input_channels {
            let w = rnd(&[c.expanded_channels, c.input_channels, 1, 1])?;
            let b = rnd(&[c.expanded_channels])?;
            y = t.time(
                format!(
                    "b{i:<2} expand {}->{} @{side}",
                    c.input_channels, c.expanded_channels
                ),
                || ops::conv2d(&x, &w, Some(&b), pw, act, None),
            )?;
        }
        let e = c.expanded_channels;
        let w = rnd(&[e, 1, c.kernel, c.kernel])?;
        let b = rnd(&[e])?;
        let dp = ConvParams {
            stride: c.stride,
            padding: (c.kernel - 1) / 2,
            groups: e,
        };
        let yin = y.clone();
        y = t.time(
            format!(
                "b{i:<2} dw{}x{}/{} {e} @{side}",
                c.kernel, c.kernel, c.stride
            ),
            || ops::conv2d(&yin, &w, Some(&b), dp, act, None),
        )?;
        // SqueezeExcitation: "se" is its pooling, fc1 and fc2; the scale x * hardsigmoid(s) is
        // applied by the project conv (`conv2d_se_scaled`, as the model does), so it is in "project".
        let mut se_logits = None;
        if c.use_se {
            let s = make_divisible((e / 4) as f64, 8);
            let w1 = rnd(&[s, e, 1, 1])?;
            let b1 = rnd(&[s])?;
            let w2 = rnd(&[e, s, 1, 1])?;
            let b2 = rnd(&[e])?;
            let yin = y.clone();
            se_logits = Some(t.time(format!("b{i:<2} se {e}->{s}"), || {
                let pooled = ops::global_avg_pool(&yin)?.reshape((n, e, 1, 1))?;
                let s = ops::conv2d(&pooled, &w1, Some(&b1), pw, Activation::Relu, None)?;
                ops::conv2d(&s, &w2, Some(&b2), pw, Activation::None, None)
            })?);
        }
        let w = rnd(&[c.out_channels, e, 1, 1])?;
        let b = rnd(&[c.out_channels])?;
        let res = (c.stride == 1 && c.input_channels == c.out_channels).then_some(&input);
        let oside = y.dims()[2];
        let se_tag = if se_logits.is_some() { " +se" } else { "" };
        x = t.time(
            format!("b{i:<2} project{se_tag} {e}->{} @{oside}", c.out_channels),
            || match &se_logits {
                Some(s) => ops::conv2d_se_scaled(&y, s, &w, Some(&b), pw, Activation::None, res),
                None => ops::conv2d(&y, &w, Some(&b), pw, Activation::None, res),
            },
        )?;
    }
    let w = rnd(&[960, 160, 1, 1])?;
    let b = rnd(&[960])?;
    let x = t.time("last 160->960 @7".into(), || {
        ops::conv2d(&x, &w, Some(&b), pw, Activation::Hardswish, None)
    })?;
    let w1 = rnd(&[1280, 960])?;
    let b1 = rnd(&[1280])?;
    let w2 = rnd(&[1000, 1280])?;
    let b2 = rnd(&[1000])?;
    t.time("pool + classifier".into(), || {
        let p = ops::global_avg_pool(&x)?.reshape((n, 960))?;
        let h = ops::linear(&p, &w1, Some(&b1), Activation::Hardswish)?;
        ops::linear(&h, &w2, Some(&b2), Activation::None)
    })?;
    report(&t, n);
    Ok(())
}

/// One convolution of the Wide ResNet sequence: reads `acts[input]` (and `acts[res]`), appends its output.
struct WrnLayer {
    name: String,
    w: ops::PreparedWeight,
    /// 1x1 stride-1 weights packed once, as the model keeps them (unless `IMGCLASS_PACK1X1=0`)
    packed: Option<ops::PointwiseWeight>,
    b: Tensor,
    p: ConvParams,
    act: Activation,
    input: usize,
    res: Option<usize>,
    /// max-pool the output (the stem)
    pool: bool,
}

impl WrnLayer {
    fn run(&self, acts: &[Tensor]) -> Result<Tensor> {
        let res = self.res.map(|r| &acts[r]);
        let x = &acts[self.input];
        let y = match &self.packed {
            Some(pw) => ops::conv2d_pointwise(x, pw, Some(&self.b), self.act, res)?,
            None => ops::conv2d_prepared(x, &self.w, Some(&self.b), self.p, self.act, res)?,
        };
        if self.pool {
            ops::max_pool2d(&y, 3, 2, 1)
        } else {
            Ok(y)
        }
    }
}

/// Wide ResNet's convolutions, each timed alone (hot: its weights and input stay in cache across
/// iterations) and inside whole sequential passes (as in the model: every layer's weights come back
/// from memory, and it reads the fresh outputs of the layers before it), so the difference shows
/// what a layer loses to the pass around it.
fn run_wrn(n: usize, iters: usize) -> Result<()> {
    use imgclass::models::resnet::ResNetConfig;
    let mut layers: Vec<WrnLayer> = Vec::new();
    let mut acts = vec![rnd(&[n, 3, 224, 224])?];
    let mut add = |acts: &mut Vec<Tensor>,
                   name: String,
                   input: usize,
                   o: usize,
                   k: usize,
                   s: usize,
                   act,
                   res,
                   pool|
     -> Result<usize> {
        let c = acts[input].dims()[1];
        let w = rnd(&[o, c, k, k])?;
        let pixels = acts[input].dims()[2] * acts[input].dims()[3];
        let packed = match ops::PointwiseWeight::layout_for(o, pixels) {
            Some(l) if k == 1 && s == 1 && ops::pack1x1_enabled() => {
                Some(ops::PointwiseWeight::new(&w, l)?)
            }
            _ => None,
        };
        let layer = WrnLayer {
            name,
            w: ops::PreparedWeight::new(w),
            packed,
            b: rnd(&[o])?,
            p: ConvParams {
                stride: s,
                padding: (k - 1) / 2,
                groups: 1,
            },
            act,
            input,
            res,
            pool,
        };
        acts.push(layer.run(acts)?);
        layers.push(layer);
        Ok(acts.len() - 1)
    };
    let mut x = add(
        &mut acts,
        "stem 7x7/2 3->64 (+maxpool)".into(),
        0,
        64,
        7,
        2,
        Activation::Relu,
        None,
        true,
    )?;
    for (s, i, b) in ResNetConfig::wide_resnet50_2().blocks() {
        let side = acts[x].dims()[2];
        let y1 = add(
            &mut acts,
            format!("l{s}.{i} conv1 1x1 {}->{} @{side}", b.inplanes, b.width),
            x,
            b.width,
            1,
            1,
            Activation::Relu,
            None,
            false,
        )?;
        let y2 = add(
            &mut acts,
            format!("l{s}.{i} conv2 3x3/{} {} @{side}", b.stride, b.width),
            y1,
            b.width,
            3,
            b.stride,
            Activation::Relu,
            None,
            false,
        )?;
        let side2 = acts[y2].dims()[2];
        let id = if b.downsample {
            add(
                &mut acts,
                format!("l{s}.{i} downsample 1x1/{} @{side}", b.stride),
                x,
                b.out_channels,
                1,
                b.stride,
                Activation::None,
                None,
                false,
            )?
        } else {
            x
        };
        x = add(
            &mut acts,
            format!(
                "l{s}.{i} conv3 1x1 {}->{} @{side2}",
                b.width, b.out_channels
            ),
            y2,
            b.out_channels,
            1,
            1,
            Activation::Relu,
            Some(id),
            false,
        )?;
    }
    let mut seq = vec![Vec::with_capacity(iters); layers.len()];
    let mut hot = vec![Vec::with_capacity(iters); layers.len()];
    let interleave = std::env::var_os("INTERLEAVE").is_some();
    for _ in 0..iters {
        // As in the model, each layer reads the fresh outputs of the layers before it (not the
        // activations stored when the sequence was built, long out of cache by then).
        let mut fresh = vec![acts[0].clone()];
        for (l, times) in layers.iter().zip(seq.iter_mut()) {
            let t0 = Instant::now();
            let y = l.run(&fresh)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            fresh.push(y);
        }
        drop(fresh);
        if interleave {
            for (l, times) in layers.iter().zip(hot.iter_mut()) {
                drop(l.run(&acts)?);
                let t0 = Instant::now();
                let y = l.run(&acts)?;
                times.push(t0.elapsed().as_secs_f64() * 1e3);
                drop(y);
            }
        }
    }
    if interleave {
        let (mut a, mut b) = (0.0, 0.0);
        for ((l, mut s), mut h) in layers.iter().zip(seq.clone()).zip(hot) {
            s.sort_by(f64::total_cmp);
            h.sort_by(f64::total_cmp);
            let (ms, mh) = (s[s.len() / 2], h[h.len() / 2]);
            a += ms;
            b += mh;
            println!(
                "{:<34} in pass {ms:7.3} ms, hot {mh:7.3} ms, diff {:6.3}",
                l.name,
                ms - mh
            );
        }
        println!("sum: in pass {a:.3} ms, hot {b:.3} ms (batch {n})");
        return Ok(());
    }
    let mut t = Timer {
        rows: Vec::new(),
        iters,
    };
    let mut seq_total = 0.0;
    for (l, mut times) in layers.iter().zip(seq) {
        times.sort_by(f64::total_cmp);
        let in_seq = times[times.len() / 2];
        seq_total += in_seq;
        t.time(
            format!("{:<34} in pass {in_seq:>7.3} ms, alone", l.name),
            || l.run(&acts),
        )?;
    }
    report(&t, n);
    println!("sum of in-pass medians {seq_total:.3} ms");
    Ok(())
}

fn report(t: &Timer, n: usize) {
    let total: f64 = t.rows.iter().map(|r| r.1).sum();
    for (name, ms) in &t.rows {
        println!("{name:<32} {:>7.3} ms {:>5.1}%", ms, 100.0 * ms / total);
    }
    let mut kinds = std::collections::BTreeMap::<&str, f64>::new();
    for (name, ms) in &t.rows {
        let kind = [
            "expand",
            "dw",
            "project",
            "se",
            "stem",
            "last",
            "classifier",
            "conv1",
            "3x3/1",
            "3x3/2",
            "downsample",
            "conv3",
        ]
        .into_iter()
        .find(|k| name.contains(k))
        .unwrap_or("other");
        *kinds.entry(kind).or_default() += ms;
    }
    println!("sum of medians {total:.3} ms (batch {n})");
    for (k, ms) in kinds {
        println!("  {k:<10} {ms:>7.3} ms");
    }
}
