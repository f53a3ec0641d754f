//! Dense (`groups == 1`) convolution as GEMM through the `gemm` crate (the one candle uses, here
//! with its AVX-512 kernels compiled in; the instruction set is chosen at run time).
//!
//! `Y[O, P] = W[O, C*K*K] x cols[C*K*K, P]` per image (P = OH*OW):
//! - 1x1, stride 1, no padding: `cols` is the input itself (no copy);
//! - anything else: `cols` is built by im2col (for a strided 1x1 that is just the subsampling);
//! - small spatial sizes: several images share one GEMM (`cols` is `[C*K*K, nb*P]`), which keeps
//!   the GEMM large enough to run both cores at full speed on 14x14 and 7x7 layers.
//!
//! The epilogue (bias, residual, activation) is one parallel pass over the GEMM output.

use super::cpu::{epilogue, epilogue_inplace};
use super::winograd::with_scratch;
use super::{Activation, Geometry};
use gemm::Parallelism;
use rayon::prelude::*;

/// Largest im2col buffer, in floats (16 MiB), used to decide how many images share one GEMM.
const COLS_BUDGET: usize = 4 << 20;
/// A 1x1 stride-1 convolution with at least this many output pixels runs per image, in place.
const DIRECT_MIN_PIXELS: usize = 784;

pub(crate) fn dense(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
) -> Vec<f32> {
    let p = g.oh * g.ow;
    let kdim = g.c * g.k * g.k;
    let o = g.o;
    let direct = g.k == 1 && g.stride == 1 && g.pad == 0;
    let nb = if direct && p >= DIRECT_MIN_PIXELS {
        1
    } else {
        (COLS_BUDGET / (kdim * p).max(1)).clamp(1, g.n.max(1))
    };
    let in_direct = direct && nb == 1;
    let mut out = vec![0f32; g.n * o * p];
    // im2col writes every element of `cols` and the GEMM every element of `tmp`: both live in a
    // pooled scratch buffer reused across calls (no zeroing, no page faults per call).
    let cols_len = if in_direct { 0 } else { kdim * nb * p };
    let tmp_len = if nb > 1 { o * nb * p } else { 0 };
    with_scratch(cols_len + tmp_len, |scratch| {
        let (cols, tmp) = scratch.split_at_mut(cols_len);
        gemm_chunks(x, wt, bias, res, act, g, nb, in_direct, cols, tmp, &mut out);
    });
    out
}

/// Most images per im2col matrix of [`im2col_cv`] (the scratch stays bounded at any batch size:
/// 14.5 MB for Wide ResNet's 7x7 layers).
const CV_IMAGES: usize = 8;

/// `act(conv(x, w) + bias)` with `wp` the channel-vector panels of the `[O, C K K]` weight
/// ([`super::packed1x1::KxkCvWeight`]): per group of up to [`CV_IMAGES`] images, im2col into one
/// pooled scratch matrix (`[C K K, nb P]`), then [`super::packed1x1::conv1x1_cv_deep`] on it.
pub(crate) fn im2col_cv(
    x: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
) -> Vec<f32> {
    let p = g.oh * g.ow;
    let kdim = g.c * g.k * g.k;
    let mut out = Vec::with_capacity(g.n * g.o * p);
    if g.n * g.o * p == 0 {
        return out;
    }
    let nb_max = g.n.min(CV_IMAGES);
    with_scratch(kdim * nb_max * p, |scratch| {
        for i0 in (0..g.n).step_by(nb_max) {
            let nb = nb_max.min(g.n - i0);
            let cols = &mut scratch[..kdim * nb * p];
            im2col(x, g, i0, nb, cols);
            let part =
                super::packed1x1::conv1x1_cv_deep(cols, nb * p, p, wp, bias, act, nb, kdim, g.o, p);
            out.extend_from_slice(&part);
        }
    });
    out
}

#[allow(clippy::too_many_arguments)]
fn gemm_chunks(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
    nb: usize,
    in_direct: bool,
    cols: &mut [f32],
    tmp: &mut [f32],
    out: &mut [f32],
) {
    let p = g.oh * g.ow;
    let kdim = g.c * g.k * g.k;
    let o = g.o;
    let min_len = (4096 / p.max(1)).max(1);
    for i0 in (0..g.n).step_by(nb) {
        let nbi = nb.min(g.n - i0);
        let width = nbi * p;
        let rhs: &[f32] = if in_direct {
            &x[i0 * g.c * p..][..g.c * p]
        } else {
            let c = &mut cols[..kdim * width];
            im2col(x, g, i0, nbi, c);
            c
        };
        if nbi == 1 {
            let dst = &mut out[i0 * o * p..][..o * p];
            matmul(o, width, kdim, wt, rhs, dst);
            dst.par_chunks_mut(p)
                .with_min_len(min_len)
                .enumerate()
                .for_each(|(oc, row)| {
                    let b = bias.map_or(0.0, |b| b[oc]);
                    let r = res.map(|r| &r[(i0 * o + oc) * p..][..p]);
                    epilogue_inplace(row, b, r, act);
                });
        } else {
            let t = &mut tmp[..o * width];
            matmul(o, width, kdim, wt, rhs, t);
            let t = &*t;
            out[i0 * o * p..][..nbi * o * p]
                .par_chunks_mut(p)
                .with_min_len(min_len)
                .enumerate()
                .for_each(|(idx, row)| {
                    let (j, oc) = (idx / o, idx % o);
                    let b = bias.map_or(0.0, |b| b[oc]);
                    let r = res.map(|r| &r[((i0 + j) * o + oc) * p..][..p]);
                    epilogue(row, &t[oc * width + j * p..][..p], b, r, act);
                });
        }
    }
}

