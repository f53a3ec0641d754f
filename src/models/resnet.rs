//! torchvision's ResNet with Bottleneck blocks (V1.5: the stride is on the 3x3 conv), as used by
//! `wide_resnet50_2`. BatchNorm is folded into each convolution at load time.
//!
//! Attribute paths mirror torchvision: `conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`, `.bn{1,2,3}`,
//! `.downsample.0` (conv1x1) / `.downsample.1` (BatchNorm), `fc`.

use super::{global_avg_pool, ConvBnConfig, FoldedConv};
use crate::models::classifier::INPUT_SIZE;
use crate::ops::{
    self, packed1x1, Activation, KxkCvWeight, PointwiseWeight, PreparedWeight, WinogradWeight,
};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// The architecture as data: torchvision's `ResNet(block=Bottleneck, layers, width_per_group, groups)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    /// Number of Bottleneck blocks per stage (`layer1..layer4`).
    pub layers: [usize; 4],
    /// 64 for ResNet-50, 128 for Wide ResNet-50-2.
    pub width_per_group: usize,
    pub groups: usize,
    pub num_classes: usize,
    pub bn_eps: f64,
}

/// Bottleneck output channels = planes * EXPANSION.
pub const EXPANSION: usize = 4;
const STEM_CHANNELS: usize = 64;

impl ResNetConfig {
    /// torchvision.models.wide_resnet50_2.
    pub fn wide_resnet50_2() -> Self {
        Self {
            layers: [3, 4, 6, 3],
            width_per_group: 128,
            groups: 1,
            num_classes: 1000,
            bn_eps: 1e-5,
        }
    }

    fn stem(&self) -> ConvBnConfig {
        ConvBnConfig {
            in_channels: 3,
            out_channels: STEM_CHANNELS,
            kernel: 7,
            stride: 2,
            groups: 1,
            eps: self.bn_eps,
            act: Activation::Relu,
        }
    }

    /// Every block as `(stage index 1..=4, block index, config)`, in torchvision's order.
    pub fn blocks(&self) -> Vec<(usize, usize, BottleneckConfig)> {
        let mut out = Vec::new();
        let mut inplanes = STEM_CHANNELS;
        for (s, &n) in self.layers.iter().enumerate() {
            let planes = STEM_CHANNELS << s;
            let width = planes * self.width_per_group / 64 * self.groups;
            let out_channels = planes * EXPANSION;
            for i in 0..n {
                let stride = if i == 0 && s > 0 { 2 } else { 1 };
                out.push((
                    s + 1,
                    i,
                    BottleneckConfig {
                        inplanes,
                        width,
                        out_channels,
                        stride,
                        groups: self.groups,
                        downsample: stride != 1 || inplanes != out_channels,
                        eps: self.bn_eps,
                    },
                ));
                inplanes = out_channels;
            }
        }
        out
    }

    /// Channels entering `fc`.
    pub fn feature_channels(&self) -> usize {
        (STEM_CHANNELS << 3) * EXPANSION
    }

    /// torchvision's state_dict keys and shapes (without `num_batches_tracked`), in its order.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        self.stem().push_shapes("conv1", "bn1", &mut out);
        for (s, i, b) in self.blocks() {
            let p = format!("layer{s}.{i}");
            let [c1, c2, c3] = b.convs();
            c1.push_shapes(&format!("{p}.conv1"), &format!("{p}.bn1"), &mut out);
            c2.push_shapes(&format!("{p}.conv2"), &format!("{p}.bn2"), &mut out);
            c3.push_shapes(&format!("{p}.conv3"), &format!("{p}.bn3"), &mut out);
            if let Some(d) = b.downsample_conv() {
                d.push_shapes(
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    &mut out,
                );
            }
        }
        out.push((
            "fc.weight".into(),
            vec![self.num_classes, self.feature_channels()],
        ));
        out.push(("fc.bias".into(), vec![self.num_classes]));
        out
    }
}

