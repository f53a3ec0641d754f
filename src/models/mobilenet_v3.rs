//! torchvision's MobileNetV3 (`mobilenet_v3_large`). BatchNorm is folded into each convolution at load time.
//!
//! Attribute paths mirror torchvision: `features.0.{0,1}` (stem conv/BN), `features.{1..15}.block.M.{0,1}`
//! (Conv2dNormActivation), `features.N.block.K.fc1/fc2` (SqueezeExcitation), `features.16.{0,1}`
//! (last conv), `classifier.0` / `classifier.3` (Linear; `.1` Hardswish and `.2` Dropout have no weights).

use super::{global_avg_pool, ConvBnConfig, FoldedConv};
use crate::models::classifier::INPUT_SIZE;
use crate::ops::{self, Activation, ConvParams};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// torchvision's `InvertedResidualConfig` (width_mult 1.0, dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvertedResidualConfig {
    pub input_channels: usize,
    pub kernel: usize,
    pub expanded_channels: usize,
    pub out_channels: usize,
    pub use_se: bool,
    /// Hardswish ("HS") rather than ReLU ("RE").
    pub use_hs: bool,
    pub stride: usize,
}

const fn bneck(
    input_channels: usize,
    kernel: usize,
    expanded_channels: usize,
    out_channels: usize,
    use_se: bool,
    use_hs: bool,
    stride: usize,
) -> InvertedResidualConfig {
    InvertedResidualConfig {
        input_channels,
        kernel,
        expanded_channels,
        out_channels,
        use_se,
        use_hs,
        stride,
    }
}

const RE: bool = false;
const HS: bool = true;

/// The 15 inverted-residual blocks of MobileNetV3-Large (torchvision's `_mobilenet_v3_conf`).
pub const MOBILENET_V3_LARGE_BLOCKS: [InvertedResidualConfig; 15] = [
    bneck(16, 3, 16, 16, false, RE, 1),
    bneck(16, 3, 64, 24, false, RE, 2),
    bneck(24, 3, 72, 24, false, RE, 1),
    bneck(24, 5, 72, 40, true, RE, 2),
    bneck(40, 5, 120, 40, true, RE, 1),
    bneck(40, 5, 120, 40, true, RE, 1),
    bneck(40, 3, 240, 80, false, HS, 2),
    bneck(80, 3, 200, 80, false, HS, 1),
    bneck(80, 3, 184, 80, false, HS, 1),
    bneck(80, 3, 184, 80, false, HS, 1),
    bneck(80, 3, 480, 112, true, HS, 1),
    bneck(112, 3, 672, 112, true, HS, 1),
    bneck(112, 5, 672, 160, true, HS, 2),
    bneck(160, 5, 960, 160, true, HS, 1),
    bneck(160, 5, 960, 160, true, HS, 1),
];

/// The whole architecture as data.
#[derive(Clone, Debug, PartialEq)]
pub struct MobileNetV3Config {
    pub blocks: &'static [InvertedResidualConfig],
    pub stem_channels: usize,
    /// Output channels of the last `Conv2dNormActivation` (6 x the last block's output).
    pub last_conv_channels: usize,
    /// Hidden width of the classifier.
    pub last_channel: usize,
    pub num_classes: usize,
    pub bn_eps: f64,
}

impl MobileNetV3Config {
    /// torchvision.models.mobilenet_v3_large.
    pub fn large() -> Self {
        Self {
            blocks: &MOBILENET_V3_LARGE_BLOCKS,
            stem_channels: 16,
            last_conv_channels: 960,
            last_channel: 1280,
            num_classes: 1000,
            bn_eps: 1e-3,
        }
    }

    fn stem(&self) -> ConvBnConfig {
        ConvBnConfig {
            in_channels: 3,
            out_channels: self.stem_channels,
            kernel: 3,
            stride: 2,
            groups: 1,
            eps: self.bn_eps,
            act: Activation::Hardswish,
        }
    }

