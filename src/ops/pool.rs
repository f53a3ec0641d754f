//! The non-convolution ops of the two networks, on rayon (not candle's elementwise pool, which
//! competes with rayon for the cores), with the plain candle ops as fallback and reference:
//! - [`global_avg_pool`]: `[N,C,H,W] -> [N,C]` (ResNet head, SqueezeExcitation, MobileNetV3 head);
//! - [`se_scale`]: `x * hardsigmoid(s)` broadcast over H, W (MobileNetV3's SqueezeExcitation);
//! - [`max_pool2d`]: `MaxPool2d(k, stride, padding)` with PyTorch's padding semantics (ResNet stem).

use super::cpu::F32View;
use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Calls on fewer elements than this run on the calling thread (cheaper than a rayon region).
const SERIAL_ELEMS: usize = 1 << 18;
/// [`se_scale`] below this many elements runs on the calling thread (it streams twice the bytes
/// of a pooling call per element, so it splits earlier).
const SE_SERIAL_ELEMS: usize = 1 << 16;

fn cpu_f32(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu) && t.rank() == 4
}

/// Global average pooling `[N,C,H,W] -> [N,C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    if !cpu_f32(x) {
        return reference::global_avg_pool(x);
    }
    let (n, c, h, w) = x.dims4()?;
    let x = x.contiguous()?;
    let xv = F32View::new(&x)?;
    let xs = xv.slice()?;
    let hw = h * w;
    let mut out = vec![0f32; n * c];
    let mean = |(i, o): (usize, &mut f32)| *o = plane_sum(&xs[i * hw..][..hw]) / hw as f32;
    if hw == 0 {
    } else if n * c * hw < SERIAL_ELEMS {
        out.iter_mut().enumerate().for_each(mean);
    } else {
        out.par_iter_mut()
            .with_min_len((SERIAL_ELEMS / 4 / hw).max(1))
            .enumerate()
            .for_each(mean);
    }
    Tensor::from_vec(out, (n, c), &Device::Cpu)
}

