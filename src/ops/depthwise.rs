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

/// Output columns per register block (one AVX-512 register, two AVX2 registers).
const LANES: usize = 16;
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
        let owr = g.ow.div_ceil(LANES) * LANES;
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
            plane(&plan, xin, w, b, r, act, scratch, o);
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
    let phase_len = p.hp * p.wq;
    scratch.fill(0.0);
    for iy in 0..p.h {
        let row = &x[iy * p.w..][..p.w];
        let base = (iy + p.pad) * p.wq;
        if p.s == 1 {
            scratch[base + p.pad..][..p.w].copy_from_slice(row);
        } else {
            for (ix, v) in row.iter().enumerate() {
                let pc = ix + p.pad;
                scratch[(pc % p.s) * phase_len + base + pc / p.s] = *v;
            }
        }
    }
    let scratch = &*scratch;
    for oy0 in (0..p.oh).step_by(ROWS) {
        let nrows = ROWS.min(p.oh - oy0);
        for j0 in (0..p.ow).step_by(LANES) {
            let mut acc = [[b; LANES]; ROWS];
            for kh in 0..p.k {
                for kw in 0..p.k {
                    let wv = w[kh * p.k + kw];
                    let base = (kw % p.s) * phase_len + j0 + kw / p.s;
                    for (rr, a) in acc.iter_mut().enumerate() {
                        let src = &scratch[base + ((oy0 + rr) * p.s + kh) * p.wq..][..LANES];
                        for i in 0..LANES {
                            a[i] = fmadd::<FMA>(src[i], wv, a[i]);
                        }
                    }
                }
            }
            let ncol = LANES.min(p.ow - j0);
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
