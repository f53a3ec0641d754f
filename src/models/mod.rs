//! torchvision's ImageNet classifiers, in candle.

use std::fmt;

/// The models imgclass serves. Names are torchvision's builder names.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum ModelKind {
    /// Wide ResNet-50-2 (IMAGENET1K_V2, 81.6% top-1).
    #[value(name = "wide_resnet50_2")]
    #[serde(rename = "wide_resnet50_2")]
    WideResnet50_2,
    /// MobileNetV3-Large (IMAGENET1K_V2, 75.3% top-1).
    #[value(name = "mobilenet_v3_large")]
    #[serde(rename = "mobilenet_v3_large")]
    MobilenetV3Large,
}

impl ModelKind {
    pub const ALL: [ModelKind; 2] = [ModelKind::WideResnet50_2, ModelKind::MobilenetV3Large];

    /// torchvision's name of the model (also the weights file stem).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::WideResnet50_2 => "wide_resnet50_2",
            ModelKind::MobilenetV3Large => "mobilenet_v3_large",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod classifier;
pub mod mobilenet_v3;
pub mod resnet;
pub use classifier::Classifier;

use crate::ops::{self, Activation, ConvParams};
use candle_core::{DType, Result as CResult, Tensor};
use candle_nn::VarBuilder;

/// Geometry and activation of one convolution followed by a BatchNorm (torchvision's `bias=False` conv).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvBnConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    /// BatchNorm epsilon (1e-5 in ResNet, 1e-3 in MobileNetV3).
    pub eps: f64,
    /// Applied after the BatchNorm (and after the residual add, when there is one).
    pub act: Activation,
}

impl ConvBnConfig {
    /// torchvision's symmetric padding `(k - 1) / 2` (dilation 1).
    pub fn padding(&self) -> usize {
        (self.kernel - 1) / 2
    }

    /// The conv weight's shape `[O, I/groups, k, k]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel,
            self.kernel,
        ]
    }

    /// state_dict entries of the conv at `conv` and its BatchNorm at `bn`.
    pub(crate) fn push_shapes(&self, conv: &str, bn: &str, out: &mut Vec<(String, Vec<usize>)>) {
        out.push((format!("{conv}.weight"), self.weight_shape()));
        for leaf in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{bn}.{leaf}"), vec![self.out_channels]));
        }
    }
}

/// A convolution with its BatchNorm folded in at load time:
/// `w' = w * gamma / sqrt(var + eps)`, `b' = beta - mean * gamma / sqrt(var + eps)`.
#[derive(Clone, Debug)]
pub struct FoldedConv {
    weight: Tensor,
    bias: Tensor,
    params: ConvParams,
    act: Activation,
    /// A copy of a 1x1 stride-1 weight packed in the channel-vector layout, for small maps
    /// ([`FoldedConv::pack_for_small_maps`]).
    small_map: Option<ops::PointwiseWeight>,
}

