//! Direct kernel for dense convolutions with a tiny reduction (`C*K*K <= 32`, or up to 160 taps on
//! at most 4 input channels: RGB stems such as MobileNetV3's 3x3 stride-2 3->16 and Wide ResNet's
//! 7x7 stride-2 3->64), AVX-512 only.
//!
//! The work is split into bands of [`BAND`] output rows (per image). Each band first copies the
//! input rows it needs into zero-padded *phase planes* (padded column `q*s + f` of a row goes to
//! plane `f`, column `q`; a few KiB that stay in L1/L2), so that every tap `(c, kh, kw)` of a run
//! of output columns is one contiguous vector load: plane `kw % s`, row `oy*s + kh`, column
//! `ox + kw / s`. The register block is [`OB`] output channels x up to [`NV`] x 16 output columns,
//! the bias, residual and activation applied in registers before the only store. Nothing of size
//! `C*K*K x OH*OW` (im2col) is ever written.

use super::cpu::{level, Level};
use super::pointwise::{run_jobs, OutPtr};
use super::{Activation, Geometry};

/// Output rows per task.
const BAND: usize = 8;
/// Output channels per register block.
const OB: usize = 8;
/// 16-column vectors per register block (OB x NV accumulators; per tap NV loads and OB
/// broadcasts feed OB x NV multiply-adds).
const NV: usize = 3;
/// Largest `C*K*K` handled (taps per output pixel): any reduction of up to [`SMALL_TAPS`], and
/// image stems (`C <= 4` channels) up to 160 taps (Wide ResNet's 7x7 RGB stem has 147).
const MAX_TAPS: usize = 160;
const SMALL_TAPS: usize = 32;

/// Whether [`conv`] runs this convolution on this CPU.
pub(crate) fn available(c: usize, k: usize, o: usize) -> bool {
    let taps = c * k * k;
    (taps <= SMALL_TAPS || (c <= 4 && taps <= MAX_TAPS))
        && taps > 0
        && o > 0
        && o.is_multiple_of(8)
        && level() == Level::Avx512
}

