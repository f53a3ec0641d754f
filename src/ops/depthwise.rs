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

use super::cpu::{activate, fmadd, multiversion};
use super::{Activation, Geometry};
use rayon::prelude::*;

/// Output columns per register block (one AVX-512 register, two AVX2 registers); planes at most
/// [`NARROW`] wide use blocks of [`NARROW`] columns instead.
const LANES: usize = 16;
const NARROW: usize = 8;
/// Output rows per register block.
const ROWS: usize = 4;

/// Scratch geometry of one plane.
struct Plan {
    k: usize,
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
}

impl Plan {
    fn new(g: &Geometry) -> Self {
        let s = g.stride;
        let ohr = g.oh.div_ceil(ROWS) * ROWS;
        let lanes = if g.ow <= NARROW { NARROW } else { LANES };
        let owr = g.ow.div_ceil(lanes) * lanes;
        let hp = (ohr * s + g.k).max(g.h + 2 * g.pad);
        let wq = (owr + (g.k - 1) / s).max((g.w + 2 * g.pad).div_ceil(s));
        Plan {
            k: g.k,
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
    let mut out = vec![0f32; g.n * g.c * out_plane];
    out.par_chunks_mut(out_plane).enumerate().for_each_init(
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
    out: &mut [f32],
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
    out: &mut [f32],
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
    out: &mut [f32],
) {
    let phase_len = p.hp * p.wq;
    // `scratch` was zeroed when created and every plane of this call writes the same positions,
    // so the padding is still zero: only the interior is (over)written here.
    for iy in 0..p.h {
        let row = &x[iy * p.w..][..p.w];
        let base = (iy + p.pad) * p.wq;
        if p.s == 1 {
            scratch[base + p.pad..][..p.w].copy_from_slice(row);
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
    for oy0 in (0..p.oh).step_by(ROWS) {
        let nrows = ROWS.min(p.oh - oy0);
        for j0 in (0..p.ow).step_by(L) {
            let mut acc = [[b; L]; ROWS];
            for kh in 0..p.k {
                for kw in 0..p.k {
                    let wv = w[kh * p.k + kw];
                    let base = (kw % p.s) * phase_len + j0 + kw / p.s;
                    for (rr, a) in acc.iter_mut().enumerate() {
                        let src = &scratch[base + ((oy0 + rr) * p.s + kh) * p.wq..][..L];
                        for i in 0..L {
                            a[i] = fmadd::<FMA>(src[i], wv, a[i]);
                        }
                    }
                }
            }
            let ncol = L.min(p.ow - j0);
            for (rr, a) in acc.iter().enumerate().take(nrows) {
                let at = (oy0 + rr) * p.ow + j0;
                let dst = &mut out[at..][..ncol];
                match r {
                    Some(r) => {
                        for ((d, v), rv) in dst.iter_mut().zip(a).zip(&r[at..][..ncol]) {
                            *d = activate(*v + *rv, act);
                        }
                    }
                    None => {
                        for (d, v) in dst.iter_mut().zip(a) {
                            *d = activate(*v, act);
                        }
                    }
                }
            }
        }
    }
}

multiversion!(fn plane(p: &Plan, x: &[f32], w: &[f32], b: f32, r: Option<&[f32]>, act: Activation, scratch: &mut [f32], out: &mut [f32]) => plane_body);
multiversion!(fn plane_narrow(p: &Plan, x: &[f32], w: &[f32], b: f32, r: Option<&[f32]>, act: Activation, scratch: &mut [f32], out: &mut [f32]) => plane_narrow_body);
