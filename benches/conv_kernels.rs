//! Criterion micro-benchmarks: every fast conv kernel behind `imgclass::ops::conv2d` side by side
//! with the plain candle op (`ops::reference::conv2d`), on layer shapes of the two networks.
//!
//! Run: `cargo bench --bench conv_kernels` (filter: `cargo bench --bench conv_kernels -- depthwise`).
//! The `wrn3x3_batch{1,8}` groups compare, on the 3x3 stride-1 layers of Wide ResNet-50-2, the
//! Winograd kernels (F(2,3) and F(4,3), weights transformed once), im2col + GEMM and candle.
//! The `wrn1x1_batch{1,8}` groups compare, on its 1x1 stride-1 layers, the unpacked AVX-512
//! kernel with the two packed-weight layouts (`ops::conv2d_pointwise`).
//! The `depthwise_small` group compares, on MobileNetV3's 28², 14² and 7² depthwise layers, the
//! per-plane kernel with the channel-vector one (`ops::depthwise`) that `ops::conv2d` picks there.
//! The `fused_block` group compares, on MobileNetV3's first four inverted residuals (the maps
//! `ops::inverted_residual` fuses), the fused block with its layers one by one, each with hot
//! caches and after 64 MB of other memory was touched (as inside a forward pass, where a block's
//! output buffer is not in any cache).
//! The `resize_hpass` group compares, on the horizontal resampling pass of a 640x480 photo going
//! to 232 pixels (Pillow's bilinear, 7 taps, the 224 center-crop columns of 466 rows), the AVX-512
//! pass (`ops::resize`) and its AVX-512 VBMI blocks (`ops::resize::Blocks`) with the same sums
//! in scalar code (single-threaded, like the server's decoders).
//! The `jpeg_decode` group compares, on a 640x480 4:2:0 JPEG like the server benchmark's, the
//! decoder `preprocess::decode` uses (libjpeg-turbo) with `image`'s own (zune-jpeg).
//! The `wino_gemm` group compares, on the 16 GEMMs of one Winograd F(2,3) call of Wide ResNet's
//! 3x3 stride-1 layers at batch 1 (`U[e] (O x C) x V[e] (C x tiles)`, the input rows 16 elements
//! apart as the input transform writes them), the packed-weight kernel
//! (`packed1x1::gemm_serial`, weight packed at load) with the `gemm` crate on the plain weight
//! (which packs both operands on every call), single-threaded, as each Winograd GEMM runs.
//! Set `RAYON_NUM_THREADS` to pin the thread count (the README figures use the machine's 2 cores).

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use imgclass::ops::{self, winograd::Tile, Activation, ConvParams, Kernel, PreparedWeight};
use std::time::Duration;

struct Layer {
    name: &'static str,
    n: usize,
    c: usize,
    hw: usize,
    o: usize,
    k: usize,
    stride: usize,
    groups: usize,
    act: Activation,
}

const fn dw(name: &'static str, c: usize, hw: usize, k: usize, stride: usize) -> Layer {
    Layer {
        name,
        n: 1,
        c,
        hw,
        o: c,
        k,
        stride,
        groups: c,
        act: Activation::Hardswish,
    }
}

const fn dense(
    name: &'static str,
    c: usize,
    hw: usize,
    o: usize,
    k: usize,
    stride: usize,
) -> Layer {
    Layer {
        name,
        n: 1,
        c,
        hw,
        o,
        k,
        stride,
        groups: 1,
        act: Activation::Relu,
    }
}

