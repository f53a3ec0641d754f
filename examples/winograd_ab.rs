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
use std::time::Instant;

#[path = "common/ab.rs"]
mod ab;
use ab::{arg, oncpu_ms};

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
            let mut times = vec![Vec::new(); kernels.len()];
            for _ in 0..rounds {
                for (t, &(_, k)) in times.iter_mut().zip(&kernels) {
                    let reps = 6;
                    let (w0, c0) = (Instant::now(), oncpu_ms().unwrap_or(0.0));
                    for _ in 0..reps {
                        run(k)?;
                    }
                    let ms = if cpu {
                        oncpu_ms().unwrap_or(0.0) - c0
                    } else {
                        w0.elapsed().as_secs_f64() * 1e3
                    };
                    t.push(ms / reps as f64);
                }
            }
            let mut line = format!("batch {batch} {ch}ch@{hw}:");
            for (t, (name, _)) in times.iter_mut().zip(&kernels) {
                t.sort_by(f64::total_cmp);
                line += &format!("  {name} min {:.2} med {:.2}", t[0], t[t.len() / 2]);
            }
            println!("{line}");
        }
        Ok(())
    })
}
