//! Small GEMMs with the epilogue fused, on AVX-512 and on AVX2 + FMA CPUs (others keep the
//! `gemm`-crate path):
//! - [`conv1x1`]: `Y[n] = act(W[O,K] x X[n][K,P] + b [+ R[n]])`, a 1x1 stride-1 convolution on NCHW
//!   (MobileNetV3's expand/project convolutions). Register blocks of [`MR`] output channels x
//!   [`NV`] x 16 pixels (24 accumulators); the weights are broadcast straight from their row-major
//!   rows, the input rows are read in place, so nothing is packed, and bias/residual/activation are
//!   applied while the block is in registers (no second pass over the output, no zero-filled output);
//!   Not used for one image of fewer than 64 pixels with K > 2*O (the `gemm` crate is faster there),
//!   and on AVX2 only for the shapes where it measured faster (`avx2_preferred`). On AVX2 each
//!   block runs as sub-tiles of 4 channels x 16 pixels (8 accumulators: measured faster than
//!   4 x 24 on the Zen 1 host, where 12 accumulators made the compiler spill one), and the
//!   SqueezeExcitation gate scales the weight's columns per image instead of the input rows;
//! - [`gemv`]: `Y[n, o] = act(W[o,:] . X[n,:] + b[o])` for the 1x1-spatial convolutions of
//!   SqueezeExcitation and the classifier's `Linear` layers (dot products along K, 4 rows x up to
//!   4 images per register block). At batch 1 these layers are bound by streaming the weights.
//!
//! Small calls run on the calling thread (a rayon region costs more than they do); larger ones are
//! split into a few tasks over (image, pixel tile, output-channel group).

use super::cpu::{level, vectors_and_mask, Level};
use super::Activation;
use rayon::prelude::*;

/// Output channels per register block of [`conv1x1`]: every O of MobileNetV3 is a multiple.
pub(crate) const MR: usize = 8;
/// 16-float vectors per register block row of [`conv1x1`].
const NV: usize = 3;
/// Pixels per register block of [`conv1x1`].
const NP: usize = NV * 16;
/// Below this many multiply-adds a call runs on the calling thread.
const SERIAL_MACS: usize = 1 << 18;
/// Weight matrices above this many bytes are taken as not staying in L2 between pixel tiles, and
/// input rows of an image up to this many as staying there (AVX2 task order in [`conv1x1`]).
const WEIGHTS_IN_L2: usize = 128 << 10;
const INPUT_IN_L2: usize = 256 << 10;
/// Below this many multiply-adds [`gemv`] runs on the calling thread. Lower than [`SERIAL_MACS`]:
/// a GEMV streams its weights from memory, and two threads stream them faster than one.
const GEMV_SERIAL_MACS: usize = 1 << 15;

/// Whether [`conv1x1`] is the faster kernel for this 1x1 convolution: on AVX-512 CPUs, except a
/// single image with few pixels and a deep reduction (MobileNetV3's 7x7 project convolutions, K =
/// 672 or 960), where the `gemm` crate's packed kernel measured 10-15% faster.
pub(crate) fn conv1x1_preferred(n: usize, k: usize, o: usize, p: usize) -> bool {
    conv1x1_available(o)
        && !(n == 1 && p < 64 && k > 2 * o)
        && (level() != Level::Avx2 || avx2_preferred(k, o, p))
}

/// On AVX2, [`conv1x1`] measured faster than the `gemm` crate on MobileNetV3's 1x1 layers (few
/// channels on the large maps, any up to 160 x 960 on maps of 14x14 to 8x8), and even or slower
/// per layer on Wide ResNet's (64+ channels on 28x28 and 56x56 maps) and on 7x7 maps.
fn avx2_preferred(k: usize, o: usize, p: usize) -> bool {
    p >= 64 && k * o <= 160 * 960 && (k.min(o) < 64 || p <= 196)
}

/// Whether [`conv1x1`] handles `o` output channels on this CPU (AVX-512 or AVX2 + FMA).
pub(crate) fn conv1x1_available(o: usize) -> bool {
    o > 0 && o.is_multiple_of(MR) && level() != Level::Scalar
}

