//! Deterministic synthetic weights, reproducible bit-exactly in Python/numpy
//! (`scripts/make_parity_fixtures.py` has the same generator; the parity tests depend on it).
//!
//! Element `i` of the tensor named `name`:
//! ```text
//! seed  = FNV-1a-64(utf8(name))
//! z     = splitmix64(seed XOR (i * 0x9E3779B97F4A7C15 mod 2^64))
//! u     = f32(z >> 40) * 2^-23 - 1              exact, u in [-1, 1)
//! value = f32(u * scale) + offset               f32 multiply, then f32 add (when offset != 0)
//! ```
//! with `scale` computed in f64 and rounded once to f32, per tensor:
//!
//! | tensor                          | scale                       | offset |
//! |---------------------------------|-----------------------------|--------|
//! | conv weight `[O, I/g, k, k]`    | sqrt(6 / (I/g·k·k))         | 0      |
//! | linear weight `[O, I]`          | sqrt(6 / I) · c             | 0      |
//! | conv/linear bias                | sqrt(1 / fan_in) · c        | 0      |
//! | BatchNorm weight                | 0.25                        | 1      |
//! | BatchNorm bias                  | 0.25                        | 0      |
//! | BatchNorm running_mean / var    | calibration fixture, else 0 / 1 |    |
//!
//! `c` is 1 except for the last classifier layer (`fc` / `classifier.3`), where it is the calibration's
//! `classifier_scale`; with a calibration, that layer's bias is the calibration's `classifier_bias`.

use super::load::{expected_shapes, read_tensors, write_safetensors};
use crate::models::ModelKind;
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// splitmix64's increment (the 64-bit golden ratio), also the index multiplier.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a, 64 bits, over the bytes of `name`.
pub fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// One splitmix64 output for state `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform value in [-1, 1) of element `index` of tensor `name` (seed = [`fnv1a64`] of the name).
#[inline]
pub fn uniform_at(seed: u64, index: u64) -> f32 {
    let z = splitmix64(seed ^ index.wrapping_mul(GOLDEN));
    (z >> 40) as f32 * (1.0 / 8_388_608.0) - 1.0
}

/// `n` values `f32(u * scale) + offset` of tensor `name`.
pub fn values(name: &str, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    let seed = fnv1a64(name);
    (0..n as u64)
        .map(|i| {
            let v = uniform_at(seed, i) * scale;
            if offset != 0.0 {
                v + offset
            } else {
                v
            }
        })
        .collect()
}

/// A generated f32 tensor.
pub fn tensor(name: &str, shape: &[usize], scale: f32, offset: f32) -> Tensor {
    let n = shape.iter().product();
    // The length is the shape's element count by construction: this cannot fail.
    Tensor::from_vec(
        values(name, n, scale, offset),
        shape,
        &candle_core::Device::Cpu,
    )
    .unwrap_or_else(|_| unreachable!("generated length matches the shape"))
}

/// Scale of the fixed parity input (white noise of std 0.29, in the range of normalised images).
pub const PARITY_INPUT_SCALE: f32 = 0.5;

/// The fixed parity input `parity.input`: `[n, 3, 224, 224]`, uniform in [-0.5, 0.5).
pub fn parity_input(n: usize) -> Tensor {
    tensor("parity.input", &[n, 3, 224, 224], PARITY_INPUT_SCALE, 0.0)
}

/// The last (classifier) layer of each model, whose weight is scaled by the calibration.
pub fn final_layer(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::WideResnet50_2 => "fc",
        ModelKind::MobilenetV3Large => "classifier.3",
    }
}

/// What a tensor is made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// `f32(u * scale) + offset`.
    Generated { scale: f32, offset: f32 },
    /// BatchNorm running mean (0 uncalibrated).
    RunningMean,
    /// BatchNorm running variance (1 uncalibrated).
    RunningVar,
}

/// The generator's rule for state_dict entry `name` of shape `shape`, given all entries' shapes.
/// `c` scales the final classifier layer.
pub fn rule(
    shapes: &HashMap<&str, &[usize]>,
    final_layer: &str,
    name: &str,
    c: f32,
) -> Option<Rule> {
    let (prefix, leaf) = name.rsplit_once('.')?;
    match leaf {
        "running_mean" => return Some(Rule::RunningMean),
        "running_var" => return Some(Rule::RunningVar),
        _ => {}
    }
    let is_bn = shapes.contains_key(format!("{prefix}.running_mean").as_str());
    if is_bn {
        let offset = if leaf == "weight" { 1.0 } else { 0.0 };
        return Some(Rule::Generated {
            scale: 0.25,
            offset,
        });
    }
    let cls = if prefix == final_layer {
        f64::from(c)
    } else {
        1.0
    };
    let weight_shape = shapes.get(format!("{prefix}.weight").as_str())?;
    let fan_in: usize = weight_shape.iter().skip(1).product();
    let gain = match leaf {
        "weight" => 6.0,
        "bias" => 1.0,
        _ => return None,
    };
    Some(Rule::Generated {
        scale: ((gain / fan_in as f64).sqrt() * cls) as f32,
        offset: 0.0,
    })
}

/// Calibration of the synthetic weights (the committed fixture `tests/fixtures/parity/bn_stats.safetensors`
/// has, per model, `<model>.<bn>.running_mean|running_var`, `<model>.classifier_scale` and
/// `<model>.classifier_bias`).
#[derive(Clone, Debug)]
pub struct Calibration {
    pub classifier_scale: f32,
    pub classifier_bias: Option<Tensor>,
    /// BatchNorm running statistics by state_dict key.
    pub running: HashMap<String, Tensor>,
}

