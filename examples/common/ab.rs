//! Helpers shared by the interleaved A/B examples (`pack1x1_ab`, `winograd_ab`, `kxk_cv_ab`),
//! included with `#[path = "common/ab.rs"] mod ab;`.

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
