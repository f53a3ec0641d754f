//! Parity with torchvision: the Rust models, built from weights regenerated here and loaded through the
//! normal loader, give torchvision's logits (committed by scripts/make_parity_fixtures.py).

mod common;

use candle_core::Tensor;
use common::values;
use imgclass::models::{Classifier, ModelKind};
use imgclass::preprocess::{preprocess, DecodeLimits, Transform};
use imgclass::weights::load::{expected_shapes, parameter_count, read_tensors, write_safetensors};
use imgclass::weights::synthetic::{self, Calibration};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

/// Largest |Δlogit| accepted against torchvision.
const TOLERANCE: f32 = 1e-3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn expected_json() -> &'static serde_json::Value {
    static J: OnceLock<serde_json::Value> = OnceLock::new();
    J.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn expected_logits() -> &'static HashMap<String, Tensor> {
    static L: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    L.get_or_init(|| read_tensors(&fixtures().join("expected_logits.safetensors")).unwrap())
}

/// The calibrated synthetic model, written as safetensors to a temp dir and loaded by `Classifier::load`.
fn model(kind: ModelKind) -> &'static Classifier {
    static WRN: OnceLock<Classifier> = OnceLock::new();
    static MBN: OnceLock<Classifier> = OnceLock::new();
    let cell = match kind {
        ModelKind::WideResnet50_2 => &WRN,
        ModelKind::MobilenetV3Large => &MBN,
    };
    cell.get_or_init(|| {
        let t0 = Instant::now();
        let calibration =
            Calibration::load(kind, &fixtures().join("bn_stats.safetensors")).unwrap();
        let tensors = synthetic::generate_calibrated(kind, &calibration).unwrap();
        let t1 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{}.safetensors", kind.name()));
        write_safetensors(&tensors, &path).unwrap();
        drop(tensors);
        let t2 = Instant::now();
        let c = Classifier::load(kind, &path).unwrap();
        eprintln!(
            "{kind}: generate {:.2}s, write {:.2}s, load {:.2}s",
            (t1 - t0).as_secs_f32(),
            (t2 - t1).as_secs_f32(),
            t2.elapsed().as_secs_f32()
        );
        c
    })
}