/// `act(conv(x, w) + b [+ res])` for `x: [N, C, H, W]`, `w: [O, C, K, K]`, out `[N, O, OH, OW]`.
/// The caller checks [`available`] and the slice lengths.
pub(crate) fn conv(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
) -> Vec<f32> {
    let taps = g.c * g.k * g.k;
    assert!(available(g.c, g.k, g.o) && g.stride > 0);
    let p = g.oh * g.ow;
    let len = g.n * g.o * p;
    assert!(x.len() >= g.n * g.c * g.h * g.w && w.len() >= g.o * taps);
    assert!(bias.is_none_or(|b| b.len() >= g.o) && res.is_none_or(|r| r.len() >= len));
    // Weights as [O/OB][tap][OB]: the OB weights of one tap are adjacent (broadcast operands).
    let mut wt = vec![0f32; g.o * taps];
    for o in 0..g.o {
        for t in 0..taps {
            wt[((o / OB) * taps + t) * OB + o % OB] = w[o * taps + t];
        }
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let bands = g.oh.div_ceil(BAND);
    let serial = g.n * g.o * taps * p < (1 << 18);
    let dst = OutPtr(out.as_mut_ptr());
    run_jobs(g.n * bands, serial, |job| {
        let (img, band) = (job / bands, job % bands);
        let oy0 = band * BAND;
        let oy1 = (oy0 + BAND).min(g.oh);
        let xs = &x[img * g.c * g.h * g.w..][..g.c * g.h * g.w];
        let rs = res.map(|r| &r[img * g.o * p..][..g.o * p]);
        // SAFETY: rows oy0..oy1 of every output plane of image `img` lie in the `len`-float
        // buffer, and only this task writes them; together the tasks write all of it.
        unsafe {
            band_conv(
                xs,
                &wt,
                bias,
                rs,
                act,
                g,
                oy0,
                oy1,
                dst.ptr().add(img * g.o * p),
            )
        };
    });
    // SAFETY: every output was written above.
    unsafe { out.set_len(len) };
    out
}

/// Padded rows of the phase planes a band of output rows `oy0..oy1` reads.
fn band_rows(g: &Geometry, oy0: usize, oy1: usize) -> usize {
    (oy1 - 1 - oy0) * g.stride + g.k
}

/// Columns of one phase row: enough for the last tap of the last output column.
fn phase_cols(g: &Geometry) -> usize {
    (g.w + 2 * g.pad).div_ceil(g.stride)
}

/// Fill `dst[q] = row[q*s + f - pad]` (zero where that is outside the row).
fn fill_phase_row(dst: &mut [f32], row: &[f32], f: usize, s: usize, pad: usize) {
    let w = row.len();
    // Valid q: 0 <= q*s + f - pad < w.
    let q_lo = pad.saturating_sub(f).div_ceil(s);
    let q_hi = if w + pad > f {
        ((w + pad - f - 1) / s + 1).min(dst.len())
    } else {
        0
    };
    if q_lo >= q_hi {
        dst.fill(0.0);
        return;
    }
    dst[..q_lo].fill(0.0);
    dst[q_hi..].fill(0.0);
    let ix0 = q_lo * s + f - pad;
    let d = &mut dst[q_lo..q_hi];
    match s {
        1 => d.copy_from_slice(&row[ix0..ix0 + d.len()]),
        #[cfg(target_arch = "x86_64")]
        2 => {
            let m = d.len();
            let full = if m == 0 { 0 } else { (m - 1) / 16 };
            // Chunks of 16 whose 32-float source window lies inside the row.
            let vec_chunks = (0..full).take_while(|&j| ix0 + 32 * j + 32 <= w).count();
            // SAFETY: AVX-512 is present (`available`); for j < vec_chunks the loads read
            // row[ix0 + 32j .. ix0 + 32j + 32] (in bounds by the take_while) and store d[16j..16j+16]
            // (16j + 16 <= 16 * full < m).
            unsafe { avx512::deinterleave(row.as_ptr().add(ix0), d.as_mut_ptr(), vec_chunks) };
            for (i, v) in d.iter_mut().enumerate().skip(16 * vec_chunks) {
                *v = row[ix0 + 2 * i];
            }
        }
        _ => {
            for (v, r) in d.iter_mut().zip(row[ix0..].iter().step_by(s)) {
                *v = *r;
            }
        }
    }
}

/// One band: phase planes of its input rows, then the register blocks.
///
/// # Safety
/// `out` must be valid for writing rows `oy0..oy1` of all `g.o` output planes (`g.oh x g.ow`) of
/// one image; AVX-512 present; `wt` laid out as in [`conv`].
#[allow(clippy::too_many_arguments)]
unsafe fn band_conv(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
    oy0: usize,
    oy1: usize,
    out: *mut f32,
) {
    let (s, k) = (g.stride, g.k);
    let rows = band_rows(g, oy0, oy1);
    let wq = phase_cols(g);
    let plane = rows * wq;
    // [c][f][row][q]
    let mut ph = vec![0f32; g.c * s * plane];
    for c in 0..g.c {
        for r in 0..rows {
            let iy = (oy0 * s + r) as isize - g.pad as isize;
            for f in 0..s {
                let dst = &mut ph[((c * s + f) * rows + r) * wq..][..wq];
                if iy < 0 || iy as usize >= g.h {
                    dst.fill(0.0);
                } else {
                    let row = &x[(c * g.h + iy as usize) * g.w..][..g.w];
                    fill_phase_row(dst, row, f, s, g.pad);
                }
            }
        }
    }
    let taps = g.c * k * k;
    let mut off = [0usize; MAX_TAPS];
    for (t, o) in off.iter_mut().enumerate().take(taps) {
        let (c, kh, kw) = (t / (k * k), (t / k) % k, t % k);
        *o = ((c * s + kw % s) * rows + kh) * wq + kw / s;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let p = g.oh * g.ow;
        for oy in oy0..oy1 {
            let row_base = ph.as_ptr().add((oy - oy0) * s * wq);
            for ox0 in (0..g.ow).step_by(16 * NV) {
                let np = (16 * NV).min(g.ow - ox0);
                let nv = np.div_ceil(16);
                let tail = np - 16 * (nv - 1);
                let mask: u16 = if tail == 16 {
                    0xFFFF
                } else {
                    (1u16 << tail) - 1
                };
                for b in 0..g.o / OB {
                    let o0 = b * OB;
                    let a = avx512::Args {
                        x: row_base.add(ox0),
                        off: &off[..taps],
                        w: wt.as_ptr().add(b * taps * OB),
                        bias: bias.map_or(std::ptr::null(), |v| v.as_ptr().add(o0)),
                        res: res.map_or(std::ptr::null(), |r| {
                            r.as_ptr().add(o0 * p + oy * g.ow + ox0)
                        }),
                        out: out.add(o0 * p + oy * g.ow + ox0),
                        p,
                        mask,
                        act,
                    };
                    // SAFETY: tap loads read phase row (oy-oy0)*s + kh <= rows - 1, columns
                    // ox0 + kw/s + lane < wq for the lanes kept (ox < ow: full vectors but the
                    // last, which is masked); weights of OB channels x `taps`; the
                    // output/residual rows of channels o0..o0+OB, columns ox0..ox0+np.
                    match nv {
                        1 => avx512::tile::<1>(&a),
                        2 => avx512::tile::<2>(&a),
                        _ => avx512::tile::<NV>(&a),
                    }
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (wt, bias, res, act, out, off);
        unreachable!("stem::conv is only dispatched on AVX-512 CPUs");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Activation, OB};
    use std::arch::x86_64::*;

    pub(super) struct Args<'a> {
        /// Phase-plane data at (row of this output row, column ox0).
        pub x: *const f32,
        /// Offset of each tap from `x`.
        pub off: &'a [usize],
        /// `[tap][OB]` weights.
        pub w: *const f32,
        pub bias: *const f32,
        pub res: *const f32,
        pub out: *mut f32,
        /// Output plane size (channel stride of `out` and `res`).
        pub p: usize,
        /// Lanes of the last of the V vectors.
        pub mask: u16,
        pub act: Activation,
    }

    /// # Safety
    /// AVX-512 present; pointers valid as described in `super::band_conv`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const V: usize>(a: &Args) {
        let mask = a.mask as __mmask16;
        let load = |p: *const f32, j: usize| {
            if j + 1 < V {
                _mm512_loadu_ps(p.add(16 * j))
            } else {
                _mm512_maskz_loadu_ps(mask, p.add(16 * j))
            }
        };
        let mut acc = [[_mm512_setzero_ps(); V]; OB];
        if !a.bias.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
                *row = [_mm512_set1_ps(*a.bias.add(i)); V];
            }
        }
        for (t, &o) in a.off.iter().enumerate() {
            let xp = a.x.add(o);
            let mut xv = [_mm512_setzero_ps(); V];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = load(xp, j);
            }
            let wr = a.w.add(t * OB);
            for (i, row) in acc.iter_mut().enumerate() {
                let wb = _mm512_set1_ps(*wr.add(i));
                for (c, v) in row.iter_mut().zip(&xv) {
                    *c = _mm512_fmadd_ps(wb, *v, *c);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                let mut v = *c;
                if !a.res.is_null() {
                    v = _mm512_add_ps(v, load(a.res.add(i * a.p), j));
                }
                let v = match a.act {
                    Activation::None => v,
                    Activation::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
                    Activation::Hardswish => {
                        let t = _mm512_add_ps(v, _mm512_set1_ps(3.0));
                        let t = _mm512_min_ps(
                            _mm512_max_ps(t, _mm512_setzero_ps()),
                            _mm512_set1_ps(6.0),
                        );
                        _mm512_mul_ps(v, _mm512_mul_ps(t, _mm512_set1_ps(1.0 / 6.0)))
                    }
                };
                let o = a.out.add(i * a.p + 16 * j);
                if j + 1 < V {
                    _mm512_storeu_ps(o, v);
                } else {
                    _mm512_mask_storeu_ps(o, mask, v);
                }
            }
        }
    }

    /// `dst[16j + i] = src[32j + 2i]` for `j < chunks`, `i < 16`.
    ///
    /// # Safety
    /// AVX-512 present; `src` valid for `32 * chunks` floats, `dst` for `16 * chunks`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn deinterleave(src: *const f32, dst: *mut f32, chunks: usize) {
        let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for j in 0..chunks {
            let a = _mm512_loadu_ps(src.add(32 * j));
            let b = _mm512_loadu_ps(src.add(32 * j + 16));
            _mm512_storeu_ps(dst.add(16 * j), _mm512_permutex2var_ps(a, idx, b));
        }
    }
}
