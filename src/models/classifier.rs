//! The loaded network behind one `ModelKind`.

use super::mobilenet_v3::{MobileNetV3, MobileNetV3Config};
use super::resnet::{ResNet, ResNetConfig};
use super::ModelKind;
use crate::labels::{top_k, Prediction};
use crate::weights::load::{build_strict, parameter_count, read_tensors};
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Side of the square input the models expect (after the eval transform's center crop).
pub const INPUT_SIZE: usize = 224;

enum Net {
    ResNet(ResNet),
    MobileNetV3(MobileNetV3),
}

/// A loaded, ready-to-run classifier (BatchNorm folded). `Send + Sync`.
pub struct Classifier {
    kind: ModelKind,
    net: Net,
}

impl Classifier {
    /// Load a `.safetensors` (memory-mapped) or torchvision `.pth` file, strictly.
    pub fn load(kind: ModelKind, path: &Path) -> Result<Self> {
        let tensors = read_tensors(path)?;
        Self::from_tensors(kind, tensors, &path.display().to_string())
    }

    /// Build from a torchvision state_dict already in memory, strictly. `source` names it in errors.
    pub fn from_tensors(
        kind: ModelKind,
        tensors: HashMap<String, Tensor>,
        source: &str,
    ) -> Result<Self> {
        let net = match kind {
            ModelKind::WideResnet50_2 => build_strict(kind, tensors, source, |vb| {
                ResNet::new(vb, &ResNetConfig::wide_resnet50_2()).map(Net::ResNet)
            })?,
            ModelKind::MobilenetV3Large => build_strict(kind, tensors, source, |vb| {
                MobileNetV3::new(vb, &MobileNetV3Config::large()).map(Net::MobileNetV3)
            })?,
        };
        Ok(Self { kind, net })
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Number of learnable parameters of the torchvision model (68,883,240 / 5,483,032).
    pub fn parameter_count(&self) -> usize {
        parameter_count(self.kind)
    }

    /// `[N,3,224,224]` f32 → `[N,1000]` logits.
    pub fn forward(&self, batch: &Tensor) -> Result<Tensor> {
        let dims = batch.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] < 32 || dims[3] < 32 {
            return Err(Error::Inference(format!(
                "expected an input of shape [N, 3, H, W] with H, W >= 32, got {dims:?}"
            )));
        }
        let x = batch.to_dtype(DType::F32)?.contiguous()?;
        // The whole pass runs on rayon's pool, so each of its ~150 parallel kernels starts at once.
        let y = crate::ops::in_pool(|| match &self.net {
            Net::ResNet(m) => m.forward(&x),
            Net::MobileNetV3(m) => m.forward(&x),
        })?;
        Ok(y)
    }

    /// Convenience: stack CHW inputs (each 3*224*224) into one batch, forward, softmax top-k per input.
    pub fn classify(&self, inputs: &[&[f32]], k: usize) -> Result<Vec<Vec<Prediction>>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let per = 3 * INPUT_SIZE * INPUT_SIZE;
        let mut data = Vec::with_capacity(per * inputs.len());
        for (i, x) in inputs.iter().enumerate() {
            if x.len() != per {
                return Err(Error::Internal(format!(
                    "input {i} has {} values, expected 3x{INPUT_SIZE}x{INPUT_SIZE} = {per}",
                    x.len()
                )));
            }
            data.extend_from_slice(x);
        }
        let batch = Tensor::from_vec(
            data,
            (inputs.len(), 3, INPUT_SIZE, INPUT_SIZE),
            &Device::Cpu,
        )?;
        let logits = self.forward(&batch)?.to_vec2::<f32>()?;
        Ok(logits.iter().map(|l| top_k(l, k)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Classifier>();
    }
}