/// Whether [`gemv`] runs on this CPU (AVX-512 or AVX2 + FMA).
pub(crate) fn gemv_available() -> bool {
    level() != Level::Scalar
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks only write disjoint index ranges (see the callers), and the buffer outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, not a field access, so closures capture the whole (Send + Sync) wrapper.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Run `f(0..jobs)` serially or on rayon's pool.
pub(crate) fn run_jobs(jobs: usize, serial: bool, f: impl Fn(usize) + Send + Sync) {
    if serial || jobs <= 1 {
        (0..jobs).for_each(f);
    } else {
        (0..jobs).into_par_iter().for_each(f);
    }
}

/// `act(W x X + b [+ R])` per image: `x: [n, k, p]`, `w: [o, k]`, `res: [n, o, p]`, out `[n, o, p]`.
/// The caller checks [`conv1x1_available`] and the slice lengths.
#[allow(clippy::too_many_arguments)]
pub fn conv1x1(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    n: usize,
    k: usize,
    o: usize,
    p: usize,
) -> Vec<f32> {
    conv1x1_scaled(x, None, w, bias, res, act, n, k, o, p)
}

/// [`conv1x1`] of the input with its channels scaled: `act(W x diag(g[n]) X[n] + b [+ R[n]])` for
/// `g: [n, k]` (SqueezeExcitation's gate folded into the following 1x1 convolution: each input
/// row is multiplied by its gate as it is loaded, so `x * g` is never written).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv1x1_scaled(
    x: &[f32],
    g: Option<&[f32]>,
    w: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    n: usize,
    k: usize,
    o: usize,
    p: usize,
) -> Vec<f32> {
    let len = n * o * p;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if let (Some(g), Level::Avx2) = (g, level()) {
        // AVX2: scale the weight's columns per image (`W diag(g[n])`, o*k multiplies) rather
        // than every input row as it is loaded (one multiply per 4 multiply-adds with 4-row
        // sub-tiles, and each row is loaded twice per 8-channel block).
        assert!(g.len() >= n * k && w.len() >= o * k && x.len() >= n * k * p);
        assert!(res.is_none_or(|r| r.len() >= len));
        let mut wg = vec![0f32; o * k];
        for img in 0..n {
            let gi = &g[img * k..][..k];
            // Row by row with plain zips, so that the multiplies vectorise: an iterator chain
            // flattened over the rows (`extend(flat_map(..))`) took 0.33 of the 0.84 ms of the
            // 672 -> 112 project conv on a Zen 3.
            for (dr, wr) in wg.chunks_exact_mut(k).zip(w[..o * k].chunks_exact(k)) {
                for ((d, &wv), &gv) in dr.iter_mut().zip(wr).zip(gi) {
                    *d = wv * gv;
                }
            }
            let xi = &x[img * k * p..][..k * p];
            let ri = res.map(|r| &r[img * o * p..][..o * p]);
            // SAFETY: `out` has room for `len` floats; image `img` writes its `o * p` of them.
            unsafe {
                let dst = out.as_mut_ptr().add(img * o * p);
                conv1x1_raw(xi, None, &wg, bias, ri, act, 1, k, o, p, dst);
            }
        }
        // SAFETY: every image's outputs were written above.
        unsafe { out.set_len(len) };
        return out;
    }
    // SAFETY: `out` has room for the `len` floats `conv1x1_raw` writes, all of them.
    unsafe {
        conv1x1_raw(x, g, w, bias, res, act, n, k, o, p, out.as_mut_ptr());
        out.set_len(len);
    }
    out
}

