//! `imgclass bench`: time the model forward pass (or decoding + preprocessing) and print one JSON line.
//!
//! The forward stage runs `--warmup` untimed passes, then `--iters` timed passes of one `[B,3,224,224]`
//! batch and reports the median, min, max and mean wall time and the median per image. Threads: all
//! cores the process may use (rayon's global pool; set `RAYON_NUM_THREADS` to pin it).

use crate::models::{Classifier, ModelKind};
use crate::preprocess::{preprocess_timed, DecodeLimits, Transform};
use crate::weights::{dir, synthetic};
use crate::{Error, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `imgclass bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The model forward pass on a `[B,3,224,224]` batch.
    Forward,
    /// Decoding + resize + center crop + normalisation of `--image`.
    Preprocess,
}

/// Flags of `imgclass bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model to time (forward stage).
    #[arg(long, env = "IMGCLASS_MODEL", value_enum, default_value_t = ModelKind::WideResnet50_2)]
    pub model: ModelKind,

    /// What to time.
    #[arg(long, env = "IMGCLASS_BENCH_STAGE", value_enum, default_value_t = Stage::Forward)]
    pub stage: Stage,

    /// Images per forward pass.
    #[arg(long, env = "IMGCLASS_BENCH_BATCH", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub batch: u32,

    /// Timed iterations.
    #[arg(long, env = "IMGCLASS_BENCH_ITERS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub iters: u32,

    /// Untimed iterations first (page faults, thread pool start, caches).
    #[arg(long, env = "IMGCLASS_BENCH_WARMUP", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub warmup: u32,

    /// Directory holding <model>.safetensors.
    #[arg(
        long,
        env = "IMGCLASS_WEIGHTS_DIR",
        value_name = "DIR",
        conflicts_with = "random_weights"
    )]
    pub weights_dir: Option<PathBuf>,

    /// Use generated random weights (same shapes as torchvision's): nothing to download.
    #[arg(long, env = "IMGCLASS_BENCH_RANDOM_WEIGHTS")]
    pub random_weights: bool,

    /// Also print every iteration's time (`times_ms`).
    #[arg(long, env = "IMGCLASS_BENCH_TIMES")]
    pub times: bool,

    /// Image file for `--stage preprocess`.
    #[arg(long, env = "IMGCLASS_BENCH_IMAGE", value_name = "FILE")]
    pub image: Option<PathBuf>,
}

/// Median, min, max and mean of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    /// `None` for an empty set.
    pub fn of(times: &[Duration]) -> Option<Summary> {
        if times.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        Some(Summary {
            median_ms: median,
            min_ms: ms[0],
            max_ms: ms[n - 1],
            mean_ms: ms.iter().sum::<f64>() / n as f64,
        })
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    crate::ops::configure_threads();
    let line = match args.stage {
        Stage::Forward => bench_forward(&args)?,
        Stage::Preprocess => bench_preprocess(&args)?,
    };
    println!("{line}");
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn summary_json(s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "median": round3(s.median_ms),
        "min": round3(s.min_ms),
        "max": round3(s.max_ms),
        "mean": round3(s.mean_ms),
    })
}

fn load_model(args: &BenchArgs) -> Result<(Classifier, String)> {
    let kind = args.model;
    if args.random_weights {
        let tensors = synthetic::generate(kind);
        let model = Classifier::from_tensors(kind, tensors, "random weights")?;
        return Ok((model, "random".to_string()));
    }
    let d = dir::resolve_weights_dir(args.weights_dir.as_deref(), &[kind]);
    let path = dir::weights_path(&d, kind);
    if !path.is_file() {
        return Err(Error::WeightsMissing(format!(
            "no weights for {kind} at {}: fetch them with `{}`, or time random weights with --random-weights",
            path.display(),
            dir::fetch_command(kind, &d)
        )));
    }
    let model = Classifier::load(kind, &path)?;
    Ok((model, path.display().to_string()))
}

/// One forward pass, on rayon's pool unless `IMGCLASS_BENCH_OUTSIDE_POOL` is set (to measure the
/// difference, see [`crate::ops::in_pool`]).
fn forward(model: &Classifier, input: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    if std::env::var_os("IMGCLASS_BENCH_OUTSIDE_POOL").is_some() {
        model.forward(input)
    } else {
        crate::ops::in_pool(|| model.forward(input))
    }
}