    fn last_conv(&self) -> ConvBnConfig {
        let last_in = self
            .blocks
            .last()
            .map_or(self.stem_channels, |b| b.out_channels);
        ConvBnConfig {
            in_channels: last_in,
            out_channels: self.last_conv_channels,
            kernel: 1,
            stride: 1,
            groups: 1,
            eps: self.bn_eps,
            act: Activation::Hardswish,
        }
    }

    /// torchvision's state_dict keys and shapes (without `num_batches_tracked`), in its order.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        self.stem()
            .push_shapes("features.0.0", "features.0.1", &mut out);
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("features.{}.block", i + 1);
            for (m, layer) in block_layers(b, self.bn_eps).iter().enumerate() {
                match layer {
                    BlockLayer::Conv(c) => {
                        c.push_shapes(&format!("{p}.{m}.0"), &format!("{p}.{m}.1"), &mut out)
                    }
                    BlockLayer::Se { channels, squeeze } => {
                        out.push((
                            format!("{p}.{m}.fc1.weight"),
                            vec![*squeeze, *channels, 1, 1],
                        ));
                        out.push((format!("{p}.{m}.fc1.bias"), vec![*squeeze]));
                        out.push((
                            format!("{p}.{m}.fc2.weight"),
                            vec![*channels, *squeeze, 1, 1],
                        ));
                        out.push((format!("{p}.{m}.fc2.bias"), vec![*channels]));
                    }
                }
            }
        }
        let n = self.blocks.len() + 1;
        self.last_conv().push_shapes(
            &format!("features.{n}.0"),
            &format!("features.{n}.1"),
            &mut out,
        );
        out.push((
            "classifier.0.weight".into(),
            vec![self.last_channel, self.last_conv_channels],
        ));
        out.push(("classifier.0.bias".into(), vec![self.last_channel]));
        out.push((
            "classifier.3.weight".into(),
            vec![self.num_classes, self.last_channel],
        ));
        out.push(("classifier.3.bias".into(), vec![self.num_classes]));
        out
    }
}

/// torchvision's `_make_divisible(v, divisor)` (min_value = divisor).
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = ((v + d / 2.0) / d).floor() as usize * divisor;
    new_v = new_v.max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// The entries of an InvertedResidual's `block` Sequential, in order.
enum BlockLayer {
    Conv(ConvBnConfig),
    Se { channels: usize, squeeze: usize },
}

fn block_layers(cfg: &InvertedResidualConfig, eps: f64) -> Vec<BlockLayer> {
    let act = if cfg.use_hs {
        Activation::Hardswish
    } else {
        Activation::Relu
    };
    let exp = cfg.expanded_channels;
    let mut layers = Vec::with_capacity(4);
    if exp != cfg.input_channels {
        layers.push(BlockLayer::Conv(ConvBnConfig {
            in_channels: cfg.input_channels,
            out_channels: exp,
            kernel: 1,
            stride: 1,
            groups: 1,
            eps,
            act,
        }));
    }
    layers.push(BlockLayer::Conv(ConvBnConfig {
        in_channels: exp,
        out_channels: exp,
        kernel: cfg.kernel,
        stride: cfg.stride,
        groups: exp,
        eps,
        act,
    }));
    if cfg.use_se {
        layers.push(BlockLayer::Se {
            channels: exp,
            squeeze: make_divisible((exp / 4) as f64, 8),
        });
    }
    // project: no activation (the residual, when there is one, is fused into this conv)
    layers.push(BlockLayer::Conv(ConvBnConfig {
        in_channels: exp,
        out_channels: cfg.out_channels,
        kernel: 1,
        stride: 1,
        groups: 1,
        eps,
        act: Activation::None,
    }));
    layers
}

/// torchvision's `Conv2dNormActivation`: conv (`.0`) + BatchNorm (`.1`, folded) + activation.
#[derive(Clone, Debug)]
pub struct Conv2dNormActivation {
    conv: FoldedConv,
}

