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
        let y = crate::ops::in_pool(|| self.forward_parts(&x, self.batch_parts(dims[0])))?;
        Ok(y)
    }

    /// How many parts [`Classifier::forward`] splits a batch of `n` into: for MobileNetV3 one per
    /// thread of the pool (at most `n`), for Wide ResNet one. MobileNetV3's layers are too small
    /// to keep two threads busy together (~150 parallel loops per pass, each with a join at its
    /// end, and outputs that leave the cache at batch 8), so from batch 2 up each thread runs a
    /// part of the batch through the whole network (measured, 2 threads: batch 8 3.3–3.9 → 3.2
    /// ms per image, batch 2 3.8–4.3 → 3.6–3.8). Wide ResNet's layers are large GEMMs that already
    /// split well (batch 8 even, batch 2 slower split). `IMGCLASS_BATCH_SPLIT=0` in the
    /// environment (read once) turns the split off (the A/B switch for benchmarks).
    pub fn batch_parts(&self, n: usize) -> usize {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| crate::ops::env_switch("IMGCLASS_BATCH_SPLIT", true));
        match self.net {
            Net::MobileNetV3(_) if on => n.min(rayon::current_num_threads()).max(1),
            _ => 1,
        }
    }

    /// The network on `x: [N, 3, H, W]` (f32, contiguous), the batch split into `parts` runs of
    /// images run in parallel (each kernel inside still parallel, for the pool's idle threads),
    /// their logits concatenated in order (MobileNetV3: the parts' pooled features, then its
    /// classifier once over the whole batch). `parts` is clamped to `1..=N`.
    pub fn forward_parts(&self, x: &Tensor, parts: usize) -> candle_core::Result<Tensor> {
        let net = |x: &Tensor| match &self.net {
            Net::ResNet(m) => m.forward(x),
            Net::MobileNetV3(m) => m.forward(x),
        };
        let n = x.dim(0)?;
        let parts = parts.clamp(1, n.max(1));
        if parts == 1 {
            return net(x);
        }
        use rayon::prelude::*;
        let run_parts = |f: &(dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Sync)| {
            let outs = (0..parts)
                .into_par_iter()
                .map(|i| {
                    let (a, b) = (i * n / parts, (i + 1) * n / parts);
                    f(&x.narrow(0, a, b - a)?)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&outs, 0)
        };
        match &self.net {
            // The classifier's 2.5 M weights (10 MB) run once over the whole batch, not once per
            // part: its GEMV reads each weight row once for up to 4 images, and a part's thread
            // would stream all 10 MB from memory for its own images.
            Net::MobileNetV3(m) => m.forward_classifier(&run_parts(&|x| m.forward_features(x))?),
            Net::ResNet(_) => run_parts(&net),
        }
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
    fn a_batch_split_over_threads_gives_each_image_its_own_logits() {
        let kind = ModelKind::MobilenetV3Large;
        let c =
            Classifier::from_tensors(kind, crate::weights::synthetic::generate(kind), "t").unwrap();
        // 5 different images: parts of 2 and 3 images, and uneven splits
        let x = Tensor::randn(0f32, 1.0, (5, 3, 64, 64), &Device::Cpu).unwrap();
        let whole = c.forward_parts(&x, 1).unwrap();
        let max_abs = |t: &Tensor| -> f32 {
            let m = t.abs().and_then(|a| a.max_all()).unwrap();
            m.to_scalar::<f32>().unwrap()
        };
        let scale = max_abs(&whole);
        for parts in [2, 3, 5, 9] {
            let split = c.forward_parts(&x, parts).unwrap();
            assert_eq!(split.dims(), [5, 1000]);
            let d = max_abs(&(&split - &whole).unwrap());
            assert!(
                d <= 1e-4 * scale.max(1.0),
                "{parts} parts: {d} (scale {scale})"
            );
        }
        // the images differ, so a part put in the wrong place would show
        let apart = (whole.get(0).unwrap() - whole.get(4).unwrap()).unwrap();
        assert!(max_abs(&apart) > 1e-3 * scale);
        // one part per pool thread, never more than the images; Wide ResNet is not split
        assert_eq!(c.batch_parts(1), 1);
        assert!(c.batch_parts(8) >= 1 && c.batch_parts(8) <= rayon::current_num_threads());
    }

    #[test]
    fn classifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Classifier>();
    }
}