/// [`conv1x1`] into `out_ptr`.
///
/// # Safety
/// `out_ptr` must be valid for writing `n * o * p` floats (all of them are written) and not alias
/// `x`, `w`, `bias` or `res`.
#[allow(clippy::too_many_arguments)]
unsafe fn conv1x1_raw(
    x: &[f32],
    gate: Option<&[f32]>,
    w: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    n: usize,
    k: usize,
    o: usize,
    p: usize,
    out_ptr: *mut f32,
) {
    let len = n * o * p;
    assert!(conv1x1_available(o) && k > 0);
    assert!(x.len() >= n * k * p && w.len() >= o * k);
    assert!(gate.is_none_or(|g| g.len() >= n * k));
    assert!(bias.is_none_or(|b| b.len() >= o) && res.is_none_or(|r| r.len() >= len));
    let ptiles = p.div_ceil(NP);
    let oblocks = o / MR;
    // On AVX2 CPUs (smaller caches, and 8-float vectors: each weight is used for fewer pixels), a
    // weight matrix too large for L2 is streamed once per pixel tile when every task takes one
    // tile: there a task takes all the pixel tiles of its image for each 8-channel block instead
    // (weights read once; the image's input rows, if they fit in L2, read from there).
    let span = if level() == Level::Avx2 && o * k * 4 > WEIGHTS_IN_L2 && k * p * 4 <= INPUT_IN_L2 {
        ptiles
    } else {
        1
    };
    let ptasks = ptiles / span;
    // Enough tasks for two threads to balance, each a whole number of register blocks.
    let base = n * ptasks;
    let groups = if base >= 8 {
        1
    } else {
        8usize.div_ceil(base).min(oblocks)
    };
    let per_group = oblocks.div_ceil(groups);
    let groups = oblocks.div_ceil(per_group);
    let serial = n * o * k * p < SERIAL_MACS;
    let dst = OutPtr(out_ptr);
    run_jobs(base * groups, serial, |job| {
        let (img, rest) = (job / (ptasks * groups), job % (ptasks * groups));
        let (pt, g) = (rest / groups, rest % groups);
        let ob0 = g * per_group;
        let ob1 = (ob0 + per_group).min(oblocks);
        let xs = &x[img * k * p..][..k * p];
        let gs = gate.map(|g| &g[img * k..][..k]);
        for ob in ob0..ob1 {
            let o0 = ob * MR;
            let bs = bias.map(|b| &b[o0..o0 + MR]);
            let rs = res.map(|r| &r[(img * o + o0) * p..][..MR * p]);
            for t in pt * span..(pt + 1) * span {
                let p0 = t * NP;
                let np = NP.min(p - p0);
                // SAFETY: rows o0..o0+MR, pixels p0..p0+np of image `img` are in bounds of the
                // `len`-float buffer (caller's contract) and written by this task only (tasks
                // differ in image, pixel tiles or output-channel group). Together the tasks write
                // all of it.
                unsafe {
                    let optr = dst.ptr().add((img * o + o0) * p + p0);
                    block(xs, gs, w, bs, rs, act, k, p, o0, p0, np, optr);
                }
            }
        }
    });
}

/// One register block: channels `o0..o0+MR`, pixels `p0..p0+np` (np <= NP) of one image.
///
/// # Safety
/// `out` must be valid for writing rows `0..MR` (stride `p`) of `np` floats; AVX-512 or AVX2 +
/// FMA present.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn block(
    x: &[f32],
    gate: Option<&[f32]>,
    w: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    k: usize,
    p: usize,
    o0: usize,
    p0: usize,
    np: usize,
    out: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let a = Args {
            x: x[p0..].as_ptr(),
            gate: gate.map_or(std::ptr::null(), |g| g.as_ptr()),
            w: w[o0 * k..].as_ptr(),
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            res: res.map_or(std::ptr::null(), |r| r[p0..].as_ptr()),
            out,
            k,
            ldx: p,
            ldo: p,
            act,
        };
        // SAFETY: the caller guarantees the SIMD level and the output rows; the input rows
        // x[kk*p + p0 ..][..np] for kk < k lie in `x` (p0 + np <= p), the weight rows o0..o0+MR
        // in `w`, the residual rows like the output rows.
        tile(&a, np, gate.is_some());
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, gate, w, bias, res, act, k, p, o0, p0, np, out);
        unreachable!("conv1x1 is only dispatched on AVX-512 / AVX2 CPUs");
    }
}