fn top5(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(5);
    order
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn expected_top5(kind: ModelKind, input: &str) -> Vec<usize> {
    expected_json()["models"][kind.name()]["inputs"][input]["top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

fn image_names() -> Vec<String> {
    expected_json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn logits_match_torchvision_on_the_fixed_input(kind: ModelKind) {
    let m = model(kind);
    let x = synthetic::parity_input(2);
    let t = Instant::now();
    let y = m.forward(&x).unwrap();
    eprintln!(
        "{kind}: forward of 2 images {:.3}s ({:.3}s per image)",
        t.elapsed().as_secs_f32(),
        t.elapsed().as_secs_f32() / 2.0
    );
    assert_eq!(y.dims(), &[2, 1000]);
    let got = y.to_vec2::<f32>().unwrap();
    // torchvision's logits computed in float64 (the exact answer for these weights) and in float32
    // (what torchvision users run); the Rust f32 logits must be within TOLERANCE of both.
    let want = expected_logits()[&format!("{kind}.input")]
        .to_vec2::<f32>()
        .unwrap();
    let want32 = expected_logits()[&format!("{kind}.input.torch_f32")]
        .to_vec2::<f32>()
        .unwrap();
    for r in 0..2 {
        let d = max_abs_diff(&got[r], &want[r]);
        let d32 = max_abs_diff(&got[r], &want32[r]);
        eprintln!(
            "{kind}: parity.input[{r}] max |Δlogit| = {d:.3e} vs torchvision f64, {d32:.3e} vs f32"
        );
        assert!(
            d <= TOLERANCE,
            "{kind} input {r}: max |Δlogit| {d} > {TOLERANCE}"
        );
        assert!(
            d32 <= TOLERANCE,
            "{kind} input {r}: max |Δlogit| {d32} > {TOLERANCE} (f32)"
        );
        assert_eq!(top5(&got[r]), expected_top5(kind, &format!("input.{r}")));
        assert_eq!(top5(&want[r]), expected_top5(kind, &format!("input.{r}")));
        // The same image alone: batch 1 takes kernels of its own (e.g. the channel-vector 1x1
        // kernel on MobileNetV3's 7x7 maps), which must agree with torchvision too.
        let one = m.forward(&x.narrow(0, r, 1).unwrap()).unwrap();
        let one = one.to_vec2::<f32>().unwrap().remove(0);
        let d1 = max_abs_diff(&one, &want[r]);
        eprintln!("{kind}: parity.input[{r}] alone: max |Δlogit| = {d1:.3e} vs torchvision f64");
        assert!(
            d1 <= TOLERANCE,
            "{kind} input {r} at batch 1: max |Δlogit| {d1} > {TOLERANCE}"
        );
    }
}

/// Decode + torchvision eval transform + model, from the lossless 232x232 PNGs: identical top-5.
/// Returns the Rust top-1 per image.
fn pipeline_matches_torchvision(kind: ModelKind) -> Vec<usize> {
    let m = model(kind);
    let mut top1 = Vec::new();
    for name in image_names() {
        let bytes = std::fs::read(fixtures().join("images").join(format!("{name}.png"))).unwrap();
        let p = preprocess(&bytes, &DecodeLimits::default(), &Transform::IMAGENET).unwrap();
        assert_eq!(p.chw.len(), 3 * 224 * 224);
        let x =
            Tensor::from_vec(p.chw.clone(), (1, 3, 224, 224), &candle_core::Device::Cpu).unwrap();
        let got = m.forward(&x).unwrap().to_vec2::<f32>().unwrap().remove(0);
        let want = expected_logits()[&format!("{kind}.image.{name}")]
            .to_vec1::<f32>()
            .unwrap();
        let d = max_abs_diff(&got, &want);
        eprintln!(
            "{kind}: image {name}: max |Δlogit| = {d:.3e}, top5 {:?}",
            top5(&got)
        );
        assert_eq!(
            top5(&got),
            expected_top5(kind, &format!("image.{name}")),
            "{kind} {name}"
        );
        // the same through Classifier::classify (softmax top-k, sorted)
        let preds = m.classify(&[&p.chw], 5).unwrap();
        assert_eq!(
            preds[0].iter().map(|p| p.index).collect::<Vec<_>>(),
            expected_top5(kind, &format!("image.{name}"))
        );
        top1.push(top5(&got)[0]);
    }
    top1
}

fn distinct(v: &[usize]) -> usize {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v.len()
}

#[test]
fn generator_matches_numpy_bit_for_bit() {
    let samples = expected_json()["generator_samples"].as_object().unwrap();
    assert!(samples.len() >= 5);
    for (key, elems) in samples {
        let (kind, tensor) = if key == "parity.input" {
            (None, synthetic::parity_input(2))
        } else {
            let kind = ModelKind::ALL
                .into_iter()
                .find(|k| key.starts_with(&format!("{}.", k.name())))
                .unwrap();
            let name = &key[kind.name().len() + 1..];
            let calibration =
                Calibration::load(kind, &fixtures().join("bn_stats.safetensors")).unwrap();
            let shapes = expected_shapes(kind);
            let (_, shape) = shapes.iter().find(|(k, _)| k == name).unwrap();
            // only generate the one tensor (the whole model is slow in debug builds)
            let map: HashMap<&str, &[usize]> = shapes
                .iter()
                .map(|(k, s)| (k.as_str(), s.as_slice()))
                .collect();
            let t = match synthetic::rule(
                &map,
                synthetic::final_layer(kind),
                name,
                calibration.classifier_scale,
            )
            .unwrap()
            {
                synthetic::Rule::Generated { scale, offset } => {
                    synthetic::tensor(name, shape, scale, offset)
                }
                _ => calibration.running[name].clone(),
            };
            (Some(kind), t)
        };
        let flat = values(&tensor);
        for (idx, bits) in elems.as_object().unwrap() {
            let i: usize = idx.parse().unwrap();
            let want = u32::from_str_radix(bits.as_str().unwrap(), 16).unwrap();
            assert_eq!(
                flat[i].to_bits(),
                want,
                "{key}[{i}] ({kind:?}): {} vs {}",
                flat[i],
                f32::from_bits(want)
            );
        }
    }
}

#[test]
fn expected_shapes_are_torchvision_state_dict() {
    for kind in ModelKind::ALL {
        let tv = expected_json()["models"][kind.name()]["state_dict_shapes"]
            .as_array()
            .unwrap();
        let tv: Vec<(String, Vec<usize>)> = tv
            .iter()
            .map(|e| {
                (
                    e[0].as_str().unwrap().to_string(),
                    e[1].as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect(),
                )
            })
            .collect();
        assert_eq!(expected_shapes(kind), tv, "{kind}");
        let params = expected_json()["models"][kind.name()]["parameter_count"]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(parameter_count(kind), params, "{kind}");
    }
    assert_eq!(parameter_count(ModelKind::WideResnet50_2), 68_883_240);
    assert_eq!(parameter_count(ModelKind::MobilenetV3Large), 5_483_032);
}

#[test]
fn wide_resnet50_2_logits_match_torchvision() {
    logits_match_torchvision_on_the_fixed_input(ModelKind::WideResnet50_2);
}

#[test]
fn mobilenet_v3_large_logits_match_torchvision() {
    logits_match_torchvision_on_the_fixed_input(ModelKind::MobilenetV3Large);
}

#[test]
fn wide_resnet50_2_pipeline_top5_matches_torchvision_and_depends_on_the_image() {
    let top1 = pipeline_matches_torchvision(ModelKind::WideResnet50_2);
    assert!(
        distinct(&top1) >= 2,
        "top-1 is the same for every image: {top1:?}"
    );
}

#[test]
fn mobilenet_v3_large_pipeline_top5_matches_torchvision_and_depends_on_the_image() {
    let top1 = pipeline_matches_torchvision(ModelKind::MobilenetV3Large);
    assert!(
        distinct(&top1) >= 3,
        "top-1 barely depends on the image: {top1:?}"
    );
}

#[test]
fn generate_uses_the_embedded_copy_of_the_committed_calibration() {
    for kind in ModelKind::ALL {
        let file = Calibration::load(kind, &fixtures().join("bn_stats.safetensors")).unwrap();
        let embedded = Calibration::embedded(kind).unwrap();
        assert_eq!(file.classifier_scale, embedded.classifier_scale);
        assert_eq!(file.running.len(), embedded.running.len());
        for (k, t) in &file.running {
            let a = values(t);
            let b = values(&embedded.running[k]);
            assert_eq!(a, b, "{k}");
        }
    }
    let kind = ModelKind::MobilenetV3Large;
    let calibration = Calibration::load(kind, &fixtures().join("bn_stats.safetensors")).unwrap();
    let a = synthetic::generate(kind);
    let b = synthetic::generate_calibrated(kind, &calibration).unwrap();
    let u = synthetic::generate_uncalibrated(kind);
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let x = values(t);
        assert_eq!(x, values(&b[k]), "{k}");
    }
    let var = "features.16.1.running_var";
    assert!(values(&u[var]).iter().all(|&v| v == 1.0));
    assert_ne!(values(&a[var]), values(&u[var]));
}
