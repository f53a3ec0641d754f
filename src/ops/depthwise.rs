//! Depthwise convolution (`groups == C == O`, weights `[C, 1, K, K]`), direct NCHW.
//!
//! candle lowers a grouped convolution to one convolution per group, which is ~100x slower than
//! this kernel on MobileNetV3's layers. Here every (image, channel) plane is one rayon task:
//! 1. the input plane is copied into a zero-padded scratch buffer; for stride `s` the columns are
//!    split into `s` phase planes (column `x` goes to phase `x % s`, column `x / s`), so every tap
//!    of a strided convolution reads a contiguous run of memory;
//! 2. outputs are computed in register blocks of [`ROWS`] rows x [`LANES`] columns: for each of the
//!    K*K taps, one broadcast weight times a contiguous 16-float load per row, accumulated with FMA
//!    (4 independent accumulator chains hide the FMA latency);
//! 3. the epilogue adds the residual and applies the activation while the block is in registers
//!    (the bias is the accumulators' initial value).
//!
//! Planes of at most [`CV_MAX_PIXELS`] without a residual (MobileNetV3's 28², 14² and 7² layers)
//! take [`depthwise_cv`] instead on AVX-512 and AVX2 CPUs: 16 (8) channels per vector, so narrow
//! planes waste no lanes and each task covers 16 (8) planes.

use super::cpu::{fmadd, multiversion};
use super::{Activation, Geometry};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output columns per register block (one AVX-512 register, two AVX2 registers); planes at most
/// [`NARROW`] wide use blocks of [`NARROW`] columns instead.
const LANES: usize = 16;
const NARROW: usize = 8;
/// Output rows per register block.
const ROWS: usize = 4;

/// Scratch geometry of one plane (or of one band of rows of a plane, [`Plan::band`]).
pub(crate) struct Plan {
    s: usize,
    k: usize,
    pad: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Rows of each phase plane.
    hp: usize,
    /// Columns of each phase plane.
    wq: usize,
    /// Output rows rounded up to [`ROWS`], columns rounded up to the block width.
    ohr: usize,
    owr: usize,
    /// Scratch offset of each tap `kh * K + kw` relative to the top-left of an output block.
    taps: Vec<usize>,
}

impl Plan {
    fn new(g: &Geometry) -> Self {
        Self::build(g, g.oh, g.h)
    }

    /// The plan of [`band`]: bands of at most `rows` output rows (the scratch holds the input
    /// rows of one band, padding rows included).
    pub(crate) fn band(g: &Geometry, rows: usize) -> Self {
        Self::build(g, rows.min(g.oh), 0)
    }

    fn build(g: &Geometry, oh: usize, h: usize) -> Self {
        let s = g.stride;
        let ohr = oh.div_ceil(ROWS) * ROWS;
        let lanes = if g.ow <= NARROW { NARROW } else { LANES };
        let owr = g.ow.div_ceil(lanes) * lanes;
        let hp = (ohr * s + g.k).max(h + 2 * g.pad);
        let wq = (owr + (g.k - 1) / s).max((g.w + 2 * g.pad).div_ceil(s));
        let taps = (0..g.k * g.k)
            .map(|t| {
                let (kh, kw) = (t / g.k, t % g.k);
                (kw % s) * hp * wq + kh * wq + kw / s
            })
            .collect();
        Plan {
            ohr,
            owr,
            taps,
            s,
            k: g.k,
            pad: g.pad,
            h,
            w: g.w,
            oh,
            ow: g.ow,
            hp,
            wq,
        }
    }

    pub(crate) fn scratch_len(&self) -> usize {
        self.s * self.hp * self.wq
    }
}