impl Conv2dNormActivation {
    pub fn new(vb: VarBuilder, cfg: &ConvBnConfig) -> Result<Self> {
        Ok(Self {
            conv: FoldedConv::new(vb.pp("0"), vb.pp("1"), cfg)?,
        })
    }

    /// See [`FoldedConv::pack_for_small_maps`] (`pixels`: the map this conv sees at imgclass's
    /// input size; only 1x1 convs on small maps are affected).
    pub fn pack_for_small_maps(self, pixels: usize) -> Result<Self> {
        Ok(Self {
            conv: self.conv.pack_for_small_maps(pixels)?,
        })
    }

    pub fn forward_with(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.conv.forward_with(x, residual)
    }

    /// `forward_with(x * hardsigmoid(s), residual)` without materialising the scaled input where
    /// the kernel can fold the scale in (`s`: a SqueezeExcitation's [`SqueezeExcitation::scale_logits`]).
    pub fn forward_se_scaled(
        &self,
        x: &Tensor,
        s: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.conv.forward_se_scaled(x, s, residual)
    }
}

impl Module for Conv2dNormActivation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

/// Squeeze-excite block configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqueezeExcitationConfig {
    pub channels: usize,
    pub squeeze_channels: usize,
}

/// torchvision's `SqueezeExcitation(scale_activation=Hardsigmoid)`:
/// `x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))`, fc1/fc2 being 1x1 convs with bias.
#[derive(Clone, Debug)]
pub struct SqueezeExcitation {
    fc1_w: Tensor,
    fc1_b: Tensor,
    fc2_w: Tensor,
    fc2_b: Tensor,
}

const POINTWISE: ConvParams = ConvParams {
    stride: 1,
    padding: 0,
    groups: 1,
};

impl SqueezeExcitation {
    pub fn new(vb: VarBuilder, cfg: &SqueezeExcitationConfig) -> Result<Self> {
        let (c, s) = (cfg.channels, cfg.squeeze_channels);
        Ok(Self {
            fc1_w: vb.pp("fc1").get((s, c, 1, 1), "weight")?,
            fc1_b: vb.pp("fc1").get(s, "bias")?,
            fc2_w: vb.pp("fc2").get((c, s, 1, 1), "weight")?,
            fc2_b: vb.pp("fc2").get(c, "bias")?,
        })
    }
}

impl SqueezeExcitation {
    /// `fc2(relu(fc1(avgpool(x))))` as `[N, C, 1, 1]`: the scale before its Hardsigmoid
    /// (torchvision's `_scale` without `scale_activation`). [`InvertedResidual`] hands it to the
    /// project conv, which applies `x * hardsigmoid(s)` as it reads `x`.
    pub fn scale_logits(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let pooled = global_avg_pool(x)?.reshape((n, c, 1, 1))?;
        let s = ops::conv2d(
            &pooled,
            &self.fc1_w,
            Some(&self.fc1_b),
            POINTWISE,
            Activation::Relu,
            None,
        )?;
        ops::conv2d(
            &s,
            &self.fc2_w,
            Some(&self.fc2_b),
            POINTWISE,
            Activation::None,
            None,
        )
    }
}

impl Module for SqueezeExcitation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // x * hardsigmoid(s), in one pass.
        ops::se_scale(x, &self.scale_logits(x)?)
    }
}

/// torchvision's `InvertedResidual`: [expand 1x1] → depthwise kxk → [SqueezeExcitation] → project 1x1
/// (+ input when stride 1 and channels unchanged).
#[derive(Clone, Debug)]
pub struct InvertedResidual {
    expand: Option<Conv2dNormActivation>,
    depthwise: Conv2dNormActivation,
    se: Option<SqueezeExcitation>,
    project: Conv2dNormActivation,
    use_res_connect: bool,
}

