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

/// Scratch geometry of one plane.
struct Plan {
    s: usize,
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
        let s = g.stride;
        let ohr = g.oh.div_ceil(ROWS) * ROWS;
        let lanes = if g.ow <= NARROW { NARROW } else { LANES };
        let owr = g.ow.div_ceil(lanes) * lanes;
        let hp = (ohr * s + g.k).max(g.h + 2 * g.pad);
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
            pad: g.pad,
            h: g.h,
            w: g.w,
            oh: g.oh,
            ow: g.ow,
            hp,
            wq,
        }
    }

    fn scratch_len(&self) -> usize {
        self.s * self.hp * self.wq
    }
}

/// `act(depthwise(x, wt) + bias [+ res])`, NCHW in, NCHW out.
pub(crate) fn depthwise(
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
    let phase_len = p.hp * p.wq;
    // `scratch` was zeroed when created and every plane of this call writes the same positions,
    // so the padding is still zero: only the interior is (over)written here.
    for iy in 0..p.h {
        let row = &x[iy * p.w..][..p.w];
        let base = (iy + p.pad) * p.wq;
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
    let scratch = &*scratch;
    let row_step = p.s * p.wq;
    let max_tap = p.taps.iter().copied().max().unwrap_or(0);
    // Every load below is at most this far into `scratch` (the plan sizes it so): one check here
    // instead of one per load.
    let last = (p.ohr - ROWS) * row_step + (p.owr - L) + (ROWS - 1) * row_step + max_tap + L;
    assert!(last <= scratch.len() && w.len() == p.taps.len());
    assert!(p.ohr.is_multiple_of(ROWS) && p.owr.is_multiple_of(L));
    assert!(p.ohr >= p.oh && p.owr >= p.ow);
    let sp = scratch.as_ptr();
    for oy0 in (0..p.oh).step_by(ROWS) {
        let nrows = ROWS.min(p.oh - oy0);
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