/// One torchvision `Bottleneck`: 1x1 (reduce) → 3x3 (stride) → 1x1 (expand), plus identity or downsample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BottleneckConfig {
    pub inplanes: usize,
    pub width: usize,
    pub out_channels: usize,
    pub stride: usize,
    pub groups: usize,
    pub downsample: bool,
    pub eps: f64,
}

impl BottleneckConfig {
    fn convs(&self) -> [ConvBnConfig; 3] {
        let c = |i, o, k, s, g, act| ConvBnConfig {
            in_channels: i,
            out_channels: o,
            kernel: k,
            stride: s,
            groups: g,
            eps: self.eps,
            act,
        };
        [
            c(self.inplanes, self.width, 1, 1, 1, Activation::Relu),
            c(
                self.width,
                self.width,
                3,
                self.stride,
                self.groups,
                Activation::Relu,
            ),
            // relu(bn3(conv3(x)) + identity): residual and ReLU fused into the conv
            c(self.width, self.out_channels, 1, 1, 1, Activation::Relu),
        ]
    }

    fn downsample_conv(&self) -> Option<ConvBnConfig> {
        self.downsample.then_some(ConvBnConfig {
            in_channels: self.inplanes,
            out_channels: self.out_channels,
            kernel: 1,
            stride: self.stride,
            groups: 1,
            eps: self.eps,
            act: Activation::None,
        })
    }
}

/// A [`FoldedConv`] whose weight is prepared for the fast kernels: the 3x3 convolutions run as
/// Winograd where [`ops::select_kernel`] picks it, and their transformed weights are computed once
/// (on the first forward pass that needs them), not on every call. `WinogradOnly` keeps only the
/// transformed weight (for the layers that always run as Winograd): the original is dropped, which
/// saves 9/25 of what the layer would hold otherwise (55 MB over Wide ResNet-50-2).
#[derive(Clone, Debug)]
enum PreparedConv {
    Cached {
        conv: FoldedConv,
        weight: PreparedWeight,
    },
    WinogradOnly {
        weight: WinogradWeight,
        bias: Tensor,
        padding: usize,
        act: Activation,
    },
    /// Only the channel-vector packing of the weight over its im2col reduction
    /// ([`KxkCvWeight`], same size as the original): the 3x3 convolutions with 7x7 outputs.
    ChannelVectors {
        weight: KxkCvWeight,
        bias: Tensor,
        params: ops::ConvParams,
        act: Activation,
    },
}

impl PreparedConv {
    fn new(conv: FoldedConv) -> Self {
        let weight = PreparedWeight::new(conv.weight.clone());
        Self::Cached { conv, weight }
    }

    fn winograd_only(conv: FoldedConv) -> Result<Self> {
        let p = conv.params;
        if p.stride != 1 || p.groups != 1 {
            candle_core::bail!("winograd_only: stride {} groups {}", p.stride, p.groups);
        }
        Ok(Self::WinogradOnly {
            weight: WinogradWeight::new(&conv.weight)?,
            bias: conv.bias,
            padding: p.padding,
            act: conv.act,
        })
    }

