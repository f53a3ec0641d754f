//! Resize + center crop of a JPEG computed directly from its low-frequency DCT coefficients.
//!
//! PIL's antialiased bilinear resize is linear and separable: each output pixel is
//! `Σx Σy wx(x)·wy(y)·p(x, y)` with Pillow's normalised triangle weights. libjpeg's pixels are a
//! linear function of the coefficients too (inverse DCT per 8×8 block, "fancy" triangle
//! upsampling of subsampled chroma, then the YCbCr → RGB matrix), up to rounding and clamping.
//! So each output pixel is computed exactly from the coefficients by projecting the weights
//! onto the DCT basis: for the block at column `b` and horizontal frequency `u`,
//! `P(b, u) = Σk wc(8b + k)·c(u)/2·cos((2k + 1)uπ/16)`, where `wc` are the weights carried
//! through the chroma upsampling onto component samples. A triangle spanning 26-46 pixels
//! (12-42 MP photos shrunk to 232) is nearly linear over a block, so its projection onto high
//! frequencies is tiny: keeping the (u, v) with u + v <= 2 loses little (measured in the README).
//! What is not reproduced: PIL's intermediate u8 rounding and libjpeg's clamping of pixels that
//! overshoot 0..255 (ringing at hard edges).

use super::jpeg_dc::{DctImage, KU, NZ, ZZ_UV};
use super::resample::pillow_weights;
use image::metadata::Orientation;
use std::ops::Range;

/// One axis of the (oriented) output: the resized length, which resized pixels to compute, and
/// whether this axis runs backwards on the raw (stored) image.
#[derive(Clone, Debug)]
pub(crate) struct OutAxis {
    pub size: usize,
    pub range: Range<usize>,
    pub reversed: bool,
}

/// Pillow's weights of each output pixel of an axis, projected on the DCT basis of the blocks of
/// one component: `p[o * stride + bi * KU + u]` for blocks `b0[o] + bi`, `bi < nb[o]`.
struct Proj {
    b0: Vec<usize>,
    nb: Vec<usize>,
    stride: usize,
    p: Vec<f32>,
    /// Blocks read by any output pixel.
    span: Range<usize>,
}