/// Pixels per AVX2 sub-tile of a register block (2 vectors of 8).
#[cfg(target_arch = "x86_64")]
const NP2: usize = 16;
/// Output channels per AVX2 sub-tile (4 rows x 2 vectors: 8 of the 16 registers accumulate).
#[cfg(target_arch = "x86_64")]
const MR2: usize = 4;

/// One register block of `MR` channels x `np <= NP` pixels at `a`, on the CPU's SIMD level:
/// on AVX-512 one tile of `MR` x up to 3x16; on AVX2 sub-tiles of 4 channels x up to 2x8
/// pixels. Every output is `bias + sum over kk in order` of one FMA each, then the residual and
/// the activation, on either level: the same floats. `gated` (input rows scaled by `a.gate`)
/// only on AVX-512: on AVX2 [`conv1x1_scaled`] scales the weight instead.
///
/// # Safety
/// AVX-512 or AVX2 + FMA present; the pointers of `a` valid for `MR` rows of `np` pixels.
#[cfg(target_arch = "x86_64")]
unsafe fn tile(a: &Args, np: usize, gated: bool) {
    if level() == Level::Avx512 {
        let (nv, mask) = vectors_and_mask(np);
        // SAFETY: AVX-512 present; loads and stores past `np` are masked out.
        match (nv, gated) {
            (1, false) => avx512::tile::<1, false>(a, mask),
            (2, false) => avx512::tile::<2, false>(a, mask),
            (_, false) => avx512::tile::<NV, false>(a, mask),
            (1, true) => avx512::tile::<1, true>(a, mask),
            (2, true) => avx512::tile::<2, true>(a, mask),
            (_, true) => avx512::tile::<NV, true>(a, mask),
        }
        return;
    }
    assert!(!gated, "the AVX2 1x1 tile takes pre-scaled weights");
    for s0 in (0..np).step_by(NP2) {
        let n = NP2.min(np - s0);
        let nv = n.div_ceil(8);
        let tail = n - (nv - 1) * 8;
        for r0 in (0..MR).step_by(MR2) {
            let sub = Args {
                x: a.x.add(s0),
                w: a.w.add(r0 * a.k),
                bias: row_bias(a.bias, r0),
                res: if a.res.is_null() {
                    a.res
                } else {
                    a.res.add(r0 * a.ldo + s0)
                },
                out: a.out.add(r0 * a.ldo + s0),
                ..*a
            };
            // SAFETY: AVX2 + FMA present (level is not Scalar here); rows r0..r0+4 and pixels
            // s0..s0+n lie inside the block; loads and stores past `n` are masked out.
            match nv {
                1 => avx2::tile::<1>(&sub, tail),
                _ => avx2::tile::<2>(&sub, tail),
            }
        }
    }
}