    /// The weight kept only as a [`KxkCvWeight`] when it can be here (AVX-512 CPUs), else
    /// [`Self::new`].
    fn channel_vectors(conv: FoldedConv) -> Result<Self> {
        let (o, ..) = conv.weight.dims4()?;
        if conv.params.groups != 1 || !packed1x1::cv_available(o) {
            return Ok(Self::new(conv));
        }
        Ok(Self::ChannelVectors {
            weight: KxkCvWeight::new(&conv.weight)?,
            bias: conv.bias,
            params: conv.params,
            act: conv.act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::ChannelVectors {
                weight,
                bias,
                params,
                act,
            } => ops::conv2d_kxk_cv(x, weight, Some(bias), *params, *act),
            Self::Cached { conv: c, weight } => {
                ops::conv2d_prepared(x, weight, Some(&c.bias), c.params, c.act, None)
            }
            Self::WinogradOnly {
                weight,
                bias,
                padding,
                act,
            } => ops::conv2d_winograd(x, weight, Some(bias), *padding, *act, None),
        }
    }
}

/// A 1x1 stride-1 [`FoldedConv`] whose weight is kept only packed ([`PointwiseWeight`], in the
/// layout measured faster for the feature map it runs on at imgclass's input size) on AVX-512
/// CPUs, or the plain conv elsewhere (and with `IMGCLASS_PACK1X1=0`). Packed layers run on any
/// input size.
#[derive(Clone, Debug)]
enum PointwiseConv {
    Plain(FoldedConv),
    Packed {
        weight: PointwiseWeight,
        bias: Tensor,
        act: Activation,
    },
}

impl PointwiseConv {
    /// `pixels`: the feature map (per image) the layer sees at imgclass's input size.
    fn new(conv: FoldedConv, pixels: usize) -> Result<Self> {
        let p = conv.params;
        let (o, _, kh, _) = conv.weight.dims4()?;
        let layout = packed1x1::PointwiseWeight::layout_for(o, pixels);
        match layout {
            Some(l)
                if kh == 1
                    && p.stride == 1
                    && p.padding == 0
                    && p.groups == 1
                    && ops::pack1x1_enabled() =>
            {
                Ok(Self::Packed {
                    weight: PointwiseWeight::new(&conv.weight, l)?,
                    bias: conv.bias,
                    act: conv.act,
                })
            }
            _ => Ok(Self::Plain(conv)),
        }
    }

    fn forward_with(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Self::Plain(c) => c.forward_with(x, residual),
            Self::Packed { weight, bias, act } => {
                ops::conv2d_pointwise(x, weight, Some(bias), *act, residual)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bottleneck {
    conv1: PointwiseConv,
    conv2: PreparedConv,
    conv3: PointwiseConv,
    downsample: Option<FoldedConv>,
}

impl Bottleneck {
    pub fn new(vb: VarBuilder, cfg: &BottleneckConfig) -> Result<Self> {
        Self::build(vb, cfg, false, 0)
    }

    /// `winograd_only`: keep only the Winograd form of the 3x3 weight (stride 1 only; see
    /// [`PreparedConv`]). `side`: the side of the block's input feature map at imgclass's input
    /// size (picks the packed layout of the 1x1 weights, see [`PointwiseConv`]).
    fn build(
        vb: VarBuilder,
        cfg: &BottleneckConfig,
        winograd_only: bool,
        side: usize,
    ) -> Result<Self> {
        let [c1, c2, c3] = cfg.convs();
        let downsample = match cfg.downsample_conv() {
            Some(d) => {
                let vd = vb.pp("downsample");
                Some(FoldedConv::new(vd.pp("0"), vd.pp("1"), &d)?)
            }
            None => None,
        };
        Ok(Self {
            conv1: PointwiseConv::new(
                FoldedConv::new(vb.pp("conv1"), vb.pp("bn1"), &c1)?,
                side * side,
            )?,
            conv2: {
                let conv2 = FoldedConv::new(vb.pp("conv2"), vb.pp("bn2"), &c2)?;
                let out_side = side.div_ceil(cfg.stride.max(1));
                if winograd_only {
                    PreparedConv::winograd_only(conv2)?
                } else if side > 0
                    && out_side * out_side < packed1x1::PANELS8_MIN_PIXELS
                    && ops::kxk_cv_enabled()
                {
                    PreparedConv::channel_vectors(conv2)?
                } else {
                    PreparedConv::new(conv2)
                }
            },
            conv3: {
                let out_side = side.div_ceil(cfg.stride.max(1));
                PointwiseConv::new(
                    FoldedConv::new(vb.pp("conv3"), vb.pp("bn3"), &c3)?,
                    out_side * out_side,
                )?
            },
            downsample,
        })
    }
}

impl Module for Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        // Each intermediate map is dropped as soon as the next one exists (a shadowed binding would
        // live to the end of the function): at batch 4 on 56x56 maps that is 6.4 MB less at peak.
        let y = self.conv2.forward(&self.conv1.forward_with(x, None)?)?;
        self.conv3.forward_with(&y, Some(&identity))
    }
}

/// Whether the 3x3 convolution of a block of stage `stage` (1..=4) always runs as Winograd at
/// imgclass's input size, so that only its transformed weight is kept: stride 1, and a feature map
/// (`INPUT_SIZE / 4 / 2^(stage-1)`: 56, 28, 14, 7) at least [`ops::winograd::MIN_F2_SIZE`]
/// (the size from which [`ops::select_kernel`] picks Winograd at every batch size). Off with
/// `IMGCLASS_WINOGRAD=0`. The layer then runs Winograd on any input size.
fn winograd_only(stage: usize, b: &BottleneckConfig) -> bool {
    let side = (INPUT_SIZE / 4) >> stage.saturating_sub(1);
    b.stride == 1 && b.groups == 1 && side >= ops::winograd::MIN_F2_SIZE && ops::winograd::enabled()
}

/// torchvision's `ResNet`: stem (conv1/bn1/relu/maxpool), four stages of Bottlenecks, avgpool, fc.
#[derive(Clone, Debug)]
pub struct ResNet {
    conv1: FoldedConv,
    blocks: Vec<Bottleneck>,
    /// How many of `blocks` (stages 1 and 2) run image by image in a batch: see
    /// [`ResNet::forward`].
    early_blocks: usize,
    fc: Linear,
}

/// The last stage whose blocks run image by image in a batch ([`ResNet::forward`]).
const PER_IMAGE_STAGES: usize = 2;

/// Whether batches run their first stages image by image (`IMGCLASS_PER_IMAGE_STAGES=0` turns
/// it off: the A/B switch; read once).
fn per_image_stages() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| ops::env_switch("IMGCLASS_PER_IMAGE_STAGES", true))
}

