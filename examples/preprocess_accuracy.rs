//! Accuracy and speed of imgclass's preprocessing against PIL crops (owner: preprocessing).
//!
//! `cargo run --release --example preprocess_accuracy -- IMAGE.jpg...`: each IMAGE needs a sibling
//! `IMAGE.pil.png`, torchvision's Resize(232)+CenterCrop(224) output from PIL (written by
//! `scripts/bench_preprocess.py`). Prints one JSON line per image and DCT-scaling mode.

use imgclass::preprocess::{preprocess_with, DctScaling, DecodeLimits, Transform};
use std::time::Instant;

fn main() {
    let t = Transform::IMAGENET;
    for path in std::env::args().skip(1) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(3);
            }
        };
        let pil_path = format!("{}.pil.png", path.trim_end_matches(".jpg"));
        let pil = match image::open(&pil_path) {
            Ok(i) => i.to_rgb8(),
            Err(e) => {
                eprintln!("{pil_path}: {e}");
                std::process::exit(3);
            }
        };
        for mode in [DctScaling::Off, DctScaling::Auto] {
            let mut ms = Vec::new();
            let mut crop = None;
            for _ in 0..5 {
                let t0 = Instant::now();
                match preprocess_with(&bytes, &DecodeLimits::default(), &t, mode) {
                    Ok((p, _)) => crop = Some(p.crop),
                    Err(e) => {
                        eprintln!("{path}: {e}");
                        std::process::exit(4);
                    }
                }
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            ms.sort_by(f64::total_cmp);
            let Some(crop) = crop else { continue };
            let (mut sum, mut max) = (0f64, 0u8);
            for (a, b) in crop.pixels().zip(pil.pixels()) {
                for c in 0..3 {
                    let d = a[c].abs_diff(b[c]);
                    sum += f64::from(d) / 255.0 / f64::from(t.std[c]);
                    max = max.max(d);
                }
            }
            let n = f64::from(crop.width() * crop.height() * 3);
            println!(
                "{}",
                serde_json::json!({
                    "image": path,
                    "dct_scaling": format!("{mode:?}"),
                    "median_ms": (ms[ms.len() / 2] * 100.0).round() / 100.0,
                    "mean_abs_normalised": (sum / n * 1e5).round() / 1e5,
                    "max_abs_levels": max,
                })
            );
        }
    }
}