impl FoldedConv {
    /// Read the conv weight from `conv` and the BatchNorm from `bn`, and fold them.
    pub fn new(conv: VarBuilder, bn: VarBuilder, cfg: &ConvBnConfig) -> CResult<Self> {
        let w = conv.get(cfg.weight_shape(), "weight")?;
        let c = cfg.out_channels;
        let gamma = bn.get(c, "weight")?;
        let beta = bn.get(c, "bias")?;
        let mean = bn.get(c, "running_mean")?;
        let var = bn.get(c, "running_var")?;
        // Fold in f64, round once to f32: `w * gamma / sqrt(var + eps)` and
        // `beta - mean * gamma / sqrt(var + eps)`, on plain slices (through candle's f64 tensors
        // the whole weight was converted to f64 and back: ~1 s of Wide ResNet's load on a Zen 3).
        let f64s = |t: &Tensor| -> CResult<Vec<f64>> {
            Ok(t.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect())
        };
        let (gamma, beta, mean, var) = (f64s(&gamma)?, f64s(&beta)?, f64s(&mean)?, f64s(&var)?);
        let scale: Vec<f64> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + cfg.eps).sqrt())
            .collect();
        let bias: Vec<f32> = beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| (b - m * s) as f32)
            .collect();
        let shape = w.shape().clone();
        let mut wv = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let per = wv.len() / c.max(1);
        if per * c != wv.len() || scale.len() != c {
            candle_core::bail!("conv weight {shape:?} does not have {c} output channels");
        }
        {
            use rayon::prelude::*;
            wv.par_chunks_mut(per.max(1))
                .zip(scale.par_iter())
                .for_each(|(row, &s)| {
                    for v in row {
                        *v = (f64::from(*v) * s) as f32;
                    }
                });
        }
        let weight = Tensor::from_vec(wv, shape, w.device())?;
        let bias = Tensor::from_vec(bias, c, w.device())?;
        Ok(Self {
            weight,
            bias,
            params: ConvParams {
                stride: cfg.stride,
                padding: cfg.padding(),
                groups: cfg.groups,
            },
            act: cfg.act,
            small_map: None,
        })
    }

    /// Also keep the weight of this 1x1 stride-1 conv packed in the channel-vector layout
    /// ([`ops::packed1x1::Layout::ChannelVectors`]), if the CPU runs it and the conv sees a map of
    /// `pixels` pixels (at imgclass's input size) below [`ops::packed1x1::PANELS8_MIN_PIXELS`]:
    /// such maps then run on that kernel (MobileNetV3's 7x7 layers: 48 channels x 7 pixels per
    /// register block, no lane lost on 49 pixels; measured by `examples/mnv3_7x7_ab.rs` against
    /// `gemm` / `pointwise::conv1x1`: 10-25% less time per layer at batch 1 on two threads, 5-25%
    /// at batches 2 and 4 on one thread, which is how MobileNetV3 runs batches: one part per
    /// thread, `Classifier::batch_parts`). Larger maps keep the plain weight. Off with
    /// `IMGCLASS_PACK1X1=0`.
    pub fn pack_for_small_maps(mut self, pixels: usize) -> CResult<Self> {
        let p = self.params;
        let (o, _, kh, kw) = self.weight.dims4()?;
        if kh == 1
            && kw == 1
            && p.stride == 1
            && p.padding == 0
            && p.groups == 1
            && pixels < ops::packed1x1::PANELS8_MIN_PIXELS
            && ops::PointwiseWeight::supported(o, ops::packed1x1::Layout::ChannelVectors)
            && ops::pack1x1_enabled()
        {
            self.small_map = Some(ops::PointwiseWeight::new(
                &self.weight,
                ops::packed1x1::Layout::ChannelVectors,
            )?);
        }
        Ok(self)
    }

    /// The packed copy, if this input is a small map.
    fn small_map_for(&self, x: &Tensor) -> Option<&ops::PointwiseWeight> {
        let (_, _, h, w) = x.dims4().ok()?;
        (h * w < ops::packed1x1::PANELS8_MIN_PIXELS)
            .then_some(self.small_map.as_ref())
            .flatten()
    }

    /// The folded convolution as one step of a fused block ([`ops::inverted_residual`]).
    pub fn block_conv(&self) -> ops::BlockConv<'_> {
        ops::BlockConv {
            weight: &self.weight,
            bias: Some(&self.bias),
            act: self.act,
        }
    }

    /// The convolution's stride.
    pub fn stride(&self) -> usize {
        self.params.stride
    }

    /// `act(conv(x) + b [+ residual])`, through [`crate::ops::conv2d`].
    pub fn forward_with(&self, x: &Tensor, residual: Option<&Tensor>) -> CResult<Tensor> {
        if let Some(pw) = self.small_map_for(x) {
            return ops::conv2d_pointwise(x, pw, Some(&self.bias), self.act, residual);
        }
        ops::conv2d(
            x,
            &self.weight,
            Some(&self.bias),
            self.params,
            self.act,
            residual,
        )
    }
}

impl FoldedConv {
    /// `act(conv(x * hardsigmoid(s)) + b [+ residual])`: this conv after a SqueezeExcitation whose
    /// `fc2` output is `s` (`[N, C]`), through [`crate::ops::conv2d_se_scaled`] (the scale folded
    /// into the kernel where it can be).
    pub fn forward_se_scaled(
        &self,
        x: &Tensor,
        s: &Tensor,
        residual: Option<&Tensor>,
    ) -> CResult<Tensor> {
        if let Some(pw) = self.small_map_for(x) {
            let scaled = ops::se_scale(x, s)?;
            return ops::conv2d_pointwise(&scaled, pw, Some(&self.bias), self.act, residual);
        }
        ops::conv2d_se_scaled(
            x,
            s,
            &self.weight,
            Some(&self.bias),
            self.params,
            self.act,
            residual,
        )
    }
}