/// `cols[(c*K + kh)*K + kw, j*P + oy*OW + ox] = x[i0 + j, c, oy*s + kh - pad, ox*s + kw - pad]`
/// (zero outside the input).
fn im2col(x: &[f32], g: &Geometry, i0: usize, nb: usize, cols: &mut [f32]) {
    let p = g.oh * g.ow;
    let kk = g.k * g.k;
    let plane = g.h * g.w;
    let min_len = (16384 / (nb * p).max(1)).max(1);
    cols.par_chunks_mut(nb * p)
        .with_min_len(min_len)
        .enumerate()
        .for_each(|(r, row)| {
            let (c, kh, kw) = (r / kk, (r / g.k) % g.k, r % g.k);
            for j in 0..nb {
                let src = &x[((i0 + j) * g.c + c) * plane..][..plane];
                fill_row(&mut row[j * p..][..p], src, kh, kw, g);
            }
        });
}

fn fill_row(dst: &mut [f32], src: &[f32], kh: usize, kw: usize, g: &Geometry) {
    let (s, pad, w) = (g.stride, g.pad, g.w);
    // Output columns whose input column `ox*s + kw - pad` lies inside [0, w).
    let lo = if kw >= pad {
        0
    } else {
        (pad - kw).div_ceil(s).min(g.ow)
    };
    let hi = if w + pad > kw {
        ((w - 1 + pad - kw) / s + 1).min(g.ow)
    } else {
        0
    }
    .max(lo);
    for oy in 0..g.oh {
        let d = &mut dst[oy * g.ow..][..g.ow];
        let iy = oy * s + kh;
        if iy < pad || iy - pad >= g.h {
            d.fill(0.0);
            continue;
        }
        let srow = &src[(iy - pad) * w..][..w];
        d[..lo].fill(0.0);
        d[hi..].fill(0.0);
        if lo < hi {
            let first = lo * s + kw - pad;
            if s == 1 {
                d[lo..hi].copy_from_slice(&srow[first..][..hi - lo]);
            } else if s == 2 {
                // The stride-2 layers (Wide ResNet's downsampling convs), in a form that
                // vectorises: every element but the last is the first of a pair inside the row.
                let (head, last) = d[lo..hi].split_at_mut(hi - lo - 1);
                for (v, pair) in head.iter_mut().zip(srow[first..].chunks_exact(2)) {
                    *v = pair[0];
                }
                last[0] = srow[first + 2 * head.len()];
            } else {
                for (i, v) in d[lo..hi].iter_mut().enumerate() {
                    *v = srow[first + i * s];
                }
            }
        }
    }
}

/// Right-hand sides narrower than this many columns, with at least [`SPLIT_MIN_ROWS`] output rows,
/// are multiplied by [`matmul`] in bands of output rows, one single-threaded GEMM per thread,
/// instead of one GEMM parallelised inside `gemm`: Wide ResNet's im2col layers at 7² and 14² (49-784
/// columns, 512-1024 rows) lose less to `gemm`'s per-block synchronisation that way (their layer
/// times ~3-5% lower). `IMGCLASS_GEMM_SPLIT=0` turns it off (A/B switch, read once).
pub const SPLIT_MAX_COLUMNS: usize = 1024;
pub const SPLIT_MIN_ROWS: usize = 512;

fn split_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| super::env_switch("IMGCLASS_GEMM_SPLIT", true))
}

/// `dst[m, n] = lhs[m, k] x rhs[k, n]`, all row-major and contiguous, on all rayon threads.
pub(crate) fn matmul(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) {
    assert!(lhs.len() >= m * k && rhs.len() >= k * n && dst.len() >= m * n);
    let threads = rayon::current_num_threads();
    if threads > 1 && n > 0 && n < SPLIT_MAX_COLUMNS && m >= SPLIT_MIN_ROWS && split_enabled() {
        // One band of output rows (a multiple of 16) per thread.
        let rows = m.div_ceil(threads).div_ceil(16) * 16;
        dst[..m * n]
            .par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(i, d)| {
                let mr = d.len() / n;
                let l = &lhs[i * rows * k..][..mr * k];
                gemm_call(mr, n, k, l, rhs, d, Parallelism::None);
            });
        return;
    }
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    gemm_call(m, n, k, lhs, rhs, dst, par);
}

fn gemm_call(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [f32],
    par: Parallelism,
) {
    gemm_strided(m, n, k, lhs, rhs, n, dst, par);
}

/// `dst[m, n] = lhs[m, k] x rhs[k, n]` with `lhs` and `dst` row-major contiguous and `rhs` rows
/// `rhs_rs` floats apart (`par`: the calling thread only, or rayon's pool).
#[allow(clippy::too_many_arguments)] // the GEMM shape, operands and strides, as gemm::gemm takes them
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    rhs: &[f32],
    rhs_rs: usize,
    dst: &mut [f32],
    par: Parallelism,
) {
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    assert!(lhs.len() >= m * k && dst.len() >= m * n && rhs_rs >= n);
    assert!(rhs.len() >= (k - 1) * rhs_rs + n);
    // SAFETY: every element read or written is in bounds of its slice for these sizes and strides
    // (asserted above); `dst` is exclusively borrowed and does not alias `lhs` or `rhs`;
    // `read_dst == false`, so the previous content of `dst` is never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            rhs_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}