/// [`conv1x1`] of one band of `np` pixels of one image, on the calling thread, with its own row
/// strides: `out[i*ldo + j] = act(sum_kk w[i, kk] x[kk*ldx + j] + b[i] [+ res[i*ldo + j]])` for
/// `i < o`, `j < np` (the fused inverted residual runs its expand and project convolutions on bands
/// of rows this way, [`super::fused`]). Same register blocks, so the same results as [`conv1x1`].
///
/// # Safety
/// AVX-512 present and `o` a multiple of [`MR`] ([`conv1x1_available`]); `x` valid for reading `k`
/// rows of `np` floats at stride `ldx`; `out` valid for writing, and `res` (unless null) for
/// reading, `o` rows of `np` floats at stride `ldo`; `w` holds `o * k` floats, `bias` `o`; `out`
/// does not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv1x1_band(
    x: *const f32,
    ldx: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    res: *const f32,
    act: Activation,
    k: usize,
    o: usize,
    np: usize,
    out: *mut f32,
    ldo: usize,
) {
    debug_assert!(conv1x1_available(o) && w.len() >= o * k && bias.is_none_or(|b| b.len() >= o));
    #[cfg(target_arch = "x86_64")]
    for p0 in (0..np).step_by(NP) {
        let n = NP.min(np - p0);
        for o0 in (0..o).step_by(MR) {
            let a = Args {
                x: x.add(p0),
                gate: std::ptr::null(),
                w: w[o0 * k..].as_ptr(),
                bias: bias.map_or(std::ptr::null(), |b| b[o0..].as_ptr()),
                res: if res.is_null() {
                    res
                } else {
                    res.add(o0 * ldo + p0)
                },
                out: out.add(o0 * ldo + p0),
                k,
                ldx,
                ldo,
                act,
            };
            // SAFETY: the caller's contract covers rows o0..o0+MR and pixels p0..p0+n.
            tile(&a, n, false);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, ldx, w, bias, res, act, k, o, np, out, ldo);
        unreachable!("conv1x1_band is only dispatched on AVX-512 / AVX2 CPUs");
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Args {
    /// `x[0, p0]` of the image (row stride `ldx`).
    x: *const f32,
    /// `k` input-channel gates of the image, or null (used only by `tile::<_, true>`).
    gate: *const f32,
    /// Row `o0` of the weights (row stride `k`).
    w: *const f32,
    /// `MR` biases or null.
    bias: *const f32,
    /// Residual at (o0, p0) (row stride `ldo`) or null.
    res: *const f32,
    /// Output at (o0, p0) (row stride `ldo`).
    out: *mut f32,
    k: usize,
    /// Row stride of `x`.
    ldx: usize,
    /// Row stride of `out` and `res`.
    ldo: usize,
    act: Activation,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Activation, Args, MR};
    use std::arch::x86_64::*;

    /// `v * clamp(v + 3, 0, 6) / 6` (times 1/6: a division per vector would cost as much as the
    /// multiply-adds of a small-K block; within an ulp of [`super::super::cpu::activate`]).
    #[inline(always)]
    unsafe fn act(v: __m512, a: Activation) -> __m512 {
        match a {
            Activation::None => v,
            Activation::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
            Activation::Hardswish => {
                let t = _mm512_add_ps(v, _mm512_set1_ps(3.0));
                let t = _mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), _mm512_set1_ps(6.0));
                _mm512_mul_ps(v, _mm512_mul_ps(t, _mm512_set1_ps(1.0 / 6.0)))
            }
        }
    }

    /// # Safety
    /// See `super::block`: AVX-512 present, all pointers valid for the rows/lanes used.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const V: usize, const GATED: bool>(a: &Args, mask: u16) {
        let mask = mask as __mmask16;
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        if !a.bias.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
                *row = [_mm512_set1_ps(*a.bias.add(i)); V];
            }
        }
        let (w, k) = (a.w, a.k);
        for kk in 0..k {
            let xr = a.x.add(kk * a.ldx);
            let mut xv = [_mm512_setzero_ps(); V];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = if j + 1 < V {
                    _mm512_loadu_ps(xr.add(16 * j))
                } else {
                    _mm512_maskz_loadu_ps(mask, xr.add(16 * j))
                };
            }
            if GATED {
                let g = _mm512_set1_ps(*a.gate.add(kk));
                for v in xv.iter_mut() {
                    *v = _mm512_mul_ps(*v, g);
                }
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let wb = _mm512_set1_ps(*w.add(i * k + kk));
                for (c, v) in row.iter_mut().zip(&xv) {
                    *c = _mm512_fmadd_ps(wb, *v, *c);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let o = a.out.add(i * a.ldo);
            let r = a.res.wrapping_add(i * a.ldo);
            for (j, c) in row.iter().enumerate() {
                let last = j + 1 == V;
                let mut v = *c;
                if !a.res.is_null() {
                    let rv = if last {
                        _mm512_maskz_loadu_ps(mask, r.add(16 * j))
                    } else {
                        _mm512_loadu_ps(r.add(16 * j))
                    };
                    v = _mm512_add_ps(v, rv);
                }
                let v = act(v, a.act);
                if last {
                    _mm512_mask_storeu_ps(o.add(16 * j), mask, v);
                } else {
                    _mm512_storeu_ps(o.add(16 * j), v);
                }
            }
        }
    }

    /// `out[j*ldo + r] = act(w[r,:] . x[j,:] + b[r])` for `r < R`, `j < B`.
    ///
    /// # Safety
    /// AVX-512 present; `w` valid for `R` rows of `k` floats (stride `k`), `x` for `B` rows
    /// (stride `k`), `bias` for `R` floats or null, `out` as indexed above.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dots<const R: usize, const B: usize>(
        w: *const f32,
        x: *const f32,
        k: usize,
        bias: *const f32,
        act_kind: Activation,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); B]; R];
        let full = k / 16;
        for c in 0..full {
            let mut xv = [_mm512_setzero_ps(); B];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(x.add(j * k + 16 * c));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let wv = _mm512_loadu_ps(w.add(r * k + 16 * c));
                for (a, v) in row.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(wv, *v, *a);
                }
            }
        }
        let rem = k - full * 16;
        if rem > 0 {
            let m = ((1u32 << rem) - 1) as __mmask16;
            let mut xv = [_mm512_setzero_ps(); B];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(m, x.add(j * k + 16 * full));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let wv = _mm512_maskz_loadu_ps(m, w.add(r * k + 16 * full));
                for (a, v) in row.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(wv, *v, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let b = if bias.is_null() { 0.0 } else { *bias.add(r) };
            for (j, a) in row.iter().enumerate() {
                let s = _mm512_reduce_add_ps(*a) + b;
                *out.add(j * ldo + r) = super::super::cpu::activate(s, act_kind);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Activation, Args, MR2};
    use crate::ops::cpu::lanes8 as lanes;
    use std::arch::x86_64::*;

    /// The same formula as `avx512::act`, on 8 lanes.
    #[inline(always)]
    unsafe fn act(v: __m256, a: Activation) -> __m256 {
        match a {
            Activation::None => v,
            Activation::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
            Activation::Hardswish => {
                let t = _mm256_add_ps(v, _mm256_set1_ps(3.0));
                let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(6.0));
                _mm256_mul_ps(v, _mm256_mul_ps(t, _mm256_set1_ps(1.0 / 6.0)))
            }
        }
    }

    /// `V` vectors of a row at `p`, the last one `tail` lanes (the rest read as zero).
    #[inline(always)]
    unsafe fn load_row<const V: usize>(p: *const f32, tail: usize, m: __m256i) -> [__m256; V] {
        let mut v = [_mm256_setzero_ps(); V];
        for (j, x) in v.iter_mut().enumerate() {
            *x = if j + 1 < V || tail == 8 {
                _mm256_loadu_ps(p.add(8 * j))
            } else {
                _mm256_maskload_ps(p.add(8 * j), m)
            };
        }
        v
    }

    /// `MR2` output channels x `V` vectors of 8 pixels (the last `tail` lanes wide) of
    /// `super::tile`'s block: 12 accumulators at `V == 3`, each weight broadcast from its row.
    ///
    /// # Safety
    /// AVX2 + FMA present; the pointers of `a` valid for `MR2` rows of `8 * (V - 1) + tail`
    /// pixels (nothing past them is read or written).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const V: usize>(a: &Args, tail: usize) {
        let m = lanes(tail);
        let mut acc = [[_mm256_setzero_ps(); V]; MR2];
        if !a.bias.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
                *row = [_mm256_set1_ps(*a.bias.add(i)); V];
            }
        }
        let (w, k) = (a.w, a.k);
        for kk in 0..k {
            let xv = load_row::<V>(a.x.add(kk * a.ldx), tail, m);
            for (i, row) in acc.iter_mut().enumerate() {
                let wb = _mm256_set1_ps(*w.add(i * k + kk));
                for (c, v) in row.iter_mut().zip(&xv) {
                    *c = _mm256_fmadd_ps(wb, *v, *c);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let o = a.out.add(i * a.ldo);
            let r = if a.res.is_null() {
                None
            } else {
                Some(load_row::<V>(a.res.add(i * a.ldo), tail, m))
            };
            for (j, c) in row.iter().enumerate() {
                let mut v = *c;
                if let Some(r) = &r {
                    v = _mm256_add_ps(v, r[j]);
                }
                let v = act(v, a.act);
                if j + 1 < V || tail == 8 {
                    _mm256_storeu_ps(o.add(8 * j), v);
                } else {
                    _mm256_maskstore_ps(o.add(8 * j), m, v);
                }
            }
        }
    }

    /// The sum of the 8 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// One 8-float chunk `c` of [`dots`]: `acc[r][j] += w[r, 8c..] * x[j, 8c..]`.
    #[inline(always)]
    unsafe fn step<const R: usize, const B: usize>(
        acc: &mut [[__m256; B]; R],
        w: *const f32,
        x: *const f32,
        k: usize,
        c: usize,
    ) {
        let mut xv = [_mm256_setzero_ps(); B];
        for (j, v) in xv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(x.add(j * k + 8 * c));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let wv = _mm256_loadu_ps(w.add(r * k + 8 * c));
            for (a, v) in row.iter_mut().zip(&xv) {
                *a = _mm256_fmadd_ps(wv, *v, *a);
            }
        }
    }

    /// `out[j*ldo + r] = act(w[r,:] . x[j,:] + b[r])` for `r < R`, `j < B` (`R * B <= 8`). One
    /// accumulator chain per (row, image) whatever `B` is, so an image gets the same floats alone
    /// or in a batch (the server's answers do not depend on how requests were batched).
    ///
    /// # Safety
    /// AVX2 + FMA present; `w` valid for `R` rows of `k` floats (stride `k`), `x` for `B` rows
    /// (stride `k`), `bias` for `R` floats or null, `out` as indexed above.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dots<const R: usize, const B: usize>(
        w: *const f32,
        x: *const f32,
        k: usize,
        bias: *const f32,
        act_kind: Activation,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); B]; R];
        let full = k / 8;
        for c in 0..full {
            step(&mut acc, w, x, k, c);
        }
        let rem = k - full * 8;
        if rem > 0 {
            let m = lanes(rem);
            let mut xv = [_mm256_setzero_ps(); B];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = _mm256_maskload_ps(x.add(j * k + 8 * full), m);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let wv = _mm256_maskload_ps(w.add(r * k + 8 * full), m);
                for (a, v) in row.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(wv, *v, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let b = if bias.is_null() { 0.0 } else { *bias.add(r) };
            for (j, v) in row.iter().enumerate() {
                let s = hsum(*v) + b;
                *out.add(j * ldo + r) = super::super::cpu::activate(s, act_kind);
            }
        }
    }
}