/// Sum of a plane with 16 independent partial sums (vectorised; a plain `iter().sum()` is one
/// serial chain of dependent additions, ~10x slower on MobileNetV3's SqueezeExcitation pools).
fn plane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += *x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x * hardsigmoid(s)` for `x: [N,C,H,W]` and `s: [N,C]` or `[N,C,1,1]`, hardsigmoid being
/// torch's `relu6(s + 3) / 6`.
pub fn se_scale(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if s.elem_count() != n * c || !(s.dims() == [n, c] || s.dims() == [n, c, 1, 1]) {
        candle_core::bail!(
            "se_scale: scale shape {:?} for input {:?}",
            s.dims(),
            x.dims()
        );
    }
    if !cpu_f32(x) || s.dtype() != DType::F32 || !matches!(s.device(), Device::Cpu) {
        return reference::se_scale(x, s);
    }
    let (x, s) = (x.contiguous()?, s.contiguous()?);
    let (xv, sv) = (F32View::new(&x)?, F32View::new(&s)?);
    let (xs, ss) = (xv.slice()?, sv.slice()?);
    let hw = h * w;
    let mut out = Vec::with_capacity(n * c * hw);
    if hw > 0 && n * c * hw < SE_SERIAL_ELEMS {
        // Small (MobileNetV3's 7x7 and 14x14 maps at batch 1): on the calling thread, no zero fill.
        for (i, plane) in xs.chunks_exact(hw).take(n * c).enumerate() {
            let g = (ss[i] + 3.0).clamp(0.0, 6.0) / 6.0;
            out.extend(plane.iter().map(|v| *v * g));
        }
    } else if hw > 0 {
        out.resize(n * c * hw, 0f32);
        out.par_chunks_mut(hw)
            .with_min_len((4096 / hw).max(1))
            .enumerate()
            .for_each(|(i, o)| {
                let g = (ss[i] + 3.0).clamp(0.0, 6.0) / 6.0;
                for (d, v) in o.iter_mut().zip(&xs[i * hw..][..hw]) {
                    *d = *v * g;
                }
            });
    }
    Tensor::from_vec(out, (n, c, h, w), &Device::Cpu)
}

/// `MaxPool2d(kernel, stride, padding)` as PyTorch: padded positions never win (they are -inf).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if kernel == 0 || stride == 0 || padding * 2 > kernel {
        candle_core::bail!("max_pool2d: kernel {kernel}, stride {stride}, padding {padding}");
    }
    if !cpu_f32(x) {
        return reference::max_pool2d(x, kernel, stride, padding);
    }
    let (n, c, h, w) = x.dims4()?;
    if h + 2 * padding < kernel || w + 2 * padding < kernel {
        candle_core::bail!("max_pool2d: input {h}x{w} smaller than the kernel {kernel}");
    }
    let oh = (h + 2 * padding - kernel) / stride + 1;
    let ow = (w + 2 * padding - kernel) / stride + 1;
    let x = x.contiguous()?;
    let xv = F32View::new(&x)?;
    let xs = xv.slice()?;
    let mut out = vec![0f32; n * c * oh * ow];
    // Per output row: the column-wise max of its input rows (a vectorised pass over whole rows)
    // into `cm`, which holds -inf in the padding columns (`cm[pad + x]` is column `x`); `cm` is
    // then split into its `stride` phases (`ph[f][q] = cm[q * stride + f]`), so that window tap
    // `j` of every output column is one contiguous run, `ph[j % stride][ox + j / stride]`, and
    // the max over the window is `kernel` vectorised passes over the output row (it was a scalar
    // fold per output: 0.45 ms of Wide ResNet's stem at batch 1).
    let nph = ow + (kernel - 1) / stride;
    let cm_len = (nph * stride).max(padding + w);
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(i, o)| {
        let plane = &xs[i * h * w..][..h * w];
        let mut cm = vec![f32::NEG_INFINITY; cm_len];
        let mut ph = vec![f32::NEG_INFINITY; stride * nph];
        for (oy, orow) in o.chunks_exact_mut(ow).enumerate() {
            let y0 = (oy * stride).saturating_sub(padding);
            let y1 = (oy * stride + kernel - padding).min(h);
            let cols = &mut cm[padding..padding + w];
            cols.copy_from_slice(&plane[y0 * w..][..w]);
            for row in plane[(y0 + 1) * w..y1 * w].chunks_exact(w) {
                for (m, v) in cols.iter_mut().zip(row) {
                    *m = m.max(*v);
                }
            }
            if stride == 2 {
                // The common case (ResNet's stem), in a form that vectorises.
                let (even, odd) = ph.split_at_mut(nph);
                for ((e, o), pair) in even.iter_mut().zip(odd).zip(cm.chunks_exact(2)) {
                    (*e, *o) = (pair[0], pair[1]);
                }
            } else {
                for (f, phase) in ph.chunks_exact_mut(nph).enumerate() {
                    for (q, d) in phase.iter_mut().enumerate() {
                        *d = cm[q * stride + f];
                    }
                }
            }
            orow.copy_from_slice(&ph[..ow]);
            for j in 1..kernel {
                let tap = &ph[(j % stride) * nph + j / stride..][..ow];
                for (d, v) in orow.iter_mut().zip(tap) {
                    *d = d.max(*v);
                }
            }
        }
    });
    Tensor::from_vec(out, (n, c, oh, ow), &Device::Cpu)
}

/// Plain candle versions (reference and fallback).
pub mod reference {
    use candle_core::{Result, Tensor};

    pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
        x.flatten_from(2)?.mean(2)
    }

    pub fn se_scale(x: &Tensor, s: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let g = ((s.reshape((n, c, 1, 1))? + 3.0)?.clamp(0f32, 6f32)? / 6.0)?;
        x.broadcast_mul(&g)
    }

    pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        let x = if padding > 0 {
            // -inf padding: a padded position never wins, as in PyTorch.
            let (n, c, h, w) = x.dims4()?;
            let ninf = |shape: (usize, usize, usize, usize)| {
                Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())
            };
            let side = ninf((n, c, h, padding))?;
            let x = Tensor::cat(&[&side, x, &side], 3)?;
            let top = ninf((n, c, padding, w + 2 * padding))?;
            Tensor::cat(&[&top, &x, &top], 2)?
        } else {
            x.clone()
        };
        x.max_pool2d_with_stride(kernel, stride)
    }
}
