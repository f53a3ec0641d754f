//! Interleaved A/B of the 1x1 stride-1 convolution kernels on Wide ResNet-50-2's (and a few
//! MobileNetV3) shapes: `pointwise::conv1x1` (weights read row-major in place) vs
//! `packed1x1::conv1x1_packed` (weights packed once, outside the timing).
//!
//! `cargo run --release --example pack1x1_ab -- [batch] [rounds] [shape filter substring]`
//! Env: `CPUTIME=1` times this thread's on-CPU time (/proc/thread-self/schedstat) instead of wall
//! time (use with `RAYON_NUM_THREADS=1`). Prints per shape the min and median over rounds of the
//! mean over >= 30 ms of calls, in ms, and GMAC/s of the min.

use imgclass::ops::{packed1x1, pointwise, Activation};
use std::time::Instant;

#[path = "common/ab.rs"]
mod ab;
use ab::{arg, oncpu_ms, rnd};

/// (name, K, O, side, residual)
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("wrn 64->128 @56", 64, 128, 56, false),
    ("wrn 64->256 @56", 64, 256, 56, false),
    ("wrn 128->256 @56 +res", 128, 256, 56, true),
    ("wrn 256->128 @56", 256, 128, 56, false),
    ("wrn 256->256 @56", 256, 256, 56, false),
    ("wrn 256->512 @28 +res", 256, 512, 28, true),
    ("wrn 512->256 @28", 512, 256, 28, false),
    ("wrn 512->512 @28", 512, 512, 28, false),
    ("wrn 512->1024 @14 +res", 512, 1024, 14, true),
    ("wrn 1024->512 @14", 1024, 512, 14, false),
    ("wrn 1024->1024 @14", 1024, 1024, 14, false),
    ("wrn 1024->2048 @7 +res", 1024, 2048, 7, true),
    ("wrn 2048->1024 @7", 2048, 1024, 7, false),
    ("mnv3 16->64 @112", 16, 64, 112, false),
    ("mnv3 40->120 @28", 40, 120, 28, false),
    ("mnv3 112->672 @14", 112, 672, 14, false),
    ("mnv3 160->960 @7", 160, 960, 7, false),
    ("mnv3 960->160 @7 +res", 960, 160, 7, true),
];

fn main() {
    let (batch, rounds) = (arg(1, 1), arg(2, 9).max(1));
    let filter = std::env::args().nth(3).unwrap_or_default();
    let cpu = std::env::var_os("CPUTIME").is_some();
    let now = || {
        if cpu {
            oncpu_ms().unwrap_or(0.0)
        } else {
            thread_local!(static T0: Instant = Instant::now());
            T0.with(|t| t.elapsed().as_secs_f64() * 1e3)
        }
    };
    let (mut tot_a, mut tot_b) = (0.0, 0.0);
    imgclass::ops::in_pool(|| {
        // `SHAPES=K,O,side;...` replaces the list (no residual).
        let custom: Vec<(String, usize, usize, usize, bool)> = std::env::var("SHAPES")
            .unwrap_or_default()
            .split(';')
            .filter_map(|t| {
                let v: Vec<usize> = t.split(',').filter_map(|x| x.trim().parse().ok()).collect();
                (v.len() == 3).then(|| {
                    (
                        format!("{}->{} @{}", v[0], v[1], v[2]),
                        v[0],
                        v[1],
                        v[2],
                        false,
                    )
                })
            })
            .collect();
        let list: Vec<(String, usize, usize, usize, bool)> = if custom.is_empty() {
            SHAPES
                .iter()
                .map(|&(a, b, c, d, e)| (a.to_string(), b, c, d, e))
                .collect()
        } else {
            custom
        };
        for (name, k, o, side, with_res) in list {
            if !name.contains(filter.as_str()) {
                continue;
            }
            let p = side * side;
            let n = batch;
            let x = rnd(n * k * p, 1);
            let w = rnd(o * k, 2);
            let b = rnd(o, 3);
            let r = with_res.then(|| rnd(n * o * p, 4));
            let wp = packed1x1::pack(&w, o, k);
            let wcv = if o % 16 == 0 {
                packed1x1::pack_cv(&w, o, k)
            } else {
                Vec::new()
            };
            let act = Activation::Relu;
            let run_a = || pointwise::conv1x1(&x, &w, Some(&b), r.as_deref(), act, n, k, o, p);
            let cv = std::env::var_os("CV").is_some() && o % 16 == 0;
            let run_b = || {
                if cv {
                    packed1x1::conv1x1_cv(&x, &wcv, Some(&b), r.as_deref(), act, n, k, o, p)
                } else {
                    packed1x1::conv1x1_packed(&x, &wp, Some(&b), r.as_deref(), act, n, k, o, p)
                }
            };
            let (ya, yb) = (run_a(), run_b());
            let diff = ya
                .iter()
                .zip(&yb)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let mut ta = Vec::new();
            let mut tb = Vec::new();
            for _ in 0..rounds {
                for (ts, f) in [
                    (&mut ta, &run_a as &dyn Fn() -> Vec<f32>),
                    (&mut tb, &run_b as &dyn Fn() -> Vec<f32>),
                ] {
                    let (w0, t0) = (Instant::now(), now());
                    let mut calls = 0;
                    while calls < 2 || w0.elapsed().as_secs_f64() < 0.03 {
                        std::hint::black_box(f());
                        calls += 1;
                    }
                    ts.push((now() - t0) / calls as f64);
                }
            }
            ta.sort_by(f64::total_cmp);
            tb.sort_by(f64::total_cmp);
            let macs = (n * k * o * p) as f64;
            tot_a += ta[ta.len() / 2];
            tot_b += tb[tb.len() / 2];
            println!(
                "{name:<24} old min {:7.3} med {:7.3} ({:5.1} GMAC/s) | packed min {:7.3} med {:7.3} ({:5.1} GMAC/s) | med ratio {:.3} | maxdiff {diff:.2e}",
                ta[0],
                ta[ta.len() / 2],
                macs / ta[0] / 1e6,
                tb[0],
                tb[tb.len() / 2],
                macs / tb[0] / 1e6,
                tb[tb.len() / 2] / ta[ta.len() / 2],
            );
        }
    });
    println!("sum of medians: old {tot_a:.3} ms, packed {tot_b:.3} ms (batch {batch})");
}
