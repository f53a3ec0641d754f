//! Reading and writing torchvision state_dicts, strictly.
//!
//! - [`read_tensors`]: `.safetensors` (memory-mapped) or torchvision's zip-format `.pth`, recognised by
//!   content (zip magic `PK\x03\x04` vs safetensors header), whatever the file name. Float tensors of
//!   other dtypes (f16, bf16, f64) are converted to f32.
//! - [`write_safetensors`]: atomic (temp file in the same directory, then rename).
//! - [`expected_shapes`]: the torchvision state_dict keys and shapes of a model, from its config.
//! - [`StrictTensors`]: the tensors a model is built from; every key must be used exactly as expected.

use crate::models::mobilenet_v3::MobileNetV3Config;
use crate::models::resnet::ResNetConfig;
use crate::models::ModelKind;
use crate::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Suffix of the BatchNorm counters that inference ignores.
pub const IGNORED_SUFFIX: &str = "num_batches_tracked";

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::WeightsInvalid {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The file formats [`read_tensors`] understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// torch.save's zip format (PyTorch >= 1.6, torchvision's published weights).
    TorchZip,
}

/// Recognise the format from the first bytes of a file.
pub fn sniff(head: &[u8], file_len: u64) -> std::result::Result<Format, String> {
    if head.is_empty() {
        return Err("the file is empty".into());
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(Format::TorchZip);
    }
    if head.len() >= 9 && head[8] == b'{' {
        let mut n = [0u8; 8];
        n.copy_from_slice(&head[..8]);
        let header_len = u64::from_le_bytes(n);
        if header_len.saturating_add(8) <= file_len {
            return Ok(Format::Safetensors);
        }
        return Err(format!(
            "safetensors header claims {header_len} bytes but the file has {file_len}: truncated?"
        ));
    }
    if head[0] == 0x80 {
        return Err(
            "legacy (pre-zip) PyTorch pickle format is not supported; re-save it with \
                    torch.save(state_dict, path) from PyTorch >= 1.6, or convert to safetensors"
                .into(),
        );
    }
    Err("not a safetensors file nor a zip-format PyTorch .pth file".into())
}

/// Read every tensor of a `.safetensors` or zip-format `.pth` file (float dtypes converted to f32).
///
/// Errors: [`Error::WeightsMissing`] when the file does not exist, [`Error::WeightsInvalid`] otherwise.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::WeightsMissing(format!(
                "weights file {} not found",
                path.display()
            )))
        }
        Err(e) => return Err(invalid(path, format!("cannot open: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| invalid(path, format!("cannot stat: {e}")))?;
    if meta.is_dir() {
        return Err(invalid(path, "is a directory, not a weights file"));
    }
    let mut head = Vec::with_capacity(16);
    (&mut file)
        .take(16)
        .read_to_end(&mut head)
        .map_err(|e| invalid(path, format!("cannot read: {e}")))?;
    drop(file);
    let format = sniff(&head, meta.len()).map_err(|r| invalid(path, r))?;
    // candle's readers trust the file's tensor metadata (a negative storage offset in a .pth
    // overflows a multiplication and panics): a panic while reading is an invalid file, not a crash.
    let read = std::panic::catch_unwind(|| match format {
        Format::Safetensors => read_safetensors(path),
        Format::TorchZip => read_pth(path),
    });
    let raw = read.unwrap_or_else(|_| {
        Err(invalid(
            path,
            "the tensor reader failed on this file (malformed tensor metadata)",
        ))
    })?;
    raw.into_iter()
        .map(|(k, t)| {
            let t = to_f32_if_float(t).map_err(|e| invalid(path, format!("tensor `{k}`: {e}")))?;
            Ok((k, t))
        })
        .collect()
}

fn to_f32_if_float(t: Tensor) -> candle_core::Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32),
        _ => Ok(t),
    }
}

fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    // Copies every tensor out of the read-only mapping (see `ops::mmap`).
    let st = crate::ops::mmap::mmap_safetensors(path)
        .map_err(|e| invalid(path, format!("not a valid safetensors file: {e}")))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
                .map_err(|e| invalid(path, format!("tensor `{name}`: {e}")))?;
            Ok((name, t))
        })
        .collect()
}

fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = candle_core::pickle::read_all(path)
        .map_err(|e| invalid(path, format!("cannot read PyTorch zip file: {e}")))?;
    if tensors.is_empty() {
        // checkpoints that wrap the state_dict
        for key in ["state_dict", "model"] {
            if let Ok(t) = candle_core::pickle::read_all_with_key(path, Some(key)) {
                if !t.is_empty() {
                    tensors = t;
                    break;
                }
            }
        }
    }
    if tensors.is_empty() {
        return Err(invalid(
            path,
            "the .pth file holds no tensors (expected a state_dict)",
        ));
    }
    Ok(tensors)
}

/// Write `tensors` as a safetensors file, atomically: a temp file in the same directory, fsync, rename.
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weights".into());
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Internal(format!("cannot write {}: {what}: {e}", path.display()))
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| fail("cannot create a temp file", &e))?;
    let contiguous = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<HashMap<String, Tensor>>>()
        .map_err(|e| fail("tensor", &e))?;
    candle_core::safetensors::save(&contiguous, tmp.path()).map_err(|e| fail("serialise", &e))?;
    tmp.as_file().sync_all().map_err(|e| fail("fsync", &e))?;
    tmp.persist(path).map_err(|e| fail("rename", &e.error))?;
    Ok(())
}