const LAYERS: &[Layer] = &[
    // MobileNetV3-Large depthwise layers
    dw("dw3x3_s1_16ch_112", 16, 112, 3, 1),
    dw("dw3x3_s2_64ch_112", 64, 112, 3, 2),
    dw("dw5x5_s2_72ch_56", 72, 56, 5, 2),
    dw("dw5x5_s1_120ch_28", 120, 28, 5, 1),
    dw("dw3x3_s1_240ch_28", 240, 28, 3, 1),
    dw("dw3x3_s1_480ch_14", 480, 14, 3, 1),
    dw("dw5x5_s2_672ch_14", 672, 14, 5, 2),
    dw("dw5x5_s1_960ch_7", 960, 7, 5, 1),
    // MobileNetV3-Large pointwise
    dense("pw_120to40_28", 120, 28, 40, 1, 1),
    dense("pw_160to960_7", 160, 7, 960, 1, 1),
    dense("pw_16to64_112", 16, 112, 64, 1, 1),
    dense("pw_112to672_14", 112, 14, 672, 1, 1),
    dense("pw_960to160_7", 960, 7, 160, 1, 1),
    dense("stem3x3_s2_3to16_224", 3, 224, 16, 3, 2), // stem::conv (direct kernel)
    // Wide ResNet-50-2
    dense("stem7x7_s2_3to64_224", 3, 224, 64, 7, 2),
    dense("c1x1_256to128_56", 256, 56, 128, 1, 1),
    dense("c1x1_s2_512to1024_56", 512, 56, 1024, 1, 2),
    dense("c3x3_128_56", 128, 56, 128, 3, 1),
    dense("c3x3_256_56", 256, 56, 256, 3, 1),
    dense("c3x3_256_28", 256, 28, 256, 3, 1),
    dense("c3x3_512_14", 512, 14, 512, 3, 1),
    dense("c3x3_1024_7", 1024, 7, 1024, 3, 1),
];

fn rand(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap()
}