/// An InvertedResidualConfig with the network's BatchNorm epsilon.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InvertedResidualSpec {
    pub block: InvertedResidualConfig,
    pub bn_eps: f64,
    /// The side of the block's input feature map at imgclass's input size (the 1x1 convs on
    /// small maps also keep a packed weight: [`FoldedConv::pack_for_small_maps`]).
    pub side: usize,
}

impl InvertedResidual {
    pub fn new(vb: VarBuilder, spec: &InvertedResidualSpec) -> Result<Self> {
        let cfg = &spec.block;
        let vb = vb.pp("block");
        let (mut expand, mut depthwise, mut se, mut project) = (None, None, None, None);
        for (m, layer) in block_layers(cfg, spec.bn_eps).iter().enumerate() {
            match layer {
                BlockLayer::Se { channels, squeeze } => {
                    se = Some(SqueezeExcitation::new(
                        vb.pp(m),
                        &SqueezeExcitationConfig {
                            channels: *channels,
                            squeeze_channels: *squeeze,
                        },
                    )?)
                }
                BlockLayer::Conv(c) => {
                    let is_project = c.groups == 1 && c.act == Activation::None;
                    // The project conv sees the block's output map, the others its input map.
                    let side = if is_project {
                        spec.side.div_ceil(cfg.stride.max(1))
                    } else {
                        spec.side
                    };
                    let layer = Some(
                        Conv2dNormActivation::new(vb.pp(m), c)?.pack_for_small_maps(side * side)?,
                    );
                    if c.groups > 1 {
                        depthwise = layer;
                    } else if is_project {
                        project = layer;
                    } else {
                        expand = layer;
                    }
                }
            }
        }
        let (Some(depthwise), Some(project)) = (depthwise, project) else {
            candle_core::bail!("inverted residual block without depthwise or project conv");
        };
        Ok(Self {
            expand,
            depthwise,
            se,
            project,
            use_res_connect: cfg.stride == 1 && cfg.input_channels == cfg.out_channels,
        })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let residual = self.use_res_connect.then_some(x);
        // On large maps, expand → depthwise (→ project, unless a SqueezeExcitation sits between
        // them) in one pass over bands of rows, the same result as the layers one by one.
        let dw = &self.depthwise.conv;
        let fused = ops::inverted_residual(
            x,
            self.expand.as_ref().map(|e| e.conv.block_conv()),
            dw.block_conv(),
            dw.stride(),
            self.se.is_none().then(|| self.project.conv.block_conv()),
            residual.filter(|_| self.se.is_none()),
        )?;
        let y = match fused {
            Some(out) if self.se.is_none() => return Ok(out),
            Some(y) => y,
            None => {
                let y = match &self.expand {
                    Some(e) => e.forward(x)?,
                    None => x.clone(),
                };
                self.depthwise.forward(&y)?
            }
        };
        match &self.se {
            // SqueezeExcitation's scale folded into the project conv (same result as
            // `project(se.forward(y))`).
            Some(se) => self
                .project
                .forward_se_scaled(&y, &se.scale_logits(&y)?, residual),
            None => self.project.forward_with(&y, residual),
        }
    }
}

/// torchvision's `MobileNetV3`: features (stem, 15 InvertedResiduals, last conv), avgpool, classifier.
#[derive(Clone, Debug)]
pub struct MobileNetV3 {
    stem: Conv2dNormActivation,
    blocks: Vec<InvertedResidual>,
    last_conv: Conv2dNormActivation,
    fc1: LinearLayer,
    fc2: LinearLayer,
}

/// torch's `Linear` (weight `[out, in]`, bias `[out]`), run through [`ops::linear`] with the
/// following activation fused.
#[derive(Clone, Debug)]
struct LinearLayer {
    weight: Tensor,
    bias: Tensor,
}

impl LinearLayer {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?.contiguous()?,
            bias: vb.get(out_dim, "bias")?.contiguous()?,
        })
    }

    fn forward_with(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        ops::linear(x, &self.weight, Some(&self.bias), act)
    }
}

