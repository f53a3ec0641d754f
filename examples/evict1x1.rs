//! The packed 1x1 kernel with its input and weights hot against the same call after `MB` MB of
//! other memory traffic on both threads (96 by default: larger than the L3, so input and weights
//! come back from memory; 16 leaves the input in L3). It showed that `layer_profile`'s pass, while
//! it fed every layer an activation stored long before, overstated what a layer loses in the model's
//! pass (see the README's latest Zen 5 section).
//!
//!     cargo run --release --example evict1x1 -- [MB]
//!
//! Prints the median over rounds of the mean of 20 calls, in ms, for a few Wide ResNet shapes.
use imgclass::ops::{packed1x1, Activation};
use rayon::prelude::*;
use std::time::Instant;

#[path = "common/ab.rs"]
mod ab;
use ab::rnd;

fn main() {
    let shapes: &[(usize, usize, usize)] = &[
        (256, 128, 56),
        (128, 256, 56),
        (512, 256, 28),
        (1024, 512, 14),
    ];
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(96);
    let mut junk = rnd(mb << 18, 9);
    imgclass::ops::in_pool(|| {
        for &(k, o, side) in shapes {
            let p = side * side;
            let x = rnd(k * p, 1);
            let b = rnd(o, 3);
            let w = packed1x1::pack(&rnd(o * k, 10), o, k);
            let mut res = [Vec::new(), Vec::new()];
            for round in 0..7 {
                for (mode, r) in res.iter_mut().enumerate() {
                    let mut tot = 0.0;
                    for _ in 0..20 {
                        if mode == 1 {
                            let jl = junk.len() / 2;
                            junk.par_chunks_mut(jl)
                                .for_each(|c| c.iter_mut().for_each(|v| *v += 1.0));
                        }
                        let t0 = Instant::now();
                        std::hint::black_box(packed1x1::conv1x1_packed(
                            &x,
                            &w,
                            Some(&b),
                            None,
                            Activation::Relu,
                            1,
                            k,
                            o,
                            p,
                        ));
                        tot += t0.elapsed().as_secs_f64();
                    }
                    if round > 0 {
                        r.push(tot * 1e3 / 20.0);
                    }
                }
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let m: Vec<f64> = res.iter_mut().map(med).collect();
            println!(
                "{k}->{o} @{side}: hot {:.3} | after {mb} MB of other traffic {:.3}",
                m[0], m[1]
            );
        }
    });
}