impl Calibration {
    /// The calibration of `kind` out of a fixture's tensors.
    pub fn from_fixture(kind: ModelKind, fixture: &HashMap<String, Tensor>) -> Result<Self> {
        let prefix = format!("{}.", kind.name());
        let get = |k: &str| {
            fixture
                .get(&format!("{prefix}{k}"))
                .cloned()
                .ok_or_else(|| Error::WeightsInvalid {
                    path: "calibration fixture".into(),
                    reason: format!("missing key `{prefix}{k}`"),
                })
        };
        let classifier_scale = get("classifier_scale")?
            .flatten_all()?
            .to_vec1::<f32>()?
            .first()
            .copied()
            .ok_or_else(|| Error::WeightsInvalid {
                path: "calibration fixture".into(),
                reason: "empty classifier_scale".into(),
            })?;
        let mut running = HashMap::new();
        for (k, _) in expected_shapes(kind) {
            if k.ends_with(".running_mean") || k.ends_with(".running_var") {
                let t = get(&k)?;
                running.insert(k, t);
            }
        }
        Ok(Self {
            classifier_scale,
            classifier_bias: Some(get("classifier_bias")?),
            running,
        })
    }

    /// Read the fixture file and take `kind`'s calibration.
    pub fn load(kind: ModelKind, path: &Path) -> Result<Self> {
        Self::from_fixture(kind, &read_tensors(path)?)
    }
}

/// The committed calibration (`tests/fixtures/parity/bn_stats.safetensors`, ~400 KB), embedded so that
/// [`generate`] gives the parity-tested, input-dependent network everywhere (CLI/server tests, benchmarks).
const EMBEDDED_CALIBRATION: &[u8] =
    include_bytes!("../../tests/fixtures/parity/bn_stats.safetensors");

impl Calibration {
    /// The embedded copy of the committed calibration fixture.
    pub fn embedded(kind: ModelKind) -> Result<Self> {
        let tensors =
            candle_core::safetensors::load_buffer(EMBEDDED_CALIBRATION, &candle_core::Device::Cpu)?;
        Self::from_fixture(kind, &tensors)
    }
}

/// Synthetic weights of `kind`: the generator calibrated with the embedded BatchNorm statistics (the
/// same weights the parity tests check against torchvision), so the network's answer depends on its
/// input. Deterministic; ~0.2 s for Wide ResNet-50-2's 68.9M parameters in a release build.
pub fn generate(kind: ModelKind) -> HashMap<String, Tensor> {
    match Calibration::embedded(kind).and_then(|c| generate_calibrated(kind, &c)) {
        Ok(w) => w,
        // unreachable with the committed fixture (tested); stay loadable rather than panic
        Err(_) => generate_uncalibrated(kind),
    }
}

/// Uncalibrated synthetic weights (running mean 0, variance 1, classifier scale 1). Loadable and fast,
/// but degenerate: Wide ResNet then gives the same answer for every input.
pub fn generate_uncalibrated(kind: ModelKind) -> HashMap<String, Tensor> {
    build(kind, None)
}

/// Synthetic weights calibrated with the committed BatchNorm statistics (the parity tests' weights).
pub fn generate_calibrated(
    kind: ModelKind,
    calibration: &Calibration,
) -> Result<HashMap<String, Tensor>> {
    let mut map = build(kind, Some(calibration));
    let shapes = expected_shapes(kind);
    for (k, shape) in &shapes {
        if let Some(t) = map.get(k) {
            if t.dims() != shape.as_slice() {
                return Err(Error::WeightsInvalid {
                    path: "calibration fixture".into(),
                    reason: format!("key `{k}` has shape {:?}, expected {:?}", t.dims(), shape),
                });
            }
        }
    }
    if let Some(bias) = &calibration.classifier_bias {
        map.insert(format!("{}.bias", final_layer(kind)), bias.clone());
    }
    Ok(map)
}

fn build(kind: ModelKind, calibration: Option<&Calibration>) -> HashMap<String, Tensor> {
    let expected = expected_shapes(kind);
    let shapes: HashMap<&str, &[usize]> = expected
        .iter()
        .map(|(k, s)| (k.as_str(), s.as_slice()))
        .collect();
    let c = calibration.map_or(1.0, |c| c.classifier_scale);
    let fl = final_layer(kind);
    let mut out = HashMap::with_capacity(expected.len());
    for (name, shape) in &expected {
        let t = match rule(&shapes, fl, name, c) {
            Some(Rule::Generated { scale, offset }) => tensor(name, shape, scale, offset),
            Some(Rule::RunningMean) | Some(Rule::RunningVar) | None => {
                let calibrated = calibration.and_then(|c| c.running.get(name)).cloned();
                match calibrated {
                    Some(t) => t,
                    None => {
                        let fill: f32 = if name.ends_with(".running_var") {
                            1.0
                        } else {
                            0.0
                        };
                        let n = shape.iter().product();
                        Tensor::from_vec(vec![fill; n], shape.as_slice(), &candle_core::Device::Cpu)
                            .unwrap_or_else(|_| unreachable!("length matches the shape"))
                    }
                }
            }
        };
        out.insert(name.clone(), t);
    }
    out
}

/// The state_dict keys of `kind` that the generator fills (all but the running statistics).
pub fn generated_keys(kind: ModelKind) -> HashSet<String> {
    expected_shapes(kind)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
        .collect()
}

/// Write the synthetic weights of `kind` ([`generate`]) to `<dir>/<model>.safetensors` (creating `dir`),
/// atomically. Returns the file's path.
pub fn write_synthetic_weights(dir: &Path, kind: ModelKind) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!("{}.safetensors", kind.name()));
    write_safetensors(&generate(kind), &path)?;
    Ok(path)
}
