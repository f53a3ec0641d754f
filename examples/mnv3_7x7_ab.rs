//! Interleaved A/B of MobileNetV3-Large's 1x1 convolutions on 7x7 maps (the last three blocks'
//! expand / SE-scaled project convs and the last conv), through the `ops` calls the model can make:
//!
//! - `auto`: [`ops::conv2d`] / [`ops::conv2d_se_scaled`] with the plain weight (the kernel
//!   `ops` picks: the `gemm` crate for the deep project convs of one image, else
//!   `pointwise::conv1x1`);
//! - `cv`: the weight packed once in the channel-vector layout ([`PointwiseWeight`], 48 output
//!   channels x up to 8 pixels per register block), the SE gate applied by [`ops::se_scale`] first.
//!
//!     cargo run --release --example mnv3_7x7_ab -- [batch] [rounds]
//!
//! Prints per shape the min and median ms per call over the rounds and the largest difference.
use candle_core::{Device, Result, Tensor};
use imgclass::ops::{self, packed1x1::Layout, Activation, ConvParams, PointwiseWeight};

#[path = "common/ab.rs"]
mod ab;
use ab::{arg, interleave, min_median};

/// (name, K, O, SE gate, residual)
const SHAPES: &[(&str, usize, usize, bool, bool)] = &[
    ("b12 project +se 672->160", 672, 160, true, false),
    ("b13 expand 160->960", 160, 960, false, false),
    ("b13 project +se 960->160 +res", 960, 160, true, true),
    ("last 160->960", 160, 960, false, false),
];

fn main() -> Result<()> {
    ops::configure_threads();
    let (n, rounds) = (arg(1, 1), arg(2, 15).max(1));
    ops::in_pool(|| run(n, rounds))
}

fn run(n: usize, rounds: usize) -> Result<()> {
    let dev = Device::Cpu;
    let pw = ConvParams {
        stride: 1,
        padding: 0,
        groups: 1,
    };
    for &(name, k, o, se, with_res) in SHAPES {
        let x = Tensor::randn(0f32, 1.0, (n, k, 7, 7), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (o, k, 1, 1), &dev)?;
        let b = Tensor::randn(0f32, 0.1, o, &dev)?;
        let s = Tensor::randn(0f32, 2.0, (n, k), &dev)?;
        let r = Tensor::randn(0f32, 1.0, (n, o, 7, 7), &dev)?;
        let res = with_res.then_some(&r);
        let act = if se {
            Activation::None
        } else {
            Activation::Hardswish
        };
        let wcv = PointwiseWeight::new(&w, Layout::ChannelVectors)?;
        let run = |v: usize| -> Result<Tensor> {
            match (v, se) {
                (0, true) => ops::conv2d_se_scaled(&x, &s, &w, Some(&b), pw, act, res),
                (0, false) => ops::conv2d(&x, &w, Some(&b), pw, act, res),
                (_, true) => {
                    ops::conv2d_pointwise(&ops::se_scale(&x, &s)?, &wcv, Some(&b), act, res)
                }
                (_, false) => ops::conv2d_pointwise(&x, &wcv, Some(&b), act, res),
            }
        };
        let diff = (run(0)? - run(1)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let mut times = interleave(rounds, &[0usize, 1], false, |v| run(v).map(|_| ()))?;
        println!(
            "{name:<32} n={n}{} maxdiff {diff:.1e}",
            min_median(&["auto", "cv"], &mut times)
        );
    }
    Ok(())
}