fn bench_layers(c: &mut Criterion, batch: usize, group_name: &str) {
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for l in LAYERS {
        let n = l.n * batch;
        let x = rand(&[n, l.c, l.hw, l.hw]);
        let w = rand(&[l.o, l.c / l.groups, l.k, l.k]);
        let b = rand(&[l.o]);
        let p = ConvParams {
            stride: l.stride,
            padding: l.k / 2,
            groups: l.groups,
        };
        group.bench_with_input(BenchmarkId::new("imgclass", l.name), l, |bch, l| {
            bch.iter(|| ops::conv2d(&x, &w, Some(&b), p, l.act, None).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("candle", l.name), l, |bch, l| {
            bch.iter(|| ops::reference::conv2d(&x, &w, Some(&b), p, l.act, None).unwrap())
        });
    }
    group.finish();
}

/// Wide ResNet-50-2's 3x3 stride-1 layers (13 of them: 3 at 56^2, 3 at 28^2, 5 at 14^2, 2 at 7^2).
const WRN_3X3: &[(&str, usize, usize)] = &[
    ("c3x3_128_56", 128, 56),
    ("c3x3_256_28", 256, 28),
    ("c3x3_512_14", 512, 14),
    ("c3x3_1024_7", 1024, 7),
];

fn bench_wrn3x3(c: &mut Criterion, batch: usize, group_name: &str, with_candle: bool) {
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let p = ConvParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    for &(name, ch, hw) in WRN_3X3 {
        let x = rand(&[batch, ch, hw, hw]);
        let w = PreparedWeight::new(rand(&[ch, ch, 3, 3]));
        let b = rand(&[ch]);
        let kernels = [
            ("auto", ops::select_kernel(&x, w.weight(), p)),
            ("im2col", Kernel::Dense),
            ("winograd_f2", Kernel::Winograd(Tile::F2)),
            ("winograd_f4", Kernel::Winograd(Tile::F4)),
        ];
        for (label, k) in kernels {
            // first call transforms the weight (outside the timing)
            ops::conv2d_with_kernel(k, &x, &w, Some(&b), p, Activation::Relu, None).unwrap();
            group.bench_function(BenchmarkId::new(label, name), |bch| {
                bch.iter(|| {
                    ops::conv2d_with_kernel(k, &x, &w, Some(&b), p, Activation::Relu, None).unwrap()
                })
            });
        }
        if with_candle {
            group.bench_function(BenchmarkId::new("candle", name), |bch| {
                bch.iter(|| {
                    ops::reference::conv2d(&x, w.weight(), Some(&b), p, Activation::Relu, None)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

fn batch1(c: &mut Criterion) {
    bench_layers(c, 1, "conv_batch1");
}

fn wrn3x3(c: &mut Criterion) {
    bench_wrn3x3(c, 1, "wrn3x3_batch1", true);
    bench_wrn3x3(c, 8, "wrn3x3_batch8", false);
}

/// MobileNetV3's classifier and SqueezeExcitation `Linear`s (fused GEMV) against candle's matmul.
fn linear(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (n, k, o) in [
        (1, 960, 1280),
        (1, 1280, 1000),
        (8, 960, 1280),
        (1, 960, 240),
    ] {
        let (x, w, b) = (rand(&[n, k]), rand(&[o, k]), rand(&[o]));
        let name = format!("{n}x{k}to{o}");
        group.bench_function(BenchmarkId::new("imgclass", &name), |bch| {
            bch.iter(|| ops::linear(&x, &w, Some(&b), Activation::Hardswish).unwrap())
        });
        group.bench_function(BenchmarkId::new("candle", &name), |bch| {
            bch.iter(|| ops::reference::linear(&x, &w, Some(&b), Activation::Hardswish).unwrap())
        });
    }
    group.finish();
}

/// Wide ResNet-50-2's 1x1 stride-1 convolutions (conv1 shapes, one per feature-map size): the
/// unpacked kernel behind `ops::conv2d` against both packed layouts (`ops::conv2d_pointwise`,
/// weight packed once outside the timing), at batch 1 and 8. Skipped where the CPU cannot pack.
fn wrn1x1(c: &mut Criterion) {
    use ops::packed1x1::Layout;
    for batch in [1, 8] {
        let mut group = c.benchmark_group(format!("wrn1x1_batch{batch}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        let p = ConvParams {
            stride: 1,
            padding: 0,
            groups: 1,
        };
        for (k, o, hw) in [
            (256, 128, 56),
            (512, 256, 28),
            (1024, 512, 14),
            (2048, 1024, 7),
        ] {
            let name = format!("{k}to{o}_{hw}");
            let x = rand(&[batch, k, hw, hw]);
            let w = rand(&[o, k, 1, 1]);
            let b = rand(&[o]);
            group.bench_function(BenchmarkId::new("unpacked", &name), |bch| {
                bch.iter(|| ops::conv2d(&x, &w, Some(&b), p, Activation::Relu, None).unwrap())
            });
            for (label, layout) in [
                ("panels8", Layout::Panels8),
                ("channel_vectors", Layout::ChannelVectors),
            ] {
                if !ops::PointwiseWeight::supported(o, layout) {
                    continue;
                }
                let pw = ops::PointwiseWeight::new(&w, layout).unwrap();
                group.bench_function(BenchmarkId::new(label, &name), |bch| {
                    bch.iter(|| {
                        ops::conv2d_pointwise(&x, &pw, Some(&b), Activation::Relu, None).unwrap()
                    })
                });
            }
        }
        group.finish();
    }
}

/// MobileNetV3's SqueezeExcitation scale + project 1x1 conv: the scale folded into the conv
/// (`conv2d_se_scaled`) against `se_scale` then `conv2d` (and the plain candle ops).
fn se_project(c: &mut Criterion) {
    let mut group = c.benchmark_group("se_project");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let p = ConvParams {
        stride: 1,
        padding: 0,
        groups: 1,
    };
    for (n, ch, hw, o) in [
        (1, 120, 28, 40),
        (1, 672, 14, 112),
        (1, 960, 7, 160),
        (8, 960, 7, 160),
    ] {
        let x = rand(&[n, ch, hw, hw]);
        let s = rand(&[n, ch, 1, 1]);
        let w = rand(&[o, ch, 1, 1]);
        let b = rand(&[o]);
        let name = format!("{n}x{ch}to{o}_{hw}");
        group.bench_function(BenchmarkId::new("fused", &name), |bch| {
            bch.iter(|| {
                ops::conv2d_se_scaled(&x, &s, &w, Some(&b), p, Activation::None, None).unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("se_scale+conv", &name), |bch| {
            bch.iter(|| {
                let xs = ops::se_scale(&x, &s).unwrap();
                ops::conv2d(&xs, &w, Some(&b), p, Activation::None, None).unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("candle", &name), |bch| {
            bch.iter(|| {
                let xs = ops::pool::reference::se_scale(&x, &s).unwrap();
                ops::reference::conv2d(&xs, &w, Some(&b), p, Activation::None, None).unwrap()
            })
        });
    }
    group.finish();
}

fn depthwise_small(c: &mut Criterion) {
    use ops::depthwise;
    let mut group = c.benchmark_group("depthwise_small");
    group.measurement_time(Duration::from_secs(3));
    for (ch, hw, k, stride) in [
        (120, 28, 5, 1),
        (240, 28, 3, 2),
        (672, 14, 3, 1),
        (672, 14, 5, 2),
        (960, 7, 5, 1),
    ] {
        let pad = (k - 1) / 2;
        let side = (hw + 2 * pad - k) / stride + 1;
        let g = ops::Geometry {
            n: 1,
            c: ch,
            h: hw,
            w: hw,
            o: ch,
            k,
            stride,
            pad,
            oh: side,
            ow: side,
        };
        let flat = |t: Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap();
        let x = flat(rand(&[1, ch, hw, hw]));
        let w = flat(rand(&[ch, 1, k, k]));
        let b = flat(rand(&[ch]));
        let name = format!("dw{k}x{k}/{stride} {ch}@{hw}");
        group.bench_function(BenchmarkId::new("per_plane", &name), |bch| {
            bch.iter(|| depthwise::depthwise(&x, &w, Some(&b), None, Activation::Hardswish, &g))
        });
        if depthwise::cv_applies(&g, false) {
            group.bench_function(BenchmarkId::new("channel_vector", &name), |bch| {
                bch.iter(|| depthwise::depthwise_cv(&x, &w, Some(&b), Activation::Hardswish, &g))
            });
        }
    }
    group.finish();
}

fn relu_conv(t: &(Tensor, Tensor)) -> ops::BlockConv<'_> {
    ops::BlockConv {
        weight: &t.0,
        bias: Some(&t.1),
        act: Activation::Relu,
    }
}

fn fused_block(c: &mut Criterion) {
    use criterion::BatchSize;
    let mut group = c.benchmark_group("fused_block");
    group.measurement_time(Duration::from_secs(3));
    let pw = ConvParams {
        stride: 1,
        padding: 0,
        groups: 1,
    };
    let mut junk = vec![1u8; 64 << 20];
    // (name, c, e, o, k, stride, side, residual, squeeze-excitation: no project fused)
    for (name, ch, e, o, k, stride, side, residual, se) in [
        (
            "b0 dw3x3 16@112 +project",
            16,
            16,
            16,
            3,
            1,
            112,
            true,
            false,
        ),
        (
            "b1 16->64 dw3x3/2 ->24 @112",
            16,
            64,
            24,
            3,
            2,
            112,
            false,
            false,
        ),
        (
            "b2 24->72 dw3x3 ->24 @56",
            24,
            72,
            24,
            3,
            1,
            56,
            true,
            false,
        ),
        ("b3 24->72 dw5x5/2 @56", 24, 72, 40, 5, 2, 56, false, true),
    ] {
        for batch in [1, 8] {
            let x = rand(&[batch, ch, side, side]);
            let ex = (e != ch).then(|| (rand(&[e, ch, 1, 1]), rand(&[e])));
            let dw = (rand(&[e, 1, k, k]), rand(&[e]));
            let pr = (!se).then(|| (rand(&[o, e, 1, 1]), rand(&[o])));
            let res = residual.then_some(&x);

            let fused = || {
                ops::inverted_residual(
                    &x,
                    ex.as_ref().map(relu_conv),
                    relu_conv(&dw),
                    stride,
                    pr.as_ref().map(|t| ops::BlockConv {
                        act: Activation::None,
                        ..relu_conv(t)
                    }),
                    res,
                )
                .unwrap()
            };
            if fused().is_none() {
                continue; // not an AVX-512 CPU
            }
            let layers = || {
                let mut y = x.clone();
                if let Some((w, b)) = &ex {
                    y = ops::conv2d(&y, w, Some(b), pw, Activation::Relu, None).unwrap();
                }
                let p = ConvParams {
                    stride,
                    padding: k / 2,
                    groups: e,
                };
                y = ops::conv2d(&y, &dw.0, Some(&dw.1), p, Activation::Relu, None).unwrap();
                if let Some((w, b)) = &pr {
                    y = ops::conv2d(&y, w, Some(b), pw, Activation::None, res).unwrap();
                }
                y
            };
            let id = format!("{name} batch{batch}");
            group.bench_function(BenchmarkId::new("layers", &id), |b| b.iter(layers));
            group.bench_function(BenchmarkId::new("fused", &id), |b| b.iter(fused));
            let mut flush = || {
                for v in junk.iter_mut().step_by(64) {
                    *v = v.wrapping_add(1);
                }
            };
            group.bench_function(BenchmarkId::new("layers_cold", &id), |b| {
                b.iter_batched(&mut flush, |_| layers(), BatchSize::PerIteration)
            });
            group.bench_function(BenchmarkId::new("fused_cold", &id), |b| {
                b.iter_batched(&mut flush, |_| fused(), BatchSize::PerIteration)
            });
        }
    }
    group.finish();
}

fn resize_hpass(c: &mut Criterion) {
    use ops::resize;
    // 640 -> 309 columns (scale 2.07, 7 taps), center crop 224 from column 42, 466 input rows.
    let (in_w, out_w, rows, ksize) = (640usize, 309usize, 466usize, 7usize);
    let scale = in_w as f64 / out_w as f64;
    let cols = 42..266;
    let starts: Vec<usize> = cols
        .clone()
        .map(|x| ((x as f64 + 0.5) * scale - scale + 0.5).max(0.0) as usize * 3)
        .collect();
    let k: Vec<i32> = (0..cols.len() * ksize)
        .map(|i| (1 << 22) / 5 + (i % 3) as i32)
        .collect();
    let e = resize::expand(&k, ksize);
    let src: Vec<u8> = (0..rows * in_w * 3).map(|i| (i * 31 % 251) as u8).collect();
    let pass = resize::Pass {
        starts: &starts,
        e: &e,
        half: 1 << 21,
        bits: 22,
    };
    let mut out = vec![0u8; rows * cols.len() * 3];
    let mut group = c.benchmark_group("resize_hpass");
    group.bench_function("scalar", |b| {
        b.iter(|| resize::horizontal_rows_scalar(&src, in_w * 3, rows, &pass, &mut out))
    });
    if resize::available(ksize) {
        group.bench_function("avx512", |b| {
            b.iter(|| resize::horizontal_rows(&src, in_w * 3, rows, &pass, &mut out))
        });
    }
    // the AVX2 pass, its coefficients laid out inside the loop as the resampler does per image
    if resize::Pairs::new(&starts, &k, ksize, 1 << 21, 22).is_some() {
        group.bench_function("avx2_pairs", |b| {
            b.iter(|| {
                if let Some(pairs) = resize::Pairs::new(&starts, &k, ksize, 1 << 21, 22) {
                    pairs.rows(&src, in_w * 3, rows, &mut out)
                }
            })
        });
    }
    // the VBMI blocks, their tables built inside the loop as the resampler builds them per image
    if resize::Blocks::new(&starts, &k, ksize, 1 << 21, 22).is_some() {
        group.bench_function("vbmi_blocks", |b| {
            b.iter(|| {
                if let Some(blocks) = resize::Blocks::new(&starts, &k, ksize, 1 << 21, 22) {
                    blocks.rows(&src, in_w * 3, rows, &mut out)
                }
            })
        });
    }
    group.finish();
}

fn jpeg_decode(c: &mut Criterion) {
    use imgclass::preprocess::{self, DecodeLimits};
    // the server benchmark's image: a 640x480 gradient with noise, quality 90, 4:2:0 (libjpeg-turbo's
    // encoder, as PIL's `save(quality=90)`)
    let (w, h) = (640usize, 480usize);
    let mut state = 12345u32;
    let mut noise = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((state >> 24) as i32 - 128) / 4
    };
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let base = [x * 255 / w, y * 255 / h, (x + y) * 255 / (w + h)];
            for (ch, b) in base.into_iter().enumerate() {
                rgb[(y * w + x) * 3 + ch] = (b as i32 + noise()).clamp(0, 255) as u8;
            }
        }
    }
    let image = turbojpeg::Image {
        pixels: rgb.as_slice(),
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    };
    let Ok(jpeg) = turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2) else {
        return;
    };
    let limits = DecodeLimits::default();
    let mut group = c.benchmark_group("jpeg_decode");
    group.bench_function("libjpeg_turbo", |b| {
        b.iter(|| preprocess::decode(&jpeg, &limits).map(|i| i.len()))
    });
    group.bench_function("zune_jpeg", |b| {
        b.iter(|| image::load_from_memory(&jpeg).map(|i| i.to_rgb8().len()))
    });
    group.finish();
}

fn wino_gemm(c: &mut Criterion) {
    use ops::{dense, packed1x1};
    let mut group = c.benchmark_group("wino_gemm");
    group.measurement_time(Duration::from_secs(3));
    // (channels, tiles of one image): 56², 28², 14² maps in 2x2 tiles.
    for (ch, t) in [(128usize, 784usize), (256, 196), (512, 49)] {
        if !packed1x1::available(ch) {
            continue;
        }
        let (e, vs) = (16, t + 16);
        let u: Vec<f32> = (0..e * ch * ch).map(|i| (i % 97) as f32 / 97.0).collect();
        let up: Vec<f32> = u
            .chunks(ch * ch)
            .flat_map(|ue| packed1x1::pack(ue, ch, ch))
            .collect();
        let v: Vec<f32> = (0..e * ch * vs).map(|i| (i % 89) as f32 / 89.0).collect();
        let mut m = vec![0f32; e * ch * t];
        let name = format!("{ch}@{t}tiles");
        group.bench_function(BenchmarkId::new("packed", &name), |bch| {
            bch.iter(|| {
                for (i, dst) in m.chunks_mut(ch * t).enumerate() {
                    let w = &up[i * ch * ch..][..ch * ch];
                    packed1x1::gemm_serial(w, &v[i * vs..], e * vs, dst, t, ch, ch, t);
                }
            })
        });
        group.bench_function(BenchmarkId::new("gemm_crate", &name), |bch| {
            bch.iter(|| {
                for (i, dst) in m.chunks_mut(ch * t).enumerate() {
                    let w = &u[i * ch * ch..][..ch * ch];
                    let x = &v[i * vs..];
                    dense::gemm_strided(ch, t, ch, w, x, e * vs, dst, gemm::Parallelism::None);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    batch1,
    wrn3x3,
    linear,
    wrn1x1,
    se_project,
    depthwise_small,
    fused_block,
    resize_hpass,
    jpeg_decode,
    wino_gemm
);
criterion_main!(benches);