/// `act(depthwise(x, wt) + bias [+ res])`, NCHW in, NCHW out.
pub fn depthwise(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
) -> Vec<f32> {
    let plan = Plan::new(g);
    let in_plane = g.h * g.w;
    let out_plane = g.oh * g.ow;
    let kk = g.k * g.k;
    let len = g.n * g.c * out_plane;
    // Not zero-filled: the register blocks below store every output exactly once.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(out_plane)
        .enumerate()
        .for_each_init(
            || vec![0f32; plan.scratch_len()],
            |scratch, (idx, o)| {
                let ch = idx % g.c;
                let xin = &x[idx * in_plane..][..in_plane];
                let r = res.map(|r| &r[idx * out_plane..][..out_plane]);
                let b = bias.map_or(0.0, |b| b[ch]);
                let w = &wt[ch * kk..][..kk];
                if plan.ow <= NARROW {
                    plane_narrow(&plan, xin, w, b, r, act, scratch, o);
                } else {
                    plane(&plan, xin, w, b, r, act, scratch, o);
                }
            },
        );
    // SAFETY: every plane's `store` calls wrote all `oh * ow` of its floats (blocks of ROWS rows
    // x L columns cover the plane), so all `len` floats are initialised.
    unsafe { out.set_len(len) };
    out
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn plane_body<const FMA: bool>(
    p: &Plan,
    x: &[f32],
    w: &[f32],
    b: f32,
    r: Option<&[f32]>,
    act: Activation,
    scratch: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    plane_impl::<FMA, LANES>(p, x, w, b, r, act, scratch, out)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn plane_narrow_body<const FMA: bool>(
    p: &Plan,
    x: &[f32],
    w: &[f32],
    b: f32,
    r: Option<&[f32]>,
    act: Activation,
    scratch: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    plane_impl::<FMA, NARROW>(p, x, w, b, r, act, scratch, out)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn plane_impl<const FMA: bool, const L: usize>(
    p: &Plan,
    x: &[f32],
    w: &[f32],
    b: f32,
    r: Option<&[f32]>,
    act: Activation,
    scratch: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    // `scratch` was zeroed when created and every plane of this call writes the same positions,
    // so the padding is still zero: only the interior is (over)written here.
    for iy in 0..p.h {
        fill_row(p, scratch, iy + p.pad, &x[iy * p.w..][..p.w]);
    }
    compute::<FMA, L>(p, p.oh, scratch, w, b, r, act, out);
}

/// Copy one input row into scratch row `sr` of every stride phase (its interior columns).
#[inline(always)]
fn fill_row(p: &Plan, scratch: &mut [f32], sr: usize, row: &[f32]) {
    let phase_len = p.hp * p.wq;
    let base = sr * p.wq;
    {
        if p.s == 1 {
            copy_row(&mut scratch[base + p.pad..][..p.w], row);
        } else if p.s == 2 {
            // Input column 2i goes to phase pad % 2, column 2i+1 to the other phase (vectorised
            // deinterleave: no per-element index arithmetic).
            let half = p.w / 2;
            let (ph_even, q_even) = (p.pad % 2, p.pad / 2);
            let q_odd = p.pad.div_ceil(2);
            let (lo, hi) = scratch.split_at_mut(phase_len);
            let (p0, p1) = (&mut lo[base..], &mut hi[base..]);
            let (even, odd) = if ph_even == 0 {
                (&mut p0[q_even..], &mut p1[q_odd..])
            } else {
                (&mut p1[q_even..], &mut p0[q_odd..])
            };
            let (even, odd) = (&mut even[..half + p.w % 2], &mut odd[..half]);
            for ((pair, e), o) in row.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
                *e = pair[0];
                *o = pair[1];
            }
            if p.w % 2 == 1 {
                even[half] = row[p.w - 1];
            }
        } else {
            // Phase `ph` holds padded columns q*s + ph, i.e. input columns q*s + ph - pad.
            for ph in 0..p.s {
                let q0 = (p.pad.saturating_sub(ph)).div_ceil(p.s);
                let first = q0 * p.s + ph - p.pad;
                if first >= p.w {
                    continue;
                }
                let dst = &mut scratch[ph * phase_len + base + q0..];
                for (d, v) in dst.iter_mut().zip(row[first..].iter().step_by(p.s)) {
                    *d = *v;
                }
            }
        }
    }
}

/// The register blocks of output rows `0..oh` (at most the plan's) from a filled scratch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn compute<const FMA: bool, const L: usize>(
    p: &Plan,
    oh: usize,
    scratch: &[f32],
    w: &[f32],
    b: f32,
    r: Option<&[f32]>,
    act: Activation,
    out: &mut [MaybeUninit<f32>],
) {
    debug_assert!(oh <= p.oh);
    let row_step = p.s * p.wq;
    let max_tap = p.taps.iter().copied().max().unwrap_or(0);
    // Every load below is at most this far into `scratch` (the plan sizes it so): one check here
    // instead of one per load.
    let last = (p.ohr - ROWS) * row_step + (p.owr - L) + (ROWS - 1) * row_step + max_tap + L;
    assert!(last <= scratch.len() && w.len() == p.taps.len());
    assert!(p.ohr.is_multiple_of(ROWS) && p.owr.is_multiple_of(L));
    assert!(p.ohr >= p.oh && p.owr >= p.ow);
    let sp = scratch.as_ptr();
    for oy0 in (0..oh).step_by(ROWS) {
        let nrows = ROWS.min(oh - oy0);
        // Right to left: a partial block's full-width store spills into the next row's first
        // columns, which a later block (same rows, j0 = 0) or row group then overwrites.
        for j0 in (0..p.ow).step_by(L).rev() {
            let b0 = oy0 * row_step + j0;
            // Four named accumulators (not an array indexed in a loop) so they stay in registers.
            let (mut a0, mut a1, mut a2, mut a3) = ([b; L], [b; L], [b; L], [b; L]);
            for (&off, &wv) in p.taps.iter().zip(w) {
                // SAFETY: oy0 + 3 < ohr and j0 + L <= owr, so the L floats read from each row end
                // at or before `last` <= scratch.len() (asserted above).
                unsafe {
                    let s0 = sp.add(b0 + off);
                    fma_row::<FMA, L>(&mut a0, s0, wv);
                    fma_row::<FMA, L>(&mut a1, s0.add(row_step), wv);
                    fma_row::<FMA, L>(&mut a2, s0.add(2 * row_step), wv);
                    fma_row::<FMA, L>(&mut a3, s0.add(3 * row_step), wv);
                }
            }
            let acc = [a0, a1, a2, a3];
            let ncol = L.min(p.ow - j0);
            let rows = &acc[..nrows];
            let at = oy0 * p.ow + j0;
            match act {
                Activation::None => store(out, r, rows, at, p.ow, ncol, |v| v),
                Activation::Relu => store(out, r, rows, at, p.ow, ncol, |v| v.max(0.0)),
                // times 1/6 rather than / 6: a vector division per output costs more than the
                // 9 multiply-adds of a 3x3 tap (within an ulp of `cpu::activate`)
                Activation::Hardswish => store(out, r, rows, at, p.ow, ncol, |v| {
                    v * ((v + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0))
                }),
            }
        }
    }
}

/// One band of one plane, for the fused inverted residual ([`super::fused`]): output rows
/// `oy0..oy0 + oh` (`oh` at most the rows of the [`Plan::band`]) of a plane of `h` input rows,
/// read from `src`, which holds the plane's input rows from `a` on (every row the band reads).
/// The rows above and below the plane are zeroed in the scratch here, so one scratch serves
/// every band. Planes at most [`NARROW`] wide are not supported (the caller checks).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn band_body<const FMA: bool>(
    p: &Plan,
    h: usize,
    src: &[f32],
    a: usize,
    oy0: usize,
    oh: usize,
    w: &[f32],
    b: f32,
    act: Activation,
    scratch: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    assert!(p.ow > NARROW && oh > 0 && oh <= p.oh);
    let phase_len = p.hp * p.wq;
    for r in 0..(oh - 1) * p.s + p.k {
        let iy = oy0 * p.s + r;
        if iy >= p.pad && iy - p.pad < h {
            let j = iy - p.pad - a;
            fill_row(p, scratch, r, &src[j * p.w..][..p.w]);
        } else {
            for ph in 0..p.s {
                scratch[ph * phase_len + r * p.wq..][..p.wq].fill(0.0);
            }
        }
    }
    compute::<FMA, LANES>(p, oh, scratch, w, b, None, act, out);
}