/// `bias + r`, or null without a bias.
#[cfg(target_arch = "x86_64")]
fn row_bias(bias: *const f32, r: usize) -> *const f32 {
    if bias.is_null() {
        bias
    } else {
        bias.wrapping_add(r)
    }
}

/// Rows of [`gemv`]'s register block from three images up (from two on AVX2; two images on
/// AVX-512: [`GR_TWO`]; one image: one row at a time), and images per block (AVX-512; AVX2 takes
/// [`GB2`] images: 4 rows x 4 images of accumulators would not fit its 16 registers).
///
/// A batch-1 pass streams its GEMV weights from memory, and how many rows a block reads at once
/// decides how fast (an 18 MB GEMV in C after a 64 MB eviction, on the Zen 4; 960-float rows: 4
/// rows at a time 1.41-1.98 ms, 8 rows 0.96-1.56, one row 0.94-1.20; 240-float rows, as in
/// SqueezeExcitation's second conv: 8 rows 1.51-2.16, one row 0.93-1.37; a plain sequential read
/// 0.74-1.56): one row at a time reads the weight as one sequential stream, which the hardware
/// prefetchers follow best.
const GR: usize = 4;
/// Rows of [`gemv`]'s register block for two images on AVX-512 (16 accumulators).
const GR_TWO: usize = 8;
const GB: usize = 4;
const GB2: usize = 2;

