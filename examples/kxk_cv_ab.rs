//! Interleaved A/B on Wide ResNet-50-2's 3x3 convolutions with 7x7 outputs: im2col + `gemm` vs
//! im2col + the reduction-blocked channel-vector kernel (`ops::conv2d_kxk_cv`, weight packed once,
//! outside the timing).
//!
//! `cargo run --release --example kxk_cv_ab -- [batch] [rounds] [layer index 0..1]`
//! Env: `CPUTIME=1` times this thread's on-CPU time (/proc/thread-self/schedstat, Linux) instead of
//! wall time (with `RAYON_NUM_THREADS=1`: ignores the time other processes take the core).
//! Prints the min and median over rounds of the mean over 6 calls, in ms.

use candle_core::{Device, Tensor};
use imgclass::ops::{self, Activation, ConvParams, Kernel, KxkCvWeight, PreparedWeight};

#[path = "common/ab.rs"]
mod ab;
use ab::{arg, interleave, min_median, oncpu_ms};

fn main() -> candle_core::Result<()> {
    let (batch, rounds) = (arg(1, 1), arg(2, 15).max(1));
    let only = std::env::args()
        .nth(3)
        .and_then(|s| s.parse::<usize>().ok());
    let cpu = std::env::var_os("CPUTIME").is_some();
    if cpu && oncpu_ms().is_none() {
        candle_core::bail!("CPUTIME=1 needs /proc/thread-self/schedstat");
    }
    // (channels, input side, stride): layer4.1/4.2's conv2, layer4.0's conv2
    let layers = [(1024, 7, 1), (1024, 14, 2)];
    ops::in_pool(|| {
        for (li, &(ch, hw, stride)) in layers.iter().enumerate() {
            let p = ConvParams {
                stride,
                padding: 1,
                groups: 1,
            };
            if only.is_some_and(|o| o != li) {
                continue;
            }
            let dev = &Device::Cpu;
            let x = Tensor::randn(0f32, 1f32, &[batch, ch, hw, hw], dev)?;
            let wt = Tensor::randn(0f32, 1f32, &[ch, ch, 3, 3], dev)?;
            let b = Tensor::randn(0f32, 1f32, &[ch], dev)?;
            let pw = KxkCvWeight::new(&wt)?;
            let w = PreparedWeight::new(wt);
            let run = |cv: bool| {
                if cv {
                    ops::conv2d_kxk_cv(&x, &pw, Some(&b), p, Activation::Relu)
                } else {
                    ops::conv2d_with_kernel(
                        Kernel::Dense,
                        &x,
                        &w,
                        Some(&b),
                        p,
                        Activation::Relu,
                        None,
                    )
                }
            };
            let (a, bb) = (run(false)?, run(true)?);
            let diff = (a - bb)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let mut times = interleave(rounds, &[false, true], cpu, |cv| run(cv).map(drop))?;
            let line = format!(
                "batch {batch} {ch}ch@{hw}/{stride} (max |diff| {diff:.1e}):{}",
                min_median(&["gemm", "cv"], &mut times)
            );
            println!("{line}");
        }
        Ok(())
    })
}