impl candle_core::Module for FoldedConv {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_with(x, None)
    }
}

/// Global average pooling `[N,C,H,W] -> [N,C]`.
pub(crate) fn global_avg_pool(x: &Tensor) -> CResult<Tensor> {
    crate::ops::global_avg_pool(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_diff;
    use candle_core::Device;
    use std::collections::HashMap;

    /// A folded 1x1 conv `k -> o` with random weights and BatchNorm statistics.
    fn conv1x1(k: usize, o: usize, act: Activation) -> FoldedConv {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert(
            "c.weight".to_string(),
            Tensor::randn(0f32, 0.1, (o, k, 1, 1), &dev).unwrap(),
        );
        for (leaf, lo) in [("weight", 0.5), ("bias", -0.5), ("running_mean", -0.5)] {
            let v = (Tensor::rand(0f32, 1.0, o, &dev).unwrap() + lo).unwrap();
            t.insert(format!("bn.{leaf}"), v);
        }
        let var = (Tensor::rand(0f32, 1.0, o, &dev).unwrap() + 0.5).unwrap();
        t.insert("bn.running_var".to_string(), var);
        let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
        let cfg = ConvBnConfig {
            in_channels: k,
            out_channels: o,
            kernel: 1,
            stride: 1,
            groups: 1,
            eps: 1e-3,
            act,
        };
        FoldedConv::new(vb.pp("c"), vb.pp("bn"), &cfg).unwrap()
    }

    /// The packed copy of a 1x1 conv on a small map gives the plain conv's result (one image, with
    /// and without residual and SqueezeExcitation scale), on one image and a batch, 7x7 and 9x9 maps
    /// (and 14x14, which keeps the plain weight).
    #[test]
    fn small_map_packing_matches_the_plain_conv() {
        let dev = Device::Cpu;
        for (k, o, act) in [
            (960, 160, Activation::None),
            (160, 960, Activation::Hardswish),
        ] {
            let plain = conv1x1(k, o, act);
            let packed = plain.clone().pack_for_small_maps(49).unwrap();
            let supported =
                ops::PointwiseWeight::supported(o, ops::packed1x1::Layout::ChannelVectors)
                    && ops::pack1x1_enabled();
            assert_eq!(packed.small_map.is_some(), supported);
            // A 14x14 map is not small: no packed copy.
            let big = plain.clone().pack_for_small_maps(196).unwrap();
            assert!(big.small_map.is_none());
            for (n, side) in [(1, 7), (2, 7), (1, 9), (1, 14)] {
                let x = Tensor::randn(0f32, 1.0, (n, k, side, side), &dev).unwrap();
                let r = Tensor::randn(0f32, 1.0, (n, o, side, side), &dev).unwrap();
                let s = Tensor::randn(0f32, 2.0, (n, k), &dev).unwrap();
                let scale = 1e-5 * (k as f32).sqrt();
                let a = plain.forward_with(&x, Some(&r)).unwrap();
                let b = packed.forward_with(&x, Some(&r)).unwrap();
                assert!(max_diff(&a, &b) <= scale, "{k}->{o} n={n} {side}x{side}");
                let a = plain.forward_se_scaled(&x, &s, None).unwrap();
                let b = packed.forward_se_scaled(&x, &s, None).unwrap();
                assert!(max_diff(&a, &b) <= scale, "{k}->{o} se n={n} {side}x{side}");
                // and against the plain candle ops
                let want = ops::reference::conv2d(
                    &ops::pool::reference::se_scale(&x, &s).unwrap(),
                    &plain.weight,
                    Some(&plain.bias),
                    plain.params,
                    act,
                    None,
                )
                .unwrap();
                assert!(
                    max_diff(&want, &b) <= scale,
                    "{k}->{o} ref n={n} {side}x{side}"
                );
            }
        }
    }
}