impl ResNet {
    pub fn new(vb: VarBuilder, cfg: &ResNetConfig) -> Result<Self> {
        let conv1 = FoldedConv::new(vb.pp("conv1"), vb.pp("bn1"), &cfg.stem())?;
        let blocks = cfg
            .blocks()
            .iter()
            .map(|(s, i, b)| {
                // The block's input side: the previous stage's for the first block of stages 2-4.
                let side = (INPUT_SIZE / 4) >> (s - 1);
                let side = if b.stride == 2 { side * 2 } else { side };
                Bottleneck::build(
                    vb.pp(format!("layer{s}")).pp(i),
                    b,
                    winograd_only(*s, b),
                    side,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let fc = candle_nn::linear(cfg.feature_channels(), cfg.num_classes, vb.pp("fc"))?;
        let early_blocks = cfg
            .blocks()
            .iter()
            .filter(|(s, _, _)| *s <= PER_IMAGE_STAGES)
            .count();
        Ok(Self {
            conv1,
            blocks,
            early_blocks,
            fc,
        })
    }

    /// The stem and the first `early_blocks` blocks on `x`.
    fn forward_early(&self, x: &Tensor) -> Result<Tensor> {
        // torchvision's maxpool: MaxPool2d(kernel_size=3, stride=2, padding=1). The stem's output
        // (3.2 MB per image) is freed here, not held through the whole pass.
        let mut x = crate::ops::max_pool2d(&self.conv1.forward(x)?, 3, 2, 1)?;
        for b in &self.blocks[..self.early_blocks] {
            x = b.forward(&x)?;
        }
        Ok(x)
    }
}

impl Module for ResNet {
    /// In a batch, the stem and stages 1-2 run one image at a time and stages 3-4 on the whole
    /// batch. The early stages have large maps and small weights: one image's activations (3.2-6.4
    /// MB per tensor) stay in the caches from one layer to the next, where a batch's spill to
    /// memory, and the batch's peak memory is one image's there. The late stages have small maps
    /// and large weights (15-60 MB per block), which the batch then reads once for all its images.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut x = if n > 1 && per_image_stages() {
            let per_image = (0..n)
                .map(|i| self.forward_early(&x.narrow(0, i, 1)?))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&per_image, 0)?
        } else {
            self.forward_early(x)?
        };
        for b in &self.blocks[self.early_blocks..] {
            x = b.forward(&x)?;
        }
        self.fc.forward(&global_avg_pool(&x)?)
    }
}
