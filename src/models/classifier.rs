//! STUB (owner: models): the loaded network behind one `ModelKind`.

use super::ModelKind;
use crate::labels::Prediction;
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// A loaded, ready-to-run classifier (BatchNorm folded). `Send + Sync`.
pub struct Classifier {
    kind: ModelKind,
}

impl Classifier {
    /// Load a `.safetensors` (memory-mapped) or torchvision `.pth` file, strictly.
    pub fn load(kind: ModelKind, _path: &Path) -> Result<Self> {
        let _ = kind;
        Err(Error::Internal(
            "Classifier::load not implemented yet".into(),
        ))
    }

    /// Build from a torchvision state_dict already in memory, strictly. `source` names it in errors.
    pub fn from_tensors(
        kind: ModelKind,
        _tensors: HashMap<String, Tensor>,
        _source: &str,
    ) -> Result<Self> {
        let _ = kind;
        Err(Error::Internal(
            "Classifier::from_tensors not implemented yet".into(),
        ))
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// `[N,3,224,224]` f32 → `[N,1000]` logits.
    pub fn forward(&self, _batch: &Tensor) -> Result<Tensor> {
        Err(Error::Internal(
            "Classifier::forward not implemented yet".into(),
        ))
    }

    /// Convenience: stack CHW inputs (each 3*224*224) into one batch, forward, softmax top-k per input.
    pub fn classify(&self, _inputs: &[&[f32]], _k: usize) -> Result<Vec<Vec<Prediction>>> {
        Err(Error::Internal(
            "Classifier::classify not implemented yet".into(),
        ))
    }
}
