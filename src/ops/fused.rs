//! MobileNetV3's inverted residual (expand 1x1 → depthwise k×k → project 1x1) over bands of rows,
//! so the large intermediate maps never leave the core's cache (AVX-512 and AVX2 CPUs).
//!
//! Run layer by layer, the expand convolution of MobileNetV3's second block writes a 64-channel
//! 112x112 map (3.2 MB per image) that the depthwise convolution reads back: both go to memory,
//! and a freshly allocated output is not in any cache, so every store first fetches its line. Here
//! each task takes an image and a run of output rows, and walks it in bands of a few rows:
//! 1. the expand convolution computes the input rows the band needs (only those it does not
//!    already have from the previous band: the rows the two bands share are moved to the front)
//!    into a per-task buffer `[E][rows][W]` ([`pointwise::conv1x1_band`]);
//! 2. the depthwise convolution runs on those rows, channel by channel ([`depthwise::band`]), into
//!    a per-task buffer `[E][band rows][OW]`, or straight into the output when no project follows;
//! 3. the project convolution (with the block's residual) writes the band of the output.
//!
//! The register blocks are those of the unfused kernels, so the results are the same, bit for bit.
//! Blocks with a SqueezeExcitation fuse steps 1–2 only (its pooled means need the whole map first).

use super::cpu::{level, Level};
use super::depthwise::{self, Plan};
use super::pointwise::{self, OutPtr};
use super::{Activation, Geometry};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A 1x1 convolution of the block: `w: [o, k]` (row-major), `b: [o]`.
#[derive(Clone, Copy, Debug)]
pub struct Pointwise<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub act: Activation,
    pub o: usize,
}

/// The depthwise convolution of the block: `w: [c, k, k]`, padding `k / 2`.
#[derive(Clone, Copy, Debug)]
pub struct Depthwise<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub act: Activation,
    pub k: usize,
    pub stride: usize,
}

/// Largest per-task expand buffer (floats): with the depthwise scratch and the band of the
/// depthwise output it stays within a 1 MiB L2.
const EXPAND_BUF: usize = 64 * 1024;

/// Tasks per thread at batch 1 (two: a thread the host slows down leaves work to the other).
const RUNS_PER_THREAD: usize = 2;

/// Whether [`inverted_residual`] runs on this CPU for these channel counts and this output width.
pub fn available(c: usize, e: usize, o: Option<usize>, ow: usize) -> bool {
    level() != Level::Scalar
        && c > 0
        && pointwise::conv1x1_available(e)
        && o.is_none_or(pointwise::conv1x1_available)
        && ow > 8
}