multiversion!(pub(crate) fn band(p: &Plan, h: usize, src: &[f32], a: usize, oy0: usize, oh: usize, w: &[f32], b: f32, act: Activation, scratch: &mut [f32], out: &mut [MaybeUninit<f32>]) => band_body);

/// `dst.copy_from_slice(src)` for short rows without a `memcpy` call: fixed-size vector copies,
/// the last one overlapping the previous (rows here are 7..=112 floats).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn chunked<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let n = src.len();
        let mut i = 0;
        while i + N <= n {
            let d: &mut [f32; N] = (&mut dst[i..i + N])
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            let s: &[f32; N] = (&src[i..i + N])
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            *d = *s;
            i += N;
        }
        if i < n {
            let d: &mut [f32; N] = (&mut dst[n - N..n])
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            let s: &[f32; N] = (&src[n - N..n])
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            *d = *s;
        }
    }
    let n = src.len();
    let dst = &mut dst[..n];
    if n >= 16 {
        chunked::<16>(dst, src);
    } else if n >= 8 {
        chunked::<8>(dst, src);
    } else if n >= 4 {
        chunked::<4>(dst, src);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

/// `acc[i] += src[i] * w` for `i < L`.
///
/// # Safety
/// `src` must be valid for reading `L` floats.
#[inline(always)]
unsafe fn fma_row<const FMA: bool, const L: usize>(acc: &mut [f32; L], src: *const f32, w: f32) {
    for (i, a) in acc.iter_mut().enumerate() {
        *a = fmadd::<FMA>(*src.add(i), w, *a);
    }
}

/// Epilogue of one register block: `out[at + rr*ow + i] = f(acc[rr][i] [+ r[...]])` for the first
/// `ncol` columns (the activation is a closure so each variant compiles to its own vector loop).
#[inline(always)]
fn store<const L: usize>(
    out: &mut [MaybeUninit<f32>],
    r: Option<&[f32]>,
    rows: &[[f32; L]],
    at: usize,
    ow: usize,
    ncol: usize,
    f: impl Fn(f32) -> f32,
) {
    for (rr, a) in rows.iter().enumerate() {
        let o = at + rr * ow;
        match r {
            Some(r) => {
                let dst = &mut out[o..][..ncol];
                for ((d, v), rv) in dst.iter_mut().zip(a).zip(&r[o..][..ncol]) {
                    d.write(f(*v + *rv));
                }
            }
            None => {
                // A partial block stores all L lanes when they fit in the plane (the extra
                // lanes land in later rows, stored afterwards, see `plane_impl`): one vector
                // store instead of a short copy.
                if ncol == L || o + L <= out.len() {
                    let dst: &mut [MaybeUninit<f32>; L] = (&mut out[o..o + L])
                        .try_into()
                        .unwrap_or_else(|_| unreachable!());
                    for i in 0..L {
                        dst[i].write(f(a[i]));
                    }
                } else {
                    // Full-width vector epilogue, then the first `ncol` lanes.
                    let mut tmp = [0f32; L];
                    for i in 0..L {
                        tmp[i] = f(a[i]);
                    }
                    for (d, t) in out[o..][..ncol].iter_mut().zip(&tmp) {
                        d.write(*t);
                    }
                }
            }
        }
    }
}

multiversion!(fn plane(p: &Plan, x: &[f32], w: &[f32], b: f32, r: Option<&[f32]>, act: Activation, scratch: &mut [f32], out: &mut [MaybeUninit<f32>]) => plane_body);
multiversion!(fn plane_narrow(p: &Plan, x: &[f32], w: &[f32], b: f32, r: Option<&[f32]>, act: Activation, scratch: &mut [f32], out: &mut [MaybeUninit<f32>]) => plane_narrow_body);

/// Channels per group of the channel-vector kernel ([`depthwise_cv`]): one AVX-512 register (16),
/// or one AVX2 register (8).
const CV: usize = 16;
const CV2: usize = 8;
/// Output pixels per register block of [`depthwise_cv`]: 7, so MobileNetV3's 28-, 14- and 7-wide
/// maps lose no block to a remainder.
const CV_PX: usize = 7;
/// Largest input plane (pixels) [`depthwise_cv`] is used for: up to 28x28, whose padded,
/// channel-interleaved scratch of 16 channels (at most 64 KiB) stays in L2.
pub const CV_MAX_PIXELS: usize = 28 * 28;

/// Whether [`depthwise_cv`] runs this call on this CPU: small planes (MobileNetV3's 28², 14² and
/// 7² layers, where the per-plane kernel wastes vector lanes and per-plane overhead dominates),
/// no residual, AVX-512 or AVX2 + FMA.
pub fn cv_applies(g: &Geometry, has_res: bool) -> bool {
    !has_res
        && g.h * g.w <= CV_MAX_PIXELS
        && g.oh > 0
        && g.ow > 0
        && super::cpu::level() != super::cpu::Level::Scalar
}

/// [`depthwise`] with the channels of a group in the lanes of one vector (ONNX Runtime's NCHWc
/// idea, kept inside the kernel; 16 channels per group on AVX-512, 8 on AVX2): per (image, group)
/// task, the group's planes are interleaved into a zero-padded scratch `[H+2p][Wp][lanes]`, so
/// every tap of every output pixel is one aligned vector load and one FMA with the tap's weights,
/// for any stride and with no lane wasted on narrow planes; register blocks of [`CV_PX`] pixels x
/// one vector of channels, bias and activation applied in registers, stored pixel by pixel into a
/// small stash, then written back to the NCHW planes a vector of pixels at a time (one in-register
/// transpose per 16 (8) outputs across rows; a transpose per 7-pixel block took 18-22% more time
/// on the README's Zen 4, batches 1 and 8). The input is interleaved a vector of pixels of the
/// plane at a time too. The caller checks [`cv_applies`].
pub fn depthwise_cv(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
) -> Vec<f32> {
    assert!(cv_applies(g, false));
    #[cfg(target_arch = "x86_64")]
    if super::cpu::level() == super::cpu::Level::Avx512 {
        return cv_impl::<CV>(x, wt, bias, act, g);
    }
    cv_impl::<CV2>(x, wt, bias, act, g)
}

/// [`depthwise_cv`] with `L` channels per group: 16 runs the AVX-512 kernels, 8 the AVX2 ones.
fn cv_impl<const L: usize>(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
) -> Vec<f32> {
    let (k, s, pad) = (g.k, g.stride, g.pad);
    let kk = k * k;
    let hp = g.h + 2 * pad;
    // Columns read by the last (full-width) register block of a row, at least the padded width.
    let wp = (g.w + 2 * pad).max((g.ow.div_ceil(CV_PX) * CV_PX - 1) * s + k);
    // Rows read: (oh - 1) * s + k - 1 < h + 2 * pad.
    assert!((g.oh - 1) * s + k <= hp);
    let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
    let groups = g.c.div_ceil(L);
    let len = g.n * g.c * out_plane;
    assert!(x.len() >= g.n * g.c * in_plane && wt.len() >= g.c * kk);
    assert!(bias.is_none_or(|b| b.len() >= g.c));
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = super::pointwise::OutPtr(out.as_mut_ptr());
    // The activated outputs of a group, pixels x channels, before the transpose back to planes
    // (rounded up to whole L-pixel chunks: the last chunk's transpose reads past the plane).
    let stash_len = (out_plane + CV_PX).next_multiple_of(L) * L;
    (0..g.n * groups).into_par_iter().for_each_init(
        // Zeroed once per worker: every task of this call writes the same interior positions,
        // so the padding stays zero (lanes of channels past `C` are written as zeros).
        || (vec![0f32; hp * wp * L], vec![0f32; stash_len]),
        |(scratch, stash), task| {
            let (img, grp) = (task / groups, task % groups);
            let c0 = grp * L;
            let nc = L.min(g.c - c0);
            let mut wl = vec![0f32; kk * L];
            let mut bl = [0f32; L];
            for cc in 0..nc {
                for t in 0..kk {
                    wl[t * L + cc] = wt[(c0 + cc) * kk + t];
                }
                bl[cc] = bias.map_or(0.0, |b| b[c0 + cc]);
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: L == 16 only on AVX-512 CPUs, L == 8 on AVX2 + FMA ones (cv_applies,
            // depthwise_cv). The fill reads the group's `nc` planes (sliced above) and writes
            // rows pad..pad+h, columns pad..pad+w of the scratch. The kernel reads rows < hp
            // (asserted above) and columns < wp (sized above) of the `hp * wp * L` scratch,
            // `kk * L` weights; it writes stash pixels below `out_plane + CV_PX` and reads them
            // below `out_plane` rounded up to L (`stash_len`). Writes: channels c0..c0+nc of
            // image `img`, all `out_plane` pixels each, inside the `len`-float buffer; only this
            // task writes them.
            unsafe {
                let xg = x[(img * g.c + c0) * in_plane..][..nc * in_plane].as_ptr();
                let interior = scratch.as_mut_ptr().add((pad * wp + pad) * L);
                let a = CvArgs {
                    t: scratch.as_ptr(),
                    w: wl.as_ptr(),
                    bias: bl.as_ptr(),
                    stash: stash.as_mut_ptr(),
                    out: dst.ptr().add((img * g.c + c0) * out_plane),
                    k,
                    s,
                    wp,
                    oh: g.oh,
                    ow: g.ow,
                    nc,
                    act,
                };
                if L == CV {
                    avx512::cv_fill(xg, nc, g.h, g.w, interior, wp);
                    avx512::cv_group(&a);
                } else {
                    avx2::cv_fill(xg, nc, g.h, g.w, interior, wp);
                    avx2::cv_group(&a);
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (&dst, &wl, &bl, img, nc, scratch, stash);
                unreachable!("depthwise_cv is only dispatched on AVX-512 / AVX2 CPUs");
            }
        },
    );
    // SAFETY: the tasks wrote every channel of every image, all `out_plane` pixels each.
    unsafe { out.set_len(len) };
    out
}

/// The operands of one (image, channel group) task of [`depthwise_cv`].
#[cfg(target_arch = "x86_64")]
struct CvArgs {
    /// Channel-interleaved padded scratch `[hp][wp][lanes]`.
    t: *const f32,
    /// `[K*K][lanes]` weights, `[lanes]` bias.
    w: *const f32,
    bias: *const f32,
    /// `[oh * ow + CV_PX rounded up to lanes][lanes]`: the activated outputs, pixels x channels.
    stash: *mut f32,
    /// Output plane of the group's first channel (plane stride `oh * ow`).
    out: *mut f32,
    k: usize,
    s: usize,
    wp: usize,
    oh: usize,
    ow: usize,
    /// Channels of the group that exist (the rest of the lanes are not stored).
    nc: usize,
    act: Activation,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Activation, CvArgs, CV, CV_PX};
    use std::arch::x86_64::*;

    /// `out[i][j] = a[i-th lane of a[j]]`: a 16x16 transpose in registers (unpack 32-bit, unpack
    /// 64-bit, then two 128-bit lane shuffles).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(a: &[__m512; 16]) -> [__m512; 16] {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]);
        }
        // u[4i + m], 128-bit lane k: rows 4i..4i+4 of column 4k + m.
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let pd = |v: __m512| _mm512_castps_pd(v);
            let (t0, t1, t2, t3) = (
                pd(t[4 * i]),
                pd(t[4 * i + 1]),
                pd(t[4 * i + 2]),
                pd(t[4 * i + 3]),
            );
            u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
            u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
            u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
            u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            let lo01 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
            let lo23 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
            let hi01 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
            let hi23 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
            out[m] = _mm512_shuffle_f32x4::<0x88>(lo01, lo23);
            out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(lo01, lo23);
            out[8 + m] = _mm512_shuffle_f32x4::<0x88>(hi01, hi23);
            out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(hi01, hi23);
        }
        out
    }

    /// Interleave `nc` planes `[h][w]` (plane stride `h * w`) into `dst[iy * wp + ix][CV]` (lanes
    /// `nc..CV` get zeros), 16x16 blocks at a time.
    ///
    /// # Safety
    /// AVX-512 present; `x` valid for `nc * h * w` floats, `dst` for writing rows `0..h` (stride
    /// `wp * CV`) of `w * CV` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn cv_fill(
        x: *const f32,
        nc: usize,
        h: usize,
        w: usize,
        dst: *mut f32,
        wp: usize,
    ) {
        // 16 pixels of the plane at a time, across rows (7-wide planes: 4 transposes, not 7).
        let plane = h * w;
        let (mut iy, mut ix) = (0, 0);
        for p0 in (0..plane).step_by(16) {
            let np = 16.min(plane - p0);
            let mask = ((1u32 << np) - 1) as __mmask16;
            let mut rows = [_mm512_setzero_ps(); 16];
            for (cc, r) in rows.iter_mut().enumerate().take(nc) {
                *r = _mm512_maskz_loadu_ps(mask, x.add(cc * plane + p0));
            }
            let cols = transpose16(&rows);
            for v in cols.iter().take(np) {
                _mm512_storeu_ps(dst.add((iy * wp + ix) * CV), *v);
                ix += 1;
                if ix == w {
                    (iy, ix) = (iy + 1, 0);
                }
            }
        }
    }

    /// # Safety
    /// AVX-512 present; pointers valid as described in `super::depthwise_cv`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn cv_group(a: &CvArgs) {
        // Constant strides: the 8 loads of a tap become fixed offsets from one pointer.
        match (a.s, a.k) {
            (1, 3) => cv_group_impl::<1, 3>(a),
            (1, 5) => cv_group_impl::<1, 5>(a),
            (2, 3) => cv_group_impl::<2, 3>(a),
            (2, 5) => cv_group_impl::<2, 5>(a),
            _ => cv_group_impl::<0, 0>(a),
        }
    }

    /// `S`, `K`: the stride and kernel size when known at compile time (0: read from `a`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn cv_group_impl<const S: usize, const K: usize>(a: &CvArgs) {
        let s = if S == 0 { a.s } else { S };
        let k = if K == 0 { a.k } else { K };
        let plane = a.oh * a.ow;
        let bias = _mm512_loadu_ps(a.bias);
        for oy in 0..a.oh {
            for ox0 in (0..a.ow).step_by(CV_PX) {
                let mut acc = [bias; CV_PX];
                for kh in 0..k {
                    let row = a.t.add(((oy * s + kh) * a.wp + ox0 * s) * CV);
                    for kw in 0..k {
                        let wv = _mm512_loadu_ps(a.w.add((kh * k + kw) * CV));
                        let src = row.add(kw * CV);
                        for (r, c) in acc.iter_mut().enumerate() {
                            *c = _mm512_fmadd_ps(_mm512_loadu_ps(src.add(r * s * CV)), wv, *c);
                        }
                    }
                }
                // All CV_PX pixels, whole register block (a variable count would keep `acc` in
                // memory): pixels past the row land on the next row's first ones, which are
                // written after, or past the plane, inside the stash.
                let at = oy * a.ow + ox0;
                for (r, c) in acc.iter().enumerate() {
                    let v = match a.act {
                        Activation::None => *c,
                        Activation::Relu => _mm512_max_ps(*c, _mm512_setzero_ps()),
                        Activation::Hardswish => {
                            let u = _mm512_add_ps(*c, _mm512_set1_ps(3.0));
                            let u = _mm512_min_ps(
                                _mm512_max_ps(u, _mm512_setzero_ps()),
                                _mm512_set1_ps(6.0),
                            );
                            _mm512_mul_ps(*c, _mm512_mul_ps(u, _mm512_set1_ps(1.0 / 6.0)))
                        }
                    };
                    _mm512_storeu_ps(a.stash.add((at + r) * CV), v);
                }
            }
        }
        // Pixels x channels -> channels x pixels, 16 pixels of the plane at a time (whole rows
        // or not): one transpose per 16 outputs, where a transpose per register block took one
        // per 7.
        for p0 in (0..plane).step_by(CV) {
            let np = CV.min(plane - p0);
            let mut rows = [_mm512_setzero_ps(); CV];
            for (r, v) in rows.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(a.stash.add((p0 + r) * CV));
            }
            let cols = transpose16(&rows);
            let mask = ((1u32 << np) - 1) as __mmask16;
            for (cc, v) in cols.iter().enumerate().take(a.nc) {
                _mm512_mask_storeu_ps(a.out.add(cc * plane + p0), mask, *v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Activation, CvArgs, CV2, CV_PX};
    use crate::ops::cpu::lanes8 as lanes;
    use std::arch::x86_64::*;

    /// `out[i][j] = a[j][i]`: an 8x8 transpose in registers (unpack 32-bit, shuffle 64-bit,
    /// then 128-bit lane permutes).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose8(a: &[__m256; 8]) -> [__m256; 8] {
        let mut t = [_mm256_setzero_ps(); 8];
        for i in 0..4 {
            t[2 * i] = _mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]);
        }
        // u[4h + m], 128-bit lane l: rows 4h..4h+4 of column 4l + m.
        let mut u = [_mm256_setzero_ps(); 8];
        for h in 0..2 {
            let (t0, t1, t2, t3) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
            u[4 * h] = _mm256_shuffle_ps::<0x44>(t0, t2);
            u[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(t0, t2);
            u[4 * h + 2] = _mm256_shuffle_ps::<0x44>(t1, t3);
            u[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(t1, t3);
        }
        let mut out = [_mm256_setzero_ps(); 8];
        for m in 0..4 {
            out[m] = _mm256_permute2f128_ps::<0x20>(u[m], u[4 + m]);
            out[4 + m] = _mm256_permute2f128_ps::<0x31>(u[m], u[4 + m]);
        }
        out
    }

    /// Interleave `nc` planes `[h][w]` (plane stride `h * w`) into `dst[iy * wp + ix][CV2]`
    /// (lanes `nc..CV2` get zeros), 8x8 blocks at a time.
    ///
    /// # Safety
    /// AVX2 + FMA present; `x` valid for `nc * h * w` floats, `dst` for writing rows `0..h`
    /// (stride `wp * CV2`) of `w * CV2` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn cv_fill(
        x: *const f32,
        nc: usize,
        h: usize,
        w: usize,
        dst: *mut f32,
        wp: usize,
    ) {
        let plane = h * w;
        let (mut iy, mut ix) = (0, 0);
        for p0 in (0..plane).step_by(CV2) {
            let np = CV2.min(plane - p0);
            let mask = lanes(np);
            let mut rows = [_mm256_setzero_ps(); CV2];
            for (cc, r) in rows.iter_mut().enumerate().take(nc) {
                *r = _mm256_maskload_ps(x.add(cc * plane + p0), mask);
            }
            let cols = transpose8(&rows);
            for v in cols.iter().take(np) {
                _mm256_storeu_ps(dst.add((iy * wp + ix) * CV2), *v);
                ix += 1;
                if ix == w {
                    (iy, ix) = (iy + 1, 0);
                }
            }
        }
    }

    /// # Safety
    /// AVX2 + FMA present; pointers valid as described in `super::depthwise_cv`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn cv_group(a: &CvArgs) {
        match (a.s, a.k) {
            (1, 3) => cv_group_impl::<1, 3>(a),
            (1, 5) => cv_group_impl::<1, 5>(a),
            (2, 3) => cv_group_impl::<2, 3>(a),
            (2, 5) => cv_group_impl::<2, 5>(a),
            _ => cv_group_impl::<0, 0>(a),
        }
    }

    /// `S`, `K`: the stride and kernel size when known at compile time (0: read from `a`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn cv_group_impl<const S: usize, const K: usize>(a: &CvArgs) {
        let s = if S == 0 { a.s } else { S };
        let k = if K == 0 { a.k } else { K };
        let plane = a.oh * a.ow;
        let bias = _mm256_loadu_ps(a.bias);
        for oy in 0..a.oh {
            for ox0 in (0..a.ow).step_by(CV_PX) {
                let mut acc = [bias; CV_PX];
                for kh in 0..k {
                    let row = a.t.add(((oy * s + kh) * a.wp + ox0 * s) * CV2);
                    for kw in 0..k {
                        let wv = _mm256_loadu_ps(a.w.add((kh * k + kw) * CV2));
                        let src = row.add(kw * CV2);
                        for (r, c) in acc.iter_mut().enumerate() {
                            *c = _mm256_fmadd_ps(_mm256_loadu_ps(src.add(r * s * CV2)), wv, *c);
                        }
                    }
                }
                // All CV_PX pixels, as in the AVX-512 kernel: pixels past the row land on the
                // next row's first ones, which are written after, or past the plane, inside
                // the stash.
                let at = oy * a.ow + ox0;
                for (r, c) in acc.iter().enumerate() {
                    let v = match a.act {
                        Activation::None => *c,
                        Activation::Relu => _mm256_max_ps(*c, _mm256_setzero_ps()),
                        Activation::Hardswish => {
                            let u = _mm256_add_ps(*c, _mm256_set1_ps(3.0));
                            let u = _mm256_min_ps(
                                _mm256_max_ps(u, _mm256_setzero_ps()),
                                _mm256_set1_ps(6.0),
                            );
                            _mm256_mul_ps(*c, _mm256_mul_ps(u, _mm256_set1_ps(1.0 / 6.0)))
                        }
                    };
                    _mm256_storeu_ps(a.stash.add((at + r) * CV2), v);
                }
            }
        }
        // Pixels x channels -> channels x pixels, 8 pixels of the plane at a time.
        for p0 in (0..plane).step_by(CV2) {
            let np = CV2.min(plane - p0);
            let mut rows = [_mm256_setzero_ps(); CV2];
            for (r, v) in rows.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(a.stash.add((p0 + r) * CV2));
            }
            let cols = transpose8(&rows);
            let mask = lanes(np);
            for (cc, v) in cols.iter().enumerate().take(a.nc) {
                if np == CV2 {
                    _mm256_storeu_ps(a.out.add(cc * plane + p0), *v);
                } else {
                    _mm256_maskstore_ps(a.out.add(cc * plane + p0), mask, *v);
                }
            }
        }
    }
}
