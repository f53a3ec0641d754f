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
        // Fold in f64, round once to f32.
        let scale =
            (gamma.to_dtype(DType::F64)? / (var.to_dtype(DType::F64)? + cfg.eps)?.sqrt()?)?;
        let weight = w
            .to_dtype(DType::F64)?
            .broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let bias = (beta.to_dtype(DType::F64)? - (mean.to_dtype(DType::F64)? * scale)?)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        Ok(Self {
            weight,
            bias,
            params: ConvParams {
                stride: cfg.stride,
                padding: cfg.padding(),
                groups: cfg.groups,
            },
            act: cfg.act,
        })
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