/// `c(u)/2·cos((2k + 1)uπ/16)`: sample `k` of the 1-D inverse DCT basis function `u`.
fn basis() -> [[f64; KU]; 8] {
    let mut b = [[0f64; KU]; 8];
    for (k, row) in b.iter_mut().enumerate() {
        for (u, v) in row.iter_mut().enumerate() {
            let c = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            *v = c / 2.0 * ((2 * k + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos();
        }
    }
    b
}

/// Project the weights of `ax` (an axis of `full` pixels) onto a component with `n_c` samples
/// along it, subsampled by `f` (1 or 2; 2 = libjpeg's fancy upsampling: each output pixel is
/// 3/4 of its own sample and 1/4 of the nearest other one, edges replicated).
fn project(full: usize, ax: &OutAxis, f: usize, n_c: usize) -> Proj {
    let basis = basis();
    let mut per: Vec<(usize, Vec<f64>)> = Vec::with_capacity(ax.range.len());
    for o in ax.range.clone() {
        let (xmin, w) = pillow_weights(full, ax.size, o);
        if w.is_empty() || n_c == 0 {
            per.push((0, Vec::new()));
            continue;
        }
        // Raw pixel range and component sample range touched.
        let (lo, hi) = if ax.reversed {
            (full - xmin - w.len(), full - xmin)
        } else {
            (xmin, xmin + w.len())
        };
        let s_lo = (lo / f).saturating_sub(1);
        let s_hi = ((hi - 1) / f + 2).min(n_c);
        let mut wc = vec![0f64; s_hi - s_lo];
        for (j, &wx) in w.iter().enumerate() {
            let x = if ax.reversed {
                full - 1 - (xmin + j)
            } else {
                xmin + j
            };
            if f == 1 {
                wc[x - s_lo] += wx;
            } else {
                let s = x / f;
                let t = if x.is_multiple_of(2) {
                    s.saturating_sub(1)
                } else {
                    (s + 1).min(n_c - 1)
                };
                wc[s - s_lo] += 0.75 * wx;
                wc[t - s_lo] += 0.25 * wx;
            }
        }
        let b0 = s_lo / 8;
        let b1 = (s_hi - 1) / 8 + 1;
        let mut p = vec![0f64; (b1 - b0) * KU];
        for (j, &v) in wc.iter().enumerate() {
            if v == 0.0 {
                continue;
            }
            let s = s_lo + j;
            let (bi, k) = (s / 8 - b0, s % 8);
            for u in 0..KU {
                p[bi * KU + u] += v * basis[k][u];
            }
        }
        per.push((b0, p));
    }
    let stride = per.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    let mut out = Proj {
        b0: Vec::with_capacity(per.len()),
        nb: Vec::with_capacity(per.len()),
        stride,
        p: vec![0f32; per.len() * stride],
        span: 0..0,
    };
    let (mut lo, mut hi) = (usize::MAX, 0usize);
    for (o, (b0, p)) in per.iter().enumerate() {
        let nb = p.len() / KU;
        out.b0.push(*b0);
        out.nb.push(nb);
        for (d, &v) in out.p[o * stride..].iter_mut().zip(p) {
            *d = v as f32;
        }
        if nb > 0 {
            lo = lo.min(*b0);
            hi = hi.max(b0 + nb);
        }
    }
    out.span = if lo < hi { lo..hi } else { 0..0 };
    out
}

/// One component resized: `vp.nb.len()` rows × `hp.nb.len()` columns of sample values (level
/// shift included, not rounded). `blocks`: [`NZ`] coefficients per block, `bw` blocks per row.
#[inline(never)]
fn resize_component(blocks: &[i32], bw: usize, deq: &[f32; NZ], hp: &Proj, vp: &Proj) -> Vec<f32> {
    let nh = hp.nb.len();
    let nv = vp.nb.len();
    let rows = vp.span.clone();
    let cols = hp.span.clone();
    // Pass 1 (horizontal): t[(by - rows.start) * KU + v][o] for each block row and vertical
    // frequency v.
    let mut t = vec![0f32; rows.len() * KU * nh];
    let mut rowf = vec![0f32; cols.len() * NZ];
    for by in rows.clone() {
        let src = &blocks[(by * bw + cols.start) * NZ..(by * bw + cols.end) * NZ];
        for (d, c) in rowf.chunks_exact_mut(NZ).zip(src.chunks_exact(NZ)) {
            for z in 0..NZ {
                d[z] = c[z] as f32 * deq[z];
            }
        }
        let tr = &mut t[(by - rows.start) * KU * nh..(by - rows.start + 1) * KU * nh];
        for o in 0..nh {
            let mut acc = [0f32; KU];
            let nb = hp.nb[o];
            let p = &hp.p[o * hp.stride..o * hp.stride + nb * KU];
            let f0 = (hp.b0[o] - cols.start) * NZ;
            let fs = &rowf[f0..f0 + nb * NZ];
            for (f, pb) in fs.chunks_exact(NZ).zip(p.chunks_exact(KU)) {
                let (f, pb): (&[f32; NZ], &[f32; KU]) = match (f.try_into(), pb.try_into()) {
                    (Ok(f), Ok(pb)) => (f, pb),
                    _ => continue,
                };
                for (z, &(u, v)) in ZZ_UV.iter().enumerate() {
                    acc[v] += f[z] * pb[u];
                }
            }
            for (v, a) in acc.iter().enumerate() {
                tr[v * nh + o] = *a;
            }
        }
    }
    // Pass 2 (vertical).
    let mut out = vec![128f32; nv * nh];
    for (o, orow) in out.chunks_exact_mut(nh.max(1)).enumerate().take(nv) {
        let p = &vp.p[o * vp.stride..];
        for bi in 0..vp.nb[o] {
            let by = vp.b0[o] + bi;
            for v in 0..KU {
                let c = p[bi * KU + v];
                let tr =
                    &t[((by - rows.start) * KU + v) * nh..((by - rows.start) * KU + v + 1) * nh];
                for (d, &x) in orow.iter_mut().zip(tr) {
                    *d += c * x;
                }
            }
        }
    }
    out
}

/// How an EXIF orientation maps the oriented axes onto the raw ones:
/// `(transposed, oriented x reversed, oriented y reversed)`.
fn orientation_axes(o: Orientation) -> (bool, bool, bool) {
    match o {
        Orientation::NoTransforms => (false, false, false),
        Orientation::FlipHorizontal => (false, true, false),
        Orientation::FlipVertical => (false, false, true),
        Orientation::Rotate180 => (false, true, true),
        Orientation::Rotate90 => (true, true, false),
        Orientation::Rotate270 => (true, false, true),
        Orientation::Rotate90FlipH => (true, false, false),
        Orientation::Rotate270FlipH => (true, true, true),
    }
}

/// Dimensions of the image once its EXIF orientation is applied.
pub(crate) fn oriented_size(img: &DctImage) -> (u32, u32) {
    let (w, h) = (img.frame.width, img.frame.height);
    if orientation_axes(img.orientation).0 {
        (h, w)
    } else {
        (w, h)
    }
}

/// The window `x.range` × `y.range` (oriented coordinates) of PIL's bilinear resize of the
/// oriented image to `x.size` × `y.size`, as row-major RGB8. `x.reversed`/`y.reversed` are
/// ignored (taken from the orientation).
pub(crate) fn resize_window(img: &DctImage, x: &OutAxis, y: &OutAxis) -> Vec<u8> {
    let (swap, rev_x, rev_y) = orientation_axes(img.orientation);
    let ox = OutAxis {
        reversed: rev_x,
        ..x.clone()
    };
    let oy = OutAxis {
        reversed: rev_y,
        ..y.clone()
    };
    let (raw_x, raw_y) = if swap { (&oy, &ox) } else { (&ox, &oy) };
    let f = &img.frame;
    let (fw, fh) = (f.width as usize, f.height as usize);
    let planes: Vec<Vec<f32>> = f
        .comps
        .iter()
        .enumerate()
        .map(|(ci, c)| {
            let (fx, fy) = (f.hmax / c.h, f.vmax / c.v);
            let ncx = (fw * c.h).div_ceil(f.hmax);
            let ncy = (fh * c.v).div_ceil(f.vmax);
            let hp = project(fw, raw_x, fx, ncx);
            let vp = project(fh, raw_y, fy, ncy);
            resize_component(&img.blocks[ci], c.bw, &img.deq[ci], &hp, &vp)
        })
        .collect();
    let (nx, ny) = (raw_x.range.len(), raw_y.range.len());
    let n = nx * ny;
    let mut rgb = vec![0f32; n * 3];
    if planes.len() == 1 {
        for (o, &g) in rgb.chunks_exact_mut(3).zip(&planes[0]) {
            o.fill(g);
        }
    } else {
        let ids: Vec<u8> = f.comps.iter().map(|c| c.id).collect();
        let is_rgb = img.adobe == Some(0) || (img.adobe.is_none() && ids == [b'R', b'G', b'B']);
        for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
            let (a, b, c) = (planes[0][i], planes[1][i], planes[2][i]);
            if is_rgb {
                o.copy_from_slice(&[a, b, c]);
            } else {
                // libjpeg's jdcolor.c YCbCr → RGB.
                let (cb, cr) = (b - 128.0, c - 128.0);
                o[0] = a + 1.402 * cr;
                o[1] = a - 0.344_14 * cb - 0.714_14 * cr;
                o[2] = a + 1.772 * cb;
            }
        }
    }
    // Round half up; `as` truncates, which is floor once clamped to be non-negative.
    let q = |v: f32| (v + 0.5).clamp(0.0, 255.0) as u8;
    let (lx, ly) = (x.range.len(), y.range.len());
    let mut out = vec![0u8; lx * ly * 3];
    for j in 0..ly {
        for i in 0..lx {
            // Plane index (raw y row, raw x column) of oriented pixel (i, j).
            let src = if swap { i * nx + j } else { j * nx + i };
            for ch in 0..3 {
                out[(j * lx + i) * 3 + ch] = q(rgb[src * 3 + ch]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::jpeg_dc::parse_sof;

    /// A synthetic image with random low-frequency coefficients (only those kept, so the
    /// projection must be exact up to f32 rounding).
    fn synthetic(w: u16, h: u16, sampling: &[u8], seed: u64, o: Orientation) -> DctImage {
        let mut sof = vec![8, (h >> 8) as u8, h as u8, (w >> 8) as u8, w as u8];
        sof.push(sampling.len() as u8);
        for (i, &s) in sampling.iter().enumerate() {
            sof.extend_from_slice(&[i as u8 + 1, s, 0]);
        }
        let frame = parse_sof(&sof, false).unwrap();
        let mut x = seed;
        let mut rnd = move |lim: i32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (2 * lim as u64 + 1)) as i32 - lim
        };
        let blocks = frame
            .comps
            .iter()
            .map(|c| {
                (0..c.bw * c.bh * NZ)
                    .map(|i| if i % NZ == 0 { rnd(300) } else { rnd(60) })
                    .collect()
            })
            .collect();
        let deq = frame
            .comps
            .iter()
            .map(|_| [1.5, 1.0, 1.0, 1.5, 1.5, 1.5])
            .collect();
        DctImage {
            frame,
            blocks,
            deq,
            adobe: None,
            orientation: o,
        }
    }

    /// Full-resolution f64 RGB (no rounding, no clamping) by the textbook route: inverse DCT of
    /// each block, fancy upsampling, YCbCr → RGB; then the EXIF orientation.
    fn reference_pixels(img: &DctImage) -> (usize, usize, Vec<f32>) {
        let f = &img.frame;
        let (w, h) = (f.width as usize, f.height as usize);
        let b = basis();
        let planes: Vec<Vec<f64>> = f
            .comps
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let (cw, ch) = ((w * c.h).div_ceil(f.hmax), (h * c.v).div_ceil(f.vmax));
                let sample = |sx: usize, sy: usize| -> f64 {
                    let blk = &img.blocks[ci][((sy / 8) * c.bw + sx / 8) * NZ..][..NZ];
                    128.0
                        + (0..NZ)
                            .map(|z| {
                                let (u, v) = ZZ_UV[z];
                                f64::from(blk[z])
                                    * f64::from(img.deq[ci][z])
                                    * b[sx % 8][u]
                                    * b[sy % 8][v]
                            })
                            .sum::<f64>()
                };
                let up = |x: usize, n: usize, fac: usize| -> [(usize, f64); 2] {
                    if fac == 1 {
                        [(x, 1.0), (x, 0.0)]
                    } else {
                        let s = x / 2;
                        let t = if x.is_multiple_of(2) {
                            s.saturating_sub(1)
                        } else {
                            (s + 1).min(n - 1)
                        };
                        [(s, 0.75), (t, 0.25)]
                    }
                };
                let mut p = vec![0f64; w * h];
                for y in 0..h {
                    for x in 0..w {
                        let mut acc = 0.0;
                        for (sy, wy) in up(y, ch, f.vmax / c.v) {
                            for (sx, wx) in up(x, cw, f.hmax / c.h) {
                                if wx * wy != 0.0 {
                                    acc += wx * wy * sample(sx, sy);
                                }
                            }
                        }
                        p[y * w + x] = acc;
                    }
                }
                p
            })
            .collect();
        let mut rgb = vec![0f32; w * h * 3];
        for i in 0..w * h {
            let px = if planes.len() == 1 {
                [planes[0][i]; 3]
            } else {
                let (y, cb, cr) = (planes[0][i], planes[1][i] - 128.0, planes[2][i] - 128.0);
                [
                    y + 1.402 * cr,
                    y - 0.34414 * cb - 0.71414 * cr,
                    y + 1.772 * cb,
                ]
            };
            for c in 0..3 {
                rgb[i * 3 + c] = px[c] as f32;
            }
        }
        let mut d = image::DynamicImage::ImageRgb32F(
            image::Rgb32FImage::from_raw(w as u32, h as u32, rgb).unwrap(),
        );
        d.apply_orientation(img.orientation);
        let d = d.into_rgb32f();
        (d.width() as usize, d.height() as usize, d.into_raw())
    }

    #[test]
    fn projection_equals_resizing_the_reconstructed_pixels() {
        let all = [
            Orientation::NoTransforms,
            Orientation::FlipHorizontal,
            Orientation::FlipVertical,
            Orientation::Rotate180,
            Orientation::Rotate90,
            Orientation::Rotate270,
            Orientation::Rotate90FlipH,
            Orientation::Rotate270FlipH,
        ];
        let layouts: [&[u8]; 4] = [
            &[0x22, 0x11, 0x11],
            &[0x11],
            &[0x21, 0x11, 0x11],
            &[0x11; 3],
        ];
        for (li, layout) in layouts.iter().enumerate() {
            for (oi, &o) in all.iter().enumerate() {
                let img = synthetic(203, 141, layout, 77 + (li * 8 + oi) as u64, o);
                let (w, h, px) = reference_pixels(&img);
                let (ow, oh) = oriented_size(&img);
                assert_eq!((ow as usize, oh as usize), (w, h));
                // 17×13 output, window of 11×9 starting at (3, 2).
                let (rw, rh) = (17usize, 13usize);
                let x = OutAxis {
                    size: rw,
                    range: 3..14,
                    reversed: false,
                };
                let y = OutAxis {
                    size: rh,
                    range: 2..11,
                    reversed: false,
                };
                let got = resize_window(&img, &x, &y);
                let (mut off, mut n) = (0usize, 0usize);
                for (j, oy) in y.range.clone().enumerate() {
                    let (ymin, wy) = pillow_weights(h, rh, oy);
                    for (i, ox) in x.range.clone().enumerate() {
                        let (xmin, wx) = pillow_weights(w, rw, ox);
                        for c in 0..3 {
                            let mut v = 0f64;
                            for (a, &ky) in wy.iter().enumerate() {
                                for (b, &kx) in wx.iter().enumerate() {
                                    let p = px[((ymin + a) * w + xmin + b) * 3 + c];
                                    v += ky * kx * f64::from(p);
                                }
                            }
                            let want = (v + 0.5).floor().clamp(0.0, 255.0);
                            let g = f64::from(got[(j * x.range.len() + i) * 3 + c]);
                            // Only values within f32 rounding of a .5 boundary may differ.
                            assert!((g - want).abs() <= 1.0, "{layout:?} {o:?}: {g} vs {v}");
                            if g != want {
                                off += 1;
                                let frac = v - v.floor();
                                assert!((frac - 0.5).abs() < 1e-3, "{layout:?} {o:?}: {g} vs {v}");
                            }
                            n += 1;
                        }
                    }
                }
                assert!(off * 100 <= n, "{layout:?} {o:?}: {off} of {n} differ");
            }
        }
    }
}