impl MobileNetV3 {
    pub fn new(vb: VarBuilder, cfg: &MobileNetV3Config) -> Result<Self> {
        let features = vb.pp("features");
        let stem = Conv2dNormActivation::new(features.pp(0), &cfg.stem())?;
        // The feature map's side at imgclass's input size, block by block.
        let mut side = INPUT_SIZE.div_ceil(cfg.stem().stride);
        let mut blocks = Vec::with_capacity(cfg.blocks.len());
        for (i, b) in cfg.blocks.iter().enumerate() {
            let spec = InvertedResidualSpec {
                block: *b,
                bn_eps: cfg.bn_eps,
                side,
            };
            blocks.push(InvertedResidual::new(features.pp(i + 1), &spec)?);
            side = side.div_ceil(b.stride.max(1));
        }
        let last_conv =
            Conv2dNormActivation::new(features.pp(cfg.blocks.len() + 1), &cfg.last_conv())?
                .pack_for_small_maps(side * side)?;
        let classifier = vb.pp("classifier");
        let fc1 = LinearLayer::new(classifier.pp(0), cfg.last_conv_channels, cfg.last_channel)?;
        let fc2 = LinearLayer::new(classifier.pp(3), cfg.last_channel, cfg.num_classes)?;
        Ok(Self {
            stem,
            blocks,
            last_conv,
            fc1,
            fc2,
        })
    }
}

impl MobileNetV3 {
    /// `features`, `avgpool` and the flattening of torchvision's forward: `[N, 960]`.
    pub fn forward_features(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(x)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        global_avg_pool(&self.last_conv.forward(&x)?)
    }

    /// `classifier` on pooled features `[N, 960]`: Linear, Hardswish (fused), Dropout (identity
    /// in eval), Linear.
    pub fn forward_classifier(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.fc1.forward_with(x, Activation::Hardswish)?;
        self.fc2.forward_with(&x, Activation::None)
    }
}

impl Module for MobileNetV3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_classifier(&self.forward_features(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        // _make_divisible(ch // 4, 8) of the SE blocks of MobileNetV3-Large
        assert_eq!(make_divisible(18.0, 8), 24);
        assert_eq!(make_divisible(30.0, 8), 32);
        assert_eq!(make_divisible(120.0, 8), 120);
        assert_eq!(make_divisible(168.0, 8), 168);
        assert_eq!(make_divisible(240.0, 8), 240);
        assert_eq!(make_divisible(3.0, 8), 8);
    }

    /// Exactly the 1x1 convs on 7x7 maps keep a channel-vector packed copy (where the CPU runs
    /// it): block 13's project conv, blocks 14 and 15's expand and project convs, the last conv.
    #[test]
    fn only_the_7x7_pointwise_convs_keep_a_packed_copy() {
        use crate::models::ModelKind;
        let tensors = crate::weights::synthetic::generate(ModelKind::MobilenetV3Large);
        let vb =
            VarBuilder::from_tensors(tensors, candle_core::DType::F32, &candle_core::Device::Cpu);
        let m = MobileNetV3::new(vb, &MobileNetV3Config::large()).unwrap();
        let packed = |c: &Conv2dNormActivation| c.conv.small_map.is_some();
        let mut got = Vec::new();
        for (i, b) in m.blocks.iter().enumerate() {
            assert!(!packed(&b.depthwise), "block {i} depthwise");
            if b.expand.as_ref().is_some_and(packed) {
                got.push(format!("{i}.expand"));
            }
            if packed(&b.project) {
                got.push(format!("{i}.project"));
            }
        }
        if packed(&m.last_conv) {
            got.push("last".to_string());
        }
        let supported =
            ops::PointwiseWeight::supported(160, ops::packed1x1::Layout::ChannelVectors)
                && ops::pack1x1_enabled();
        let want: Vec<&str> = if supported {
            vec![
                "12.project",
                "13.expand",
                "13.project",
                "14.expand",
                "14.project",
                "last",
            ]
        } else {
            Vec::new()
        };
        assert_eq!(got, want);
    }
}
