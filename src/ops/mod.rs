//! Fast CPU kernels (owner: performance). The only place `unsafe` is allowed.
//!
//! Models call convolutions ONLY through [`conv2d`], so a faster kernel can be swapped in here without
//! touching the model code. Each fast kernel keeps a reference test against the plain candle op.

use candle_core::{Result, Tensor};

/// Activation fused after a convolution (and after the residual add, when there is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Hardswish,
}

/// Geometry of a 2-D convolution (dilation is always 1 in our models).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

/// `act(conv2d(x, w) + b [+ residual])` for `x: [N,C,H,W]`, `w: [O, C/groups, K, K]`, `b: [O]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: ConvParams,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    reference::conv2d(x, w, b, p, act, residual)
}

/// Plain candle implementations: the reference every fast kernel is tested against.
pub mod reference {
    use super::{Activation, ConvParams};
    use candle_core::{Result, Tensor};

    pub fn conv2d(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: ConvParams,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut y = x.conv2d(w, p.padding, p.stride, 1, p.groups)?;
        if let Some(b) = b {
            y = y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?;
        }
        if let Some(r) = residual {
            y = (y + r)?;
        }
        activation(&y, act)
    }

    pub fn activation(y: &Tensor, act: Activation) -> Result<Tensor> {
        match act {
            Activation::None => Ok(y.clone()),
            Activation::Relu => y.relu(),
            // x * relu6(x + 3) / 6, as torch.nn.Hardswish
            Activation::Hardswish => y.mul(&((y + 3.0)?.clamp(0f32, 6f32)? / 6.0)?),
        }
    }
}
