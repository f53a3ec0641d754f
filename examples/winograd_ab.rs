//! Interleaved A/B of the conv kernels on Wide ResNet-50-2's 3x3 stride-1 layers: im2col + GEMM vs
//! Winograd F(2,3) vs F(4,3) (weights transformed once, outside the timing).
//!
//! `cargo run --release --example winograd_ab -- [batch] [rounds] [layer index 0..4]`
//! Env: `KERNELS=im2col,f2,f4` (subset), `CPUTIME=1` times this thread's on-CPU time
//! (/proc/thread-self/schedstat, Linux) instead of wall time: with `RAYON_NUM_THREADS=1` that
//! ignores the time other processes take the core, the robust figure on a shared machine.
//! Prints the min and median over rounds of the mean over 6 calls, in ms.

use candle_core::{Device, Tensor};
use imgclass::ops::{self, winograd::Tile, Activation, ConvParams, Kernel, PreparedWeight};

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
    let filter = std::env::var("KERNELS").unwrap_or_default();
    let layers = [(128, 56), (256, 28), (512, 14), (1024, 7)];
    let p = ConvParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    ops::in_pool(|| {
        for (li, &(ch, hw)) in layers.iter().enumerate() {
            if only.is_some_and(|o| o != li) {
                continue;
            }
            let dev = &Device::Cpu;
            let x = Tensor::randn(0f32, 1f32, &[batch, ch, hw, hw], dev)?;
            let w = PreparedWeight::new(Tensor::randn(0f32, 1f32, &[ch, ch, 3, 3], dev)?);
            let b = Tensor::randn(0f32, 1f32, &[ch], dev)?;
            let kernels: Vec<_> = [
                ("im2col", Kernel::Dense),
                ("f2", Kernel::Winograd(Tile::F2)),
                ("f4", Kernel::Winograd(Tile::F4)),
            ]
            .into_iter()
            .filter(|(n, _)| filter.is_empty() || filter.split(',').any(|f| f == *n))
            .collect();
            let run = |k| ops::conv2d_with_kernel(k, &x, &w, Some(&b), p, Activation::Relu, None);
            for &(_, k) in &kernels {
                run(k)?;
            }
            let ks: Vec<Kernel> = kernels.iter().map(|&(_, k)| k).collect();
            let names: Vec<&str> = kernels.iter().map(|&(name, _)| name).collect();
            let mut times = interleave(rounds, &ks, cpu, |k| run(k).map(drop))?;
            let line = format!(
                "batch {batch} {ch}ch@{hw}:{}",
                min_median(&names, &mut times)
            );
            println!("{line}");
        }
        Ok(())
    })
}