/// torchvision's state_dict keys and shapes of `kind` (without `num_batches_tracked`), in its order.
pub fn expected_shapes(kind: ModelKind) -> Vec<(String, Vec<usize>)> {
    match kind {
        ModelKind::WideResnet50_2 => ResNetConfig::wide_resnet50_2().state_dict_shapes(),
        ModelKind::MobilenetV3Large => MobileNetV3Config::large().state_dict_shapes(),
    }
}

/// Number of learnable parameters (torchvision's `sum(p.numel() for p in model.parameters())`):
/// every state_dict entry but the BatchNorm running statistics.
pub fn parameter_count(kind: ModelKind) -> usize {
    expected_shapes(kind)
        .iter()
        .filter(|(k, _)| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

fn list_keys(keys: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    s
}

/// Check a state_dict against the expected keys and shapes: the first problems are named.
/// `num_batches_tracked` entries are ignored.
pub fn check_state_dict(
    kind: ModelKind,
    tensors: &HashMap<String, Tensor>,
) -> std::result::Result<(), String> {
    let expected = expected_shapes(kind);
    let expected_keys: HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let missing: Vec<&str> = expected
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !tensors.contains_key(*k))
        .collect();
    let mut unexpected: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|k| !expected_keys.contains(k) && !k.ends_with(IGNORED_SUFFIX))
        .collect();
    unexpected.sort_unstable();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "missing key{} {}",
            if missing.len() > 1 { "s" } else { "" },
            list_keys(&missing)
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "unexpected key{} {}",
            if unexpected.len() > 1 { "s" } else { "" },
            list_keys(&unexpected)
        ));
    }
    for (k, shape) in &expected {
        if let Some(t) = tensors.get(k) {
            if t.dims() != shape.as_slice() {
                problems.push(format!(
                    "key `{k}` has shape {:?}, expected {:?}",
                    t.dims(),
                    shape
                ));
            } else if t.dtype() != DType::F32 {
                problems.push(format!(
                    "key `{k}` has dtype {:?}, expected a float type",
                    t.dtype()
                ));
            }
        }
        if problems.len() >= 8 {
            break;
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{} (model {kind})", problems.join("; ")))
    }
}

/// Float tensors converted to f32 and `num_batches_tracked` entries dropped.
pub fn normalize_state_dict(
    tensors: HashMap<String, Tensor>,
) -> candle_core::Result<HashMap<String, Tensor>> {
    tensors
        .into_iter()
        .filter(|(k, _)| !k.ends_with(IGNORED_SUFFIX))
        .map(|(k, t)| Ok((k, to_f32_if_float(t)?)))
        .collect()
}

#[derive(Default)]
struct StrictState {
    remaining: HashMap<String, Tensor>,
    taken: HashSet<String>,
}

/// A candle `VarBuilder` backend over a state_dict that checks shapes and hands out each key once,
/// dropping it from its map (so the unfolded weights are freed while the model is built); the keys
/// left at the end are the ones the model did not ask for.
#[derive(Clone)]
pub struct StrictTensors {
    state: Arc<Mutex<StrictState>>,
}

impl StrictTensors {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            state: Arc::new(Mutex::new(StrictState {
                remaining: tensors,
                taken: HashSet::new(),
            })),
        }
    }

    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, StrictState>> {
        self.state
            .lock()
            .map_err(|_| candle_core::Error::Msg("weights bookkeeping lock poisoned".into()))
    }

    /// Keys not requested so far, sorted.
    pub fn remaining_keys(&self) -> candle_core::Result<Vec<String>> {
        let mut keys: Vec<String> = self.lock()?.remaining.keys().cloned().collect();
        keys.sort_unstable();
        Ok(keys)
    }
}

impl candle_nn::var_builder::SimpleBackend for StrictTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "key `{name}` has shape {:?}, expected {:?}",
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = {
            let mut state = self.lock()?;
            match state.remaining.remove(name) {
                Some(t) => {
                    state.taken.insert(name.to_string());
                    t
                }
                None if state.taken.contains(name) => {
                    candle_core::bail!("key `{name}` requested twice by the model")
                }
                None => candle_core::bail!("missing key `{name}`"),
            }
        };
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock()
            .map(|s| s.remaining.contains_key(name) || s.taken.contains(name))
            .unwrap_or(false)
    }
}

/// Build a model strictly from a state_dict: `build` gets a VarBuilder; any key it did not use is an error.
pub fn build_strict<M>(
    kind: ModelKind,
    tensors: HashMap<String, Tensor>,
    source: &str,
    build: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<M>,
) -> Result<M> {
    let invalid = |reason: String| Error::WeightsInvalid {
        path: source.to_string(),
        reason,
    };
    let tensors = normalize_state_dict(tensors).map_err(|e| invalid(e.to_string()))?;
    check_state_dict(kind, &tensors).map_err(invalid)?;
    let strict = StrictTensors::new(tensors);
    let vb = candle_nn::VarBuilder::from_backend(Box::new(strict.clone()), DType::F32, Device::Cpu);
    let model = build(vb).map_err(|e| invalid(format!("{e} (model {kind})")))?;
    let unused = strict
        .remaining_keys()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let unused: Vec<&str> = unused.iter().map(String::as_str).collect();
    if !unused.is_empty() {
        return Err(invalid(format!(
            "unexpected key{} {} (model {kind})",
            if unused.len() > 1 { "s" } else { "" },
            list_keys(&unused)
        )));
    }
    Ok(model)
}