fn bench_forward(args: &BenchArgs) -> Result<serde_json::Value> {
    if args.image.is_some() {
        return Err(Error::Usage(
            "--image is only used with --stage preprocess".into(),
        ));
    }
    let t0 = Instant::now();
    let (model, weights) = load_model(args)?;
    let load = t0.elapsed();
    let batch = args.batch as usize;
    let input = synthetic::parity_input(batch);
    for _ in 0..args.warmup {
        forward(&model, &input)?;
    }
    let mut times = Vec::with_capacity(args.iters as usize);
    for _ in 0..args.iters {
        let t = Instant::now();
        let y = forward(&model, &input)?;
        times.push(t.elapsed());
        if y.dims() != [batch, 1000] {
            return Err(Error::Internal(format!(
                "forward returned shape {:?}, expected [{batch}, 1000]",
                y.dims()
            )));
        }
    }
    let s = Summary::of(&times).ok_or_else(|| Error::Internal("no timed iterations".into()))?;
    let mut v = serde_json::json!({
        "stage": "forward",
        "model": args.model.name(),
        "batch": batch,
        "iters": args.iters,
        "warmup": args.warmup,
        "threads": rayon::current_num_threads(),
        "weights": weights,
        "load_ms": round3(load.as_secs_f64() * 1e3),
        "forward_ms": summary_json(&s),
        "per_image_ms": round3(s.median_ms / batch as f64),
    });
    if args.times {
        v["times_ms"] = times_json(&times);
    }
    Ok(v)
}

fn times_json(times: &[Duration]) -> serde_json::Value {
    times
        .iter()
        .map(|d| round3(d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .into()
}

fn bench_preprocess(args: &BenchArgs) -> Result<serde_json::Value> {
    let path = args.image.as_ref().ok_or_else(|| {
        Error::Usage("--stage preprocess needs --image FILE (the image to decode)".into())
    })?;
    let bytes = std::fs::read(path).map_err(|source| Error::Unreadable {
        path: path.clone(),
        source,
    })?;
    let limits = DecodeLimits::default();
    let t = Transform::IMAGENET;
    // The first run also validates the input: a bad image is a clear error, not a timing.
    for _ in 0..args.warmup.max(1) {
        preprocess_timed(&bytes, &limits, &t)?;
    }
    let mut total = Vec::with_capacity(args.iters as usize);
    let (mut decode, mut resize, mut norm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.iters {
        let t0 = Instant::now();
        let (_, st) = preprocess_timed(&bytes, &limits, &t)?;
        total.push(t0.elapsed());
        decode.push(st.decode);
        resize.push(st.resize_crop);
        norm.push(st.normalize);
    }
    let none = || Error::Internal("no timed iterations".into());
    let s = Summary::of(&total).ok_or_else(none)?;
    let med = |v: &[Duration]| Summary::of(v).map(|s| round3(s.median_ms));
    let mut v = serde_json::json!({
        "stage": "preprocess",
        "image": path.display().to_string(),
        "bytes": bytes.len(),
        "iters": args.iters,
        "warmup": args.warmup.max(1),
        "threads": rayon::current_num_threads(),
        "preprocess_ms": summary_json(&s),
        "stage_median_ms": {
            "decode": med(&decode),
            "resize_crop": med(&resize),
            "normalize": med(&norm),
        },
    });
    if args.times {
        v["times_ms"] = times_json(&total);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_sets() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let s = Summary::of(&ms(&[30, 10, 20])).unwrap();
        assert_eq!(
            (s.median_ms, s.min_ms, s.max_ms, s.mean_ms),
            (20.0, 10.0, 30.0, 20.0)
        );
        let s = Summary::of(&ms(&[40, 10, 20, 30])).unwrap();
        assert_eq!((s.median_ms, s.min_ms, s.max_ms), (25.0, 10.0, 40.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn preprocess_stage_without_image_is_a_usage_error() {
        let args = BenchArgs {
            model: ModelKind::MobilenetV3Large,
            stage: Stage::Preprocess,
            batch: 1,
            iters: 1,
            warmup: 0,
            weights_dir: None,
            random_weights: true,
            times: true,
            image: None,
        };
        let err = run(args).unwrap_err();
        assert_eq!(err.error_type(), "usage_error");
    }

    #[test]
    fn missing_weights_dir_is_a_weights_error() {
        let dir = tempfile::tempdir().unwrap();
        let args = BenchArgs {
            model: ModelKind::MobilenetV3Large,
            stage: Stage::Forward,
            batch: 1,
            iters: 1,
            warmup: 0,
            weights_dir: Some(dir.path().to_path_buf()),
            random_weights: false,
            times: false,
            image: None,
        };
        let err = run(args).unwrap_err();
        assert_eq!(err.error_type(), "weights_missing");
    }

    #[test]
    fn forward_on_random_weights_reports_a_timing() {
        let args = BenchArgs {
            model: ModelKind::MobilenetV3Large,
            stage: Stage::Forward,
            batch: 2,
            iters: 1,
            warmup: 0,
            weights_dir: None,
            random_weights: true,
            times: true,
            image: None,
        };
        let v = bench_forward(&args).unwrap();
        assert_eq!(v["model"], "mobilenet_v3_large");
        assert_eq!(v["batch"], 2);
        assert!(v["forward_ms"]["median"].as_f64().unwrap() > 0.0);
        assert_eq!(v["times_ms"].as_array().unwrap().len(), 1);
    }
}
