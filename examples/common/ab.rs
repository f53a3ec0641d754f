//! Helpers shared by the interleaved A/B examples (`pack1x1_ab`, `winograd_ab`, `kxk_cv_ab`,
//! `evict1x1`),
//! included with `#[path = "common/ab.rs"] mod ab;` (not every example uses every helper).
#![allow(dead_code)]

/// This thread's on-CPU time in ms, if the kernel reports it (/proc/thread-self/schedstat).
pub fn oncpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? / 1e6)
}

/// The `i`-th command-line argument as a number, or `default`.
pub fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Interleaved A/B timing: `rounds` rounds, each timing every variant in turn over 6 calls of
/// `run(variant)`; per variant the mean ms per call of each round. Wall time, or this thread's
/// on-CPU time when `cpu`.
pub fn interleave<K: Copy, E>(
    rounds: usize,
    variants: &[K],
    cpu: bool,
    mut run: impl FnMut(K) -> Result<(), E>,
) -> Result<Vec<Vec<f64>>, E> {
    const REPS: usize = 6;
    let mut times = vec![Vec::with_capacity(rounds); variants.len()];
    for _ in 0..rounds {
        for (t, &v) in times.iter_mut().zip(variants) {
            let (w0, c0) = (std::time::Instant::now(), oncpu_ms().unwrap_or(0.0));
            for _ in 0..REPS {
                run(v)?;
            }
            let ms = if cpu {
                oncpu_ms().unwrap_or(0.0) - c0
            } else {
                w0.elapsed().as_secs_f64() * 1e3
            };
            t.push(ms / REPS as f64);
        }
    }
    Ok(times)
}

/// `"  name min M med D"` for each variant's [`interleave`] times.
pub fn min_median(names: &[&str], times: &mut [Vec<f64>]) -> String {
    let mut line = String::new();
    for (t, name) in times.iter_mut().zip(names) {
        t.sort_by(f64::total_cmp);
        line += &format!("  {name} min {:.3} med {:.3}", t[0], t[t.len() / 2]);
    }
    line
}

/// `len` pseudo-random values in [-0.5, 0.5), the same for the same `seed`.
pub fn rnd(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}