/// `out[j, r] = act(w[r,:] . x[j,:] + bias[r])` for `x: [n, k]`, `w: [o, k]`, out `[n, o]`.
/// The caller checks [`gemv_available`].
pub(crate) fn gemv(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    n: usize,
    k: usize,
    o: usize,
) -> Vec<f32> {
    let len = n * o;
    assert!(gemv_available() && k > 0);
    assert!(x.len() >= n * k && w.len() >= o * k && bias.is_none_or(|b| b.len() >= o));
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let serial = n * o * k < GEMV_SERIAL_MACS;
    let wide = level() == Level::Avx512;
    let gr = match (n, wide) {
        (1, _) => 1,
        (2, true) => GR_TWO,
        _ => GR,
    };
    // Row groups: a few per thread so both threads stream half of the weights each.
    let rblocks = o.div_ceil(gr);
    let groups = if serial { 1 } else { rblocks.min(8) };
    let per_group = rblocks.div_ceil(groups);
    let groups = rblocks.div_ceil(per_group);
    let gb = if wide { GB } else { GB2 };
    let dst = OutPtr(out.as_mut_ptr());
    run_jobs(groups, serial, |g| {
        let r0 = g * per_group * gr;
        let r1 = ((g + 1) * per_group * gr).min(o);
        for j0 in (0..n).step_by(gb) {
            let nb = gb.min(n - j0);
            for rb in (r0..r1).step_by(gr) {
                let nr = gr.min(r1 - rb);
                // SAFETY: rows rb..rb+nr of `w`, images j0..j0+nb of `x` and `bias[rb..]` are in
                // bounds (asserted above); the outputs (j, r) for those rows/images lie in the
                // `len`-float buffer and only this task writes rows r0..r1. AVX-512 (`wide`) or
                // AVX2 + FMA is present (gemv_available).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let wp = w[rb * k..].as_ptr();
                    let xp = x[j0 * k..].as_ptr();
                    let bp = bias.map_or(std::ptr::null(), |b| b[rb..].as_ptr());
                    let op = dst.ptr().add(j0 * o + rb);
                    macro_rules! go {
                        ($m:ident, $r:literal, $b:literal) => {
                            $m::dots::<$r, $b>(wp, xp, k, bp, act, op, o)
                        };
                    }
                    // rows one by one (a last block of fewer rows), each over `B` images at once
                    macro_rules! rows {
                        ($m:ident, $b:literal) => {
                            for r in 0..nr {
                                $m::dots::<1, $b>(
                                    wp.add(r * k),
                                    xp,
                                    k,
                                    row_bias(bp, r),
                                    act,
                                    op.add(r),
                                    o,
                                )
                            }
                        };
                    }
                    match (wide, nr, nb) {
                        (true, 1, 1) => go!(avx512, 1, 1),
                        (true, 8, 2) => go!(avx512, 8, 2),
                        (true, 4, 4) => go!(avx512, 4, 4),
                        (true, 4, 3) => go!(avx512, 4, 3),
                        (true, 4, 2) => go!(avx512, 4, 2),
                        (true, 4, 1) => go!(avx512, 4, 1),
                        (true, _, 4) => rows!(avx512, 4),
                        (true, _, 2) => rows!(avx512, 2),
                        (true, _, 1) => rows!(avx512, 1),
                        (false, 1, 1) => go!(avx2, 1, 1),
                        (false, 4, 2) => go!(avx2, 4, 2),
                        (false, 4, 1) => go!(avx2, 4, 1),
                        (false, _, 1) => rows!(avx2, 1),
                        (false, _, 2) => rows!(avx2, 2),
                        _ => {
                            for r in 0..nr {
                                for j in 0..nb {
                                    let (w1, x1, b1, o1) = (
                                        wp.add(r * k),
                                        xp.add(j * k),
                                        row_bias(bp, r),
                                        op.add(j * o + r),
                                    );
                                    if wide {
                                        avx512::dots::<1, 1>(w1, x1, k, b1, act, o1, o);
                                    } else {
                                        avx2::dots::<1, 1>(w1, x1, k, b1, act, o1, o);
                                    }
                                }
                            }
                        }
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (rb, nr, nb, &dst, wide);
                    unreachable!("gemv is only dispatched on AVX-512 / AVX2 CPUs");
                }
            }
        }
    });
    // SAFETY: every (image, row) output was written above.
    unsafe { out.set_len(len) };
    out
}