/// `project(dw(expand(x))) [+ res]` for `x: [n, c, h, w]`, or `dw(expand(x))` without `project`;
/// `expand: None` when the block has none (depthwise straight on `x`). The caller checks
/// [`available`] and the slice lengths (`res` shaped like the output).
#[allow(clippy::too_many_arguments)]
pub fn inverted_residual(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    expand: Option<Pointwise>,
    dw: Depthwise,
    project: Option<Pointwise>,
    res: Option<&[f32]>,
) -> Vec<f32> {
    let e = expand.map_or(c, |p| p.o);
    let (k, s) = (dw.k, dw.stride);
    let pad = k / 2;
    let oh = (h + 2 * pad - k) / s + 1;
    let ow = (w + 2 * pad - k) / s + 1;
    let o = project.map_or(e, |p| p.o);
    if n == 0 {
        return Vec::new();
    }
    assert!(available(c, e, project.map(|p| p.o), ow));
    assert!(x.len() >= n * c * h * w && dw.w.len() >= e * k * k);
    assert!(
        expand.is_none_or(|p| p.w.len() >= e * c) && project.is_none_or(|p| p.w.len() >= o * e)
    );
    assert!(res.is_none_or(|r| project.is_some() && r.len() >= n * o * oh * ow));
    let geom = Geometry {
        n,
        c: e,
        h,
        w,
        o: e,
        k,
        stride: s,
        pad,
        oh,
        ow,
    };
    // Output rows per band: as many as keep the expand buffer small, a multiple of the depthwise
    // register block (4 rows), at least 4.
    let rows_for = |bo: usize| (bo - 1) * s + k;
    let mut bo = 16;
    while bo > 4 && e * rows_for(bo) * w > EXPAND_BUF {
        bo -= 4;
    }
    let bo = bo.min(oh);
    let erows = rows_for(bo).min(h);
    let plan = Plan::band(&geom, bo);
    // Runs of rows per image, as even as can be: [`RUNS_PER_THREAD`] tasks per thread (each run
    // computes the input rows it shares with the run before it again), whole images from a batch
    // of that many tasks up. Splitting by rows, not by whole bands, keeps two threads balanced.
    let threads = rayon::current_num_threads();
    let runs = (RUNS_PER_THREAD * threads)
        .div_ceil(n)
        .clamp(1, oh.div_ceil(4));
    let (hw, ohw) = (h * w, oh * ow);
    let len = n * o * ohw;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    (0..n * runs).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; if expand.is_some() { e * erows * w } else { 0 }],
                vec![0f32; plan.scratch_len()],
                vec![0f32; if project.is_some() { e * bo * ow } else { 0 }],
            )
        },
        |(ebuf, scratch, dbuf), job| {
            let (img, run) = (job / runs, job % runs);
            let (r0, r1) = (run * oh / runs, (run + 1) * oh / runs);
            let ximg = &x[img * c * hw..][..c * hw];
            // input rows lo..hi are in ebuf rows 0..hi-lo
            let (mut lo, mut hi) = (0, 0);
            for oy0 in (r0..r1).step_by(bo) {
                let oy1 = (oy0 + bo).min(r1);
                let a = (oy0 * s).saturating_sub(pad);
                let b = ((oy1 - 1) * s + k - pad).min(h);
                if let Some(ex) = expand {
                    let ld = erows * w;
                    let keep = if hi > a && lo <= a { hi - a } else { 0 };
                    if keep > 0 && a > lo {
                        for ch in 0..e {
                            let base = ch * ld;
                            ebuf.copy_within(base + (a - lo) * w..base + (hi - lo) * w, base);
                        }
                    }
                    // SAFETY: rows a+keep..b of every input channel lie in `ximg`; ebuf holds
                    // `e` rows of `ld >= (b - a) * w` floats; the weights were checked above.
                    unsafe {
                        pointwise::conv1x1_band(
                            ximg[(a + keep) * w..].as_ptr(),
                            hw,
                            ex.w,
                            ex.b,
                            std::ptr::null(),
                            ex.act,
                            c,
                            e,
                            (b - a - keep) * w,
                            ebuf[keep * w..].as_mut_ptr(),
                            ld,
                        );
                    }
                    (lo, hi) = (a, b);
                }
                let rows = oy1 - oy0;
                for ch in 0..e {
                    let src = match expand {
                        Some(_) => &ebuf[ch * erows * w..][..(b - a) * w],
                        None => &ximg[ch * hw + a * w..][..(b - a) * w],
                    };
                    let band_out: &mut [MaybeUninit<f32>] = match project {
                        Some(_) => {
                            // SAFETY: f32 and MaybeUninit<f32> have the same layout; dbuf is
                            // only written here.
                            unsafe {
                                std::slice::from_raw_parts_mut(
                                    dbuf[ch * bo * ow..].as_mut_ptr().cast(),
                                    rows * ow,
                                )
                            }
                        }
                        // SAFETY: rows oy0..oy1 of plane (img, ch) are in bounds of the output
                        // (`len` floats) and written by this task only (tasks differ in image or
                        // rows).
                        None => unsafe {
                            std::slice::from_raw_parts_mut(
                                dst.ptr().add((img * e + ch) * ohw + oy0 * ow).cast(),
                                rows * ow,
                            )
                        },
                    };
                    let bias = dw.b.map_or(0.0, |b| b[ch]);
                    depthwise::band(
                        &plan,
                        h,
                        src,
                        a,
                        oy0,
                        rows,
                        &dw.w[ch * k * k..][..k * k],
                        bias,
                        dw.act,
                        scratch,
                        band_out,
                    );
                }
                if let Some(pr) = project {
                    let at = img * o * ohw + oy0 * ow;
                    let r = res.map_or(std::ptr::null(), |r| r[at..].as_ptr());
                    // SAFETY: dbuf holds `e` rows of `bo * ow >= rows * ow` floats; output and
                    // residual rows oy0..oy1 of the `o` planes of image `img` are in bounds, and
                    // this task is the only one writing them.
                    unsafe {
                        pointwise::conv1x1_band(
                            dbuf.as_ptr(),
                            bo * ow,
                            pr.w,
                            pr.b,
                            r,
                            pr.act,
                            e,
                            o,
                            rows * ow,
                            dst.ptr().add(at),
                            ohw,
                        );
                    }
                }
            }
        },
    );
    // SAFETY: the tasks cover every (image, band) and each band writes all of its rows of every
    // output plane (the depthwise stores or the project convolution), so all `len` floats are
    // initialised.
    unsafe { out.set_len(len) };
    out
}
