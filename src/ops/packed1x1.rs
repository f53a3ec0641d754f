//! 1x1 stride-1 convolutions on NCHW with a weight packed once (AVX-512 only), for Wide
//! ResNet-50-2's conv1/conv3 layers: `Y[n] = act(W[O,K] x X[n][K,P] + b [+ R[n]])`. The weight is
//! kept only in its packed form ([`PointwiseWeight`], same size as the original, which the model
//! drops), in one of two layouts ([`Layout`]), each with its kernel:
//!
//! - [`conv1x1_packed`] on [`pack`]ed panels `[O/MR][K][MR]`: register blocks of [`MR`] output
//!   channels x up to 3 x 16 pixels (as [`super::pointwise::conv1x1`], 24 accumulators), but the
//!   `MR` broadcasts of a reduction step read one 32-byte run instead of `MR` rows `K` apart, the
//!   reduction is split into blocks of [`KC`] input channels (a block of the input tile, 128 rows x
//!   48 pixels = 24 KiB, stays in L1 while every output-channel block of the task runs over it;
//!   partial sums go through the output: bias on the first block, residual and activation after
//!   the last), and the pixels are split into tiles of balanced vector counts (49: 32 + 17, not
//!   48 + 1). Measured faster from 14x14 up;
//! - [`conv1x1_cv`] on [`pack_cv`]ed panels of 48 output channels `[K][48]`: register blocks of
//!   3 x 16 output channels x up to 8 pixels (24 accumulators), the pixels broadcast from the input
//!   rows, so no vector lane is lost to the pixel remainder (7x7: 49 = 7 tiles of 7); bias,
//!   residual (gathered) and activation are applied with channels in lanes and the outputs are
//!   scattered. Measured faster on 7x7 maps (deep K: the scatter costs little there).
//!
//! [`conv1x1_cv_deep`] runs the channel-vector layout over reductions too deep for a panel to stay
//! in L2 (the im2col matrices of the 3x3 convolutions with 7x7 outputs, [`KxkCvWeight`]).
//!
//! Interleaved single-thread A/B against the unpacked kernel: `examples/pack1x1_ab.rs`.

use super::cpu::{level, vectors_and_mask, Level};
use super::pointwise::{run_jobs, OutPtr};
use super::Activation;
use rayon::prelude::*;

/// Output channels per register block and per weight panel.
pub const MR: usize = 8;
/// Most 16-float vectors per register block row.
const NV: usize = 3;
/// Input channels per reduction block.
pub const KC: usize = 128;
/// Most weight floats per output-channel group (512 KiB): a task's group of the weight stays in
/// L2 while the task's thread runs it over every pixel tile.
const GROUP_WEIGHT_FLOATS: usize = 1 << 17;
/// Below this many multiply-adds a call runs on the calling thread.
const SERIAL_MACS: usize = 1 << 18;

/// Whether [`conv1x1_packed`] handles `o` output channels on this CPU.
pub fn available(o: usize) -> bool {
    o > 0 && o.is_multiple_of(MR) && level() == Level::Avx512
}

/// `w: [O, K]` row-major into panels `[O/MR][K][MR]` (`O` a multiple of [`MR`]).
pub fn pack(w: &[f32], o: usize, k: usize) -> Vec<f32> {
    assert!(o.is_multiple_of(MR) && w.len() >= o * k);
    let mut out = vec![0f32; o * k];
    out.par_chunks_mut(MR * k)
        .enumerate()
        .for_each(|(ob, panel)| {
            for (kk, dst) in panel.chunks_exact_mut(MR).enumerate() {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = w[(ob * MR + i) * k + kk];
                }
            }
        });
    out
}

/// Pixel tiles `(start, len)` of `p` pixels: `ceil(p/16)` vectors split as evenly as possible into
/// tiles of at most [`NV`] vectors, the larger ones first.
fn pixel_tiles(p: usize) -> Vec<(usize, usize)> {
    even_tiles(p, 16, NV)
}

/// `p` items in `unit`-sized groups, split as evenly as possible into tiles of at most `max_units`
/// units, the larger tiles first: `(start, len)` of each (the last unit may be partial).
fn even_tiles(p: usize, unit: usize, max_units: usize) -> Vec<(usize, usize)> {
    let units = p.div_ceil(unit);
    let nt = units.div_ceil(max_units);
    let mut tiles = Vec::with_capacity(nt);
    let mut start = 0;
    for t in 0..nt {
        let u = units / nt + usize::from(t < units % nt);
        let len = (unit * u).min(p - start);
        tiles.push((start, len));
        start += len;
    }
    tiles
}

/// `act(W x X + b [+ R])` per image: `x: [n, k, p]`, `wp`: [`pack`]ed `[o, k]`, `res: [n, o, p]`,
/// out `[n, o, p]`. Panics unless [`available`]`(o)` and the slices are long enough.
#[allow(clippy::too_many_arguments)]
pub fn conv1x1_packed(
    x: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    n: usize,
    k: usize,
    o: usize,
    p: usize,
) -> Vec<f32> {
    let len = n * o * p;
    assert!(available(o) && k > 0 && p > 0);
    assert!(x.len() >= n * k * p && wp.len() >= o * k);
    assert!(bias.is_none_or(|b| b.len() >= o) && res.is_none_or(|r| r.len() >= len));
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let tiles = pixel_tiles(p);
    let ptiles = tiles.len();
    let oblocks = o / MR;
    let base = n * ptiles;
    let groups = if base >= 8 { 1 } else { 8usize.div_ceil(base) };
    let groups = groups
        .max((o * k).div_ceil(GROUP_WEIGHT_FLOATS))
        .min(oblocks);
    let per_group = oblocks.div_ceil(groups);
    let groups = oblocks.div_ceil(per_group);
    // Reduction blocks of equal size, about KC each (one block when K <= 1.5 KC).
    let nkb = (k + KC / 2) / KC;
    let nkb = nkb.max(1);
    let kc = k.div_ceil(nkb);
    let serial = n * o * k * p < SERIAL_MACS;
    let dst = OutPtr(out.as_mut_ptr());
    let job = |j: usize| {
        // The group varies slowest: rayon hands each thread a contiguous range of jobs, so a
        // thread keeps to its groups' weights (in its L2) across pixel tiles and images.
        let (g, rest) = (j / base, j % base);
        let (img, pt) = (rest / ptiles, rest % ptiles);
        let (p0, np) = tiles[pt];
        let ob0 = g * per_group;
        let ob1 = (ob0 + per_group).min(oblocks);
        let xs = &x[img * k * p..][..k * p];
        let mut k0 = 0;
        while k0 < k {
            let kn = kc.min(k - k0);
            let (first, last) = (k0 == 0, k0 + kn == k);

            for ob in ob0..ob1 {
                let o0 = ob * MR;
                let bs = if first {
                    bias.map(|b| &b[o0..o0 + MR])
                } else {
                    None
                };
                let rs = if last {
                    res.map(|r| &r[(img * o + o0) * p..][..MR * p])
                } else {
                    None
                };
                let ws = &wp[(ob * k + k0) * MR..][..kn * MR];
                // The next panel's residual rows (read after the last block) and output rows
                // (first written after the first block) at this tile.
                let has_next = ob + 1 < ob1;
                let next_res = match res {
                    Some(r) if last && has_next => r[(img * o + o0 + MR) * p + p0..].as_ptr(),
                    _ => std::ptr::null(),
                };
                let next_out = (first && has_next).then(|| (img * o + o0 + MR) * p + p0);
                // On the first panel of a reduction block, the input rows the task reads next:
                // the next reduction block's, or after the last one the next pixel tile's first
                // block (the job rayon most likely hands this thread next).
                let next_x = if ob != ob0 {
                    std::ptr::null()
                } else if k0 + kn < k {
                    xs[(k0 + kn) * p + p0..].as_ptr()
                } else if pt + 1 < ptiles {
                    xs[tiles[pt + 1].0..].as_ptr()
                } else {
                    std::ptr::null()
                };
                // The weights of the block this task runs next: the next panel of the group at
                // this reduction block, else the group's first panel at the next one.
                let next_w = if has_next {
                    wp[((ob + 1) * k + k0) * MR..].as_ptr()
                } else if k0 + kn < k {
                    wp[(ob0 * k + k0 + kn) * MR..].as_ptr()
                } else {
                    std::ptr::null()
                };
                // SAFETY: rows o0..o0+MR, pixels p0..p0+np of image `img` are in bounds of the
                // `len`-float buffer and written by this task only (tasks differ in image, pixel
                // tile or output-channel group); the first reduction block writes all of them,
                // later blocks read them back. Together the tasks write all of the buffer.
                unsafe {
                    let optr = dst.ptr().add((img * o + o0) * p + p0);
                    let next_out = next_out.map_or(std::ptr::null_mut(), |i| dst.ptr().add(i));
                    block(
                        &xs[k0 * p..],
                        ws,
                        next_x,
                        next_w,
                        next_res,
                        next_out,
                        bs,
                        rs,
                        act,
                        kn,
                        p,
                        p0,
                        np,
                        first,
                        last,
                        optr,
                    );
                }
            }
            k0 += kn;
        }
    };
    run_jobs(base * groups, serial, job);
    // SAFETY: every output was written above.
    unsafe { out.set_len(len) };
    out
}

/// Single-threaded GEMM `dst[o][j] = sum_k W[o][k] * x[k * xs + j]` for `j < t`, with `wp` the
/// [`pack`]ed `W` (`[o, k]`) and the rows of `dst` `ds` floats apart: the GEMMs of the Winograd
/// convolution ([`super::winograd`]), whose transformed weights are packed once at load, so no
/// call packs either operand. A weight of at most 512 KiB runs pixel tiles
/// outermost, then reduction blocks of about [`KC`], then the weight panels: a block of the input
/// tile stays in L1 while the panels stream past it from L2, each prefetching the next. A larger
/// weight runs panel by panel over every pixel tile, the whole reduction in registers, so each
/// panel is read once. Panics unless [`available`]`(o)` and the slices are long enough.
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial(
    wp: &[f32],
    x: &[f32],
    xs: usize,
    dst: &mut [f32],
    ds: usize,
    o: usize,
    k: usize,
    t: usize,
) {
    assert!(available(o) && k > 0 && t > 0 && xs >= t && ds >= t);
    assert!(wp.len() >= o * k && x.len() >= (k - 1) * xs + t && dst.len() >= (o - 1) * ds + t);
    let oblocks = o / MR;
    let tiles = pixel_tiles(t);
    // A weight larger than [`GROUP_WEIGHT_FLOATS`] would come from L3 once per pixel tile: then
    // the panels go outermost (one panel, `K x MR` floats, in L1 over every pixel tile, the input
    // streamed from L2) and the reduction is one block.
    let panel_outer = o * k > GROUP_WEIGHT_FLOATS;
    let kc = if panel_outer {
        k
    } else {
        k.div_ceil(((k + KC / 2) / KC).max(1))
    };
    let nk = k.div_ceil(kc);
    let steps = if panel_outer {
        oblocks * tiles.len()
    } else {
        tiles.len() * nk * oblocks
    };
    for s in 0..steps {
        // (pixel tile, reduction block, panel) of this step.
        let (ti, kb, ob) = if panel_outer {
            (s % tiles.len(), 0, s / tiles.len())
        } else {
            (s / (nk * oblocks), s / oblocks % nk, s % oblocks)
        };
        let (p0, np) = tiles[ti];
        let (nv, mask) = vectors_and_mask(np);
        let k0 = kb * kc;
        let kn = kc.min(k - k0);
        let more_k = k0 + kn < k;
        // What this step's successor reads: its input block (when it differs) and weights.
        let (next_x, next_w) = if panel_outer {
            // The whole input (`K x T`) stays in L2 after the first panel.
            let nx = if ob == 0 && ti + 1 < tiles.len() {
                x[tiles[ti + 1].0..].as_ptr()
            } else {
                std::ptr::null()
            };
            let nw = if ti + 1 == tiles.len() && ob + 1 < oblocks {
                wp[(ob + 1) * k * MR..].as_ptr()
            } else {
                std::ptr::null()
            };
            (nx, nw)
        } else {
            let nx = if ob != 0 {
                std::ptr::null()
            } else if more_k {
                x[(k0 + kn) * xs + p0..].as_ptr()
            } else if ti + 1 < tiles.len() {
                x[tiles[ti + 1].0..].as_ptr()
            } else {
                std::ptr::null()
            };
            let nw = if ob + 1 < oblocks {
                wp[((ob + 1) * k + k0) * MR..].as_ptr()
            } else if more_k {
                wp[(k0 + kn) * MR..].as_ptr()
            } else {
                std::ptr::null()
            };
            (nx, nw)
        };
        #[cfg(target_arch = "x86_64")]
        {
            let a = avx512::Args {
                x: x[k0 * xs + p0..].as_ptr(),
                w: wp[(ob * k + k0) * MR..].as_ptr(),
                next_x,
                next_w,
                next_res: std::ptr::null(),
                next_out: std::ptr::null_mut(),
                bias: std::ptr::null(),
                res: std::ptr::null(),
                out: dst[ob * MR * ds + p0..].as_mut_ptr(),
                k: kn,
                p: ds,
                xp: xs,
                mask,
                act: Activation::None,
                first: k0 == 0,
                last: !more_k,
            };
            // SAFETY: AVX-512 is present (`available`); the block reads rows k0..k0+kn (stride
            // xs) and reads/writes rows ob*MR..ob*MR+MR (stride ds) at pixels p0..p0+np, in
            // bounds by the asserts above (loads past `np` are masked); `out` comes from the
            // exclusively borrowed `dst`.
            unsafe {
                match nv {
                    1 => avx512::tile::<1>(&a),
                    2 => avx512::tile::<2>(&a),
                    _ => avx512::tile::<NV>(&a),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (next_w, next_x, np, mask, nv);
            unreachable!("gemm_serial is only dispatched on AVX-512 CPUs");
        }
    }
}

/// One register block over one reduction block: channels `MR`, pixels `p0..p0+np` (np <= 48).
///
/// # Safety
/// `out` valid for reading/writing rows `0..MR` (stride `p`) of `np` floats (read only when
/// `!first`); AVX-512 present; `x` holds `kn` rows of stride `p`, `w` `kn * MR` floats.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn block(
    x: &[f32],
    w: &[f32],
    next_x: *const f32,
    next_w: *const f32,
    next_res: *const f32,
    next_out: *mut f32,
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    kn: usize,
    p: usize,
    p0: usize,
    np: usize,
    first: bool,
    last: bool,
    out: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(x.len() >= (kn - 1) * p + p0 + np && w.len() >= kn * MR);
        let (nv, mask) = vectors_and_mask(np);
        let a = avx512::Args {
            x: x[p0..].as_ptr(),
            w: w.as_ptr(),
            next_x,
            next_w,
            next_res,
            next_out,
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            res: res.map_or(std::ptr::null(), |r| r[p0..].as_ptr()),
            out,
            k: kn,
            p,
            xp: p,
            mask,
            act,
            first,
            last,
        };
        // SAFETY: see the function's contract; loads past `np` are masked out.
        match nv {
            1 => avx512::tile::<1>(&a),
            2 => avx512::tile::<2>(&a),
            _ => avx512::tile::<NV>(&a),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, bias, res, act, kn, p, p0, np, first, last, out);
        unreachable!("conv1x1_packed is only dispatched on AVX-512 CPUs");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Activation, MR};
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(super) struct Args {
        /// `x[k0, p0]` (row stride `p`).
        pub x: *const f32,
        /// Packed panel at `k0`: `k` groups of `MR` floats.
        pub w: *const f32,
        /// The input rows the task reads next (the next reduction block at the same pixels), or
        /// null: prefetched into L2 while this block computes (the input rows are 1-12 KiB apart,
        /// too far for the hardware prefetchers). Only prefetched, never dereferenced: a prefetch
        /// past the end of the input does not fault.
        pub next_x: *const f32,
        /// The weights of the block the task runs next (`k * MR` floats from here), or null:
        /// prefetched into L1 while this block computes, a line every other reduction step. A
        /// task starts a new panel slice every block, `K * MR` floats from the last one, which
        /// the hardware prefetchers only pick up after a few misses. Only prefetched.
        pub next_w: *const f32,
        /// Residual and output rows (`MR` rows of stride `p`) of the task's next block, or null:
        /// prefetched (the output for writing) while this block computes. Only prefetched.
        pub next_res: *const f32,
        pub next_out: *mut f32,
        /// `MR` biases or null (only on the first reduction block).
        pub bias: *const f32,
        /// Residual at (o0, p0) (row stride `p`) or null (only on the last reduction block).
        pub res: *const f32,
        /// Output at (o0, p0) (row stride `p`).
        pub out: *mut f32,
        pub k: usize,
        /// Row stride of `out` and `res`.
        pub p: usize,
        /// Row stride of `x` (and `next_x`).
        pub xp: usize,
        pub mask: u16,
        pub act: Activation,
        pub first: bool,
        pub last: bool,
    }

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

    #[derive(Clone, Copy)]
    pub(super) struct CvArgs {
        /// `x[0, p0]` (row stride `p`).
        pub x: *const f32,
        /// Panel: `k` rows of `16 * VO` floats.
        pub w: *const f32,
        /// `pf_lines` cache lines of weights to prefetch over the reduction (the next panel's
        /// share of this tile). Only prefetched.
        pub pf: *const f32,
        pub pf_lines: usize,
        /// `16 * VO` biases or null.
        pub bias: *const f32,
        /// Residual at (o0, p0) (row stride `p`) or null.
        pub res: *const f32,
        /// Output at (o0, p0) (row stride `p`).
        pub out: *mut f32,
        /// Row stride of `x`.
        pub xs: usize,
        pub k: usize,
        pub p: usize,
        pub act: Activation,
    }

    /// The reduction of [`cv_tile`] and [`cv_tile_acc`]: `acc[j][v] += sum_kk x[kk][j] w[kk][v]`
    /// over the `a.k` rows, prefetching `a.pf`'s lines evenly over them. Inlined into both, so the
    /// sums stay in registers.
    ///
    /// # Safety
    /// Called from AVX-512 code only; `a.x`, `a.w`, `a.pf` as in [`CvArgs`].
    #[inline(always)]
    unsafe fn reduce<const VO: usize, const PX: usize>(a: &CvArgs, acc: &mut [[__m512; VO]; PX]) {
        let (x, w) = (a.x, a.w);
        let (mut pf_line, mut pf_acc) = (0usize, 0usize);
        for kk in 0..a.k {
            let wr = w.add(kk * 16 * VO);
            let mut wv = [_mm512_setzero_ps(); VO];
            for (v, r) in wv.iter_mut().enumerate() {
                *r = _mm512_loadu_ps(wr.add(16 * v));
            }
            // Lines `kk * pf_lines / k .. (kk + 1) * pf_lines / k`, counted without a division.
            pf_acc += a.pf_lines;
            while pf_acc >= a.k {
                _mm_prefetch::<_MM_HINT_T1>(a.pf.wrapping_add(16 * pf_line) as *const i8);
                pf_line += 1;
                pf_acc -= a.k;
            }
            let xr = x.add(kk * a.xs);
            for (j, row) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*xr.add(j));
                for (c, wvv) in row.iter_mut().zip(&wv) {
                    *c = _mm512_fmadd_ps(xb, *wvv, *c);
                }
            }
        }
    }

    /// `VO` vectors of output channels x `PX` pixels.
    ///
    /// # Safety
    /// See `super::cv_block`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn cv_tile<const VO: usize, const PX: usize>(a: &CvArgs) {
        let mut acc = [[_mm512_setzero_ps(); VO]; PX];
        reduce(a, &mut acc);
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let pv = _mm512_set1_epi32(a.p as i32);
        for v in 0..VO {
            // Offsets of channels 16v..16v+16 (row stride p).
            let idx =
                _mm512_mullo_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(16 * v as i32)), pv);
            let b = if a.bias.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(a.bias.add(16 * v))
            };
            for (j, row) in acc.iter().enumerate() {
                let mut y = _mm512_add_ps(row[v], b);
                if !a.res.is_null() {
                    y = _mm512_add_ps(y, _mm512_i32gather_ps::<4>(idx, a.res.add(j)));
                }
                let y = act(y, a.act);
                _mm512_i32scatter_ps::<4>(a.out.add(j), idx, y);
            }
        }
    }

    /// [`cv_tile`] on a reduction block: the sums start from `acc` and end there, raw (pixel `j`'s
    /// `16 * VO` channels at `j * CW`); [`cv_finish`] applies the epilogue after the last block.
    ///
    /// # Safety
    /// As [`cv_tile`] (without `out`, `bias`, `res`); `acc` valid for `PX * CW` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn cv_tile_acc<const VO: usize, const PX: usize>(
        a: &CvArgs,
        acc_ptr: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); VO]; PX];
        for (j, row) in acc.iter_mut().enumerate() {
            for (v, c) in row.iter_mut().enumerate() {
                *c = _mm512_loadu_ps(acc_ptr.add(j * super::CW + 16 * v));
            }
        }
        reduce(a, &mut acc);
        for (j, row) in acc.iter().enumerate() {
            for (v, c) in row.iter().enumerate() {
                _mm512_storeu_ps(acc_ptr.add(j * super::CW + 16 * v), *c);
            }
        }
    }

    /// The epilogue of [`cv_tile`] on the sums [`cv_tile_acc`] left in `acc`: bias, activation,
    /// scattered to `out` (row stride `a.p`), for `np` pixels and `vo` vectors of channels.
    ///
    /// # Safety
    /// `acc` valid for `np * CW` floats, `out` for rows `0..16 vo` (stride `a.p`) of `np` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn cv_finish(a: &CvArgs, acc_ptr: *const f32, vo: usize, np: usize) {
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let pv = _mm512_set1_epi32(a.p as i32);
        for v in 0..vo {
            let idx =
                _mm512_mullo_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(16 * v as i32)), pv);
            let b = if a.bias.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(a.bias.add(16 * v))
            };
            for j in 0..np {
                let s = _mm512_loadu_ps(acc_ptr.add(j * super::CW + 16 * v));
                let y = act(_mm512_add_ps(s, b), a.act);
                _mm512_i32scatter_ps::<4>(a.out.add(j), idx, y);
            }
        }
    }

    #[inline(always)]
    unsafe fn load<const V: usize>(ptr: *const f32, j: usize, mask: __mmask16) -> __m512 {
        if j + 1 < V {
            _mm512_loadu_ps(ptr.add(16 * j))
        } else {
            _mm512_maskz_loadu_ps(mask, ptr.add(16 * j))
        }
    }

    /// # Safety
    /// See `super::block`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const V: usize>(a: &Args) {
        let mask = a.mask as __mmask16;
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        if !a.first {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, c) in row.iter_mut().enumerate() {
                    *c = load::<V>(a.out.add(i * a.p), j, mask);
                }
            }
        } else if !a.bias.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
                *row = [_mm512_set1_ps(*a.bias.add(i)); V];
            }
        }
        let (w, p) = (a.w, a.p);
        for kk in 0..a.k {
            let xr = a.x.add(kk * a.xp);
            let mut xv = [_mm512_setzero_ps(); V];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = load::<V>(xr, j, mask);
            }
            let wr = w.add(kk * MR);
            if !a.next_w.is_null() && kk % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(a.next_w.wrapping_add(kk * MR) as *const i8);
            }
            if kk % 8 == 4 && kk / 8 < MR {
                let i = kk / 8;
                if !a.next_res.is_null() {
                    let r = a.next_res.wrapping_add(i * p);
                    for j in 0..V {
                        _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(16 * j) as *const i8);
                    }
                }
                if !a.next_out.is_null() {
                    let r = a.next_out.wrapping_add(i * p);
                    for j in 0..V {
                        _mm_prefetch::<_MM_HINT_ET0>(r.wrapping_add(16 * j) as *const i8);
                    }
                }
            }
            if !a.next_x.is_null() {
                let nx = a.next_x.wrapping_add(kk * a.xp);
                for j in 0..V {
                    _mm_prefetch::<_MM_HINT_T1>(nx.wrapping_add(16 * j) as *const i8);
                }
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let wb = _mm512_set1_ps(*wr.add(i));
                for (c, v) in row.iter_mut().zip(&xv) {
                    *c = _mm512_fmadd_ps(wb, *v, *c);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let o = a.out.add(i * p);
            let r = a.res.wrapping_add(i * p);
            for (j, c) in row.iter().enumerate() {
                let lastv = j + 1 == V;
                let mut v = *c;
                if a.last {
                    if !a.res.is_null() {
                        v = _mm512_add_ps(v, load::<V>(r, j, mask));
                    }
                    v = act(v, a.act);
                }
                if lastv {
                    _mm512_mask_storeu_ps(o.add(16 * j), mask, v);
                } else {
                    _mm512_storeu_ps(o.add(16 * j), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pixel_tiles;

    #[test]
    fn pixel_tiles_cover_and_balance() {
        for p in 1..400 {
            let t = pixel_tiles(p);
            let mut s = 0;
            for &(a, l) in &t {
                assert_eq!(a, s);
                assert!(l > 0 && l <= 48);
                s += l;
            }
            assert_eq!(s, p);
        }
        assert_eq!(pixel_tiles(49), vec![(0, 32), (32, 17)]);
    }
}

/// Output channels per panel of the channel-vector layout ([`pack_cv`]): 3 vectors.
pub const CW: usize = 48;
/// Most pixels per register block of [`conv1x1_cv`].
const PXMAX: usize = 8;
/// Input floats per chunk of pixel tiles of [`conv1x1_cv`] (512 KiB, a quarter of L2).
const CHUNK_FLOATS: usize = 1 << 17;

/// Whether [`conv1x1_cv`] handles `o` output channels on this CPU.
pub fn cv_available(o: usize) -> bool {
    o > 0 && o.is_multiple_of(16) && level() == Level::Avx512
}

/// `w: [O, K]` row-major into panels of [`CW`] output channels (the last one 16 or 32 if `O` is not
/// a multiple of 48), each `[K][width]`: panel `b` starts at `b * CW * K`.
pub fn pack_cv(w: &[f32], o: usize, k: usize) -> Vec<f32> {
    assert!(o.is_multiple_of(16) && w.len() >= o * k);
    let mut out = vec![0f32; o * k];
    out.par_chunks_mut(CW * k)
        .enumerate()
        .for_each(|(b, panel)| {
            let width = panel.len() / k;
            for (kk, dst) in panel.chunks_exact_mut(width).enumerate() {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = w[(b * CW + i) * k + kk];
                }
            }
        });
    out
}

/// Pixel tiles `(start, len)` of at most [`PXMAX`] pixels, as even as possible.
fn small_tiles(p: usize) -> Vec<(usize, usize)> {
    even_tiles(p, 1, PXMAX)
}

/// [`conv1x1_packed`] with the weight in the channel-vector layout ([`pack_cv`]): register blocks
/// of 48 output channels (3 vectors) x up to 8 pixels, the pixels broadcast from the input rows, so
/// no lane is wasted on pixel remainders (7x7 maps: 49 = 7 x 7 pixels); the outputs are scattered
/// (bias, residual and activation applied first, channels in lanes).
#[allow(clippy::too_many_arguments)]
pub fn conv1x1_cv(
    x: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    n: usize,
    k: usize,
    o: usize,
    p: usize,
) -> Vec<f32> {
    let len = n * o * p;
    assert!(cv_available(o) && k > 0 && p > 0);
    assert!(x.len() >= n * k * p && wp.len() >= o * k);
    assert!(bias.is_none_or(|b| b.len() >= o) && res.is_none_or(|r| r.len() >= len));
    assert!(len <= i32::MAX as usize);
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let tiles = small_tiles(p);
    // Every (image, pixel tile), in chunks whose input (K x chunk pixels) fits in L2 (512 KiB):
    // a task runs each of its panels over all tiles of a chunk, so the chunk's input is read from
    // L2 once per panel and a panel (K x 48 floats) once per chunk (7x7 maps: once per image or
    // fewer, instead of once per pixel tile).
    let flat: Vec<(usize, usize, usize)> = (0..n)
        .flat_map(|img| tiles.iter().map(move |&(p0, np)| (img, p0, np)))
        .collect();
    let chunk_px = (CHUNK_FLOATS / k).max(PXMAX);
    let mut chunks = Vec::new();
    let (mut c0, mut px) = (0, 0);
    for (i, t) in flat.iter().enumerate() {
        px += t.2;
        if px >= chunk_px || i + 1 == flat.len() {
            chunks.push((c0, i + 1));
            (c0, px) = (i + 1, 0);
        }
    }
    let panels = o.div_ceil(CW);
    // Tasks: (panel group, chunk); enough of them for two threads to balance.
    let groups = if chunks.len() >= 8 {
        1
    } else {
        8usize.div_ceil(chunks.len()).min(panels)
    };
    let per_group = panels.div_ceil(groups);
    let groups = panels.div_ceil(per_group);
    let pgroups = chunks.len();
    let serial = n * o * k * p < SERIAL_MACS;
    let dst = OutPtr(out.as_mut_ptr());
    let job = |j: usize| {
        let (g, pg) = (j / pgroups, j % pgroups);
        let b0 = g * per_group;
        let b1 = (b0 + per_group).min(panels);
        let (t0, t1) = chunks[pg];
        for b in b0..b1 {
            let o0 = b * CW;
            let width = CW.min(o - o0);
            let ws = &wp[o0 * k..][..width * k];
            let bs = bias.map(|bv| &bv[o0..o0 + width]);
            // The next panel of the group: each tile prefetches its share of it.
            let next = (b + 1 < b1).then(|| {
                let o1 = o0 + CW;
                &wp[o1 * k..][..CW.min(o - o1) * k]
            });
            let nt = t1 - t0;
            for (ti, &(img, p0, np)) in flat[t0..t1].iter().enumerate() {
                let pf = next.map_or(&[][..], |n| &n[ti * n.len() / nt..(ti + 1) * n.len() / nt]);
                let xs = &x[img * k * p..][..k * p];
                let rs = res.map(|r| &r[(img * o + o0) * p..][..width * p]);
                // SAFETY: rows o0..o0+width, pixels p0..p0+np of image `img` are in bounds of the
                // `len`-float buffer and written by this task only (tasks differ in panels or
                // (image, tile) chunks). Together the tasks write all of the buffer.
                unsafe {
                    let optr = dst.ptr().add((img * o + o0) * p + p0);
                    cv_block(xs, p, ws, pf, bs, rs, act, k, p, p0, np, width, optr);
                }
            }
        }
    };
    run_jobs(groups * pgroups, serial, job);
    // SAFETY: every output was written above.
    unsafe { out.set_len(len) };
    out
}

/// Reduction rows per block of [`conv1x1_cv_deep`]: a panel's block (48 x 1024 floats, 192 KiB)
/// and the input's (1024 x 49 floats at 7x7) stay in L2 while the pixel tiles run over them.
const CV_DEEP_KC: usize = 1024;
/// The smallest reduction block of [`conv1x1_cv_deep`] (at batch 4 and up).
const CV_DEEP_KC_MIN: usize = 256;

/// [`conv1x1_cv`] for deep reductions (the im2col matrices of Wide ResNet's 3x3 convolutions on 7x7
/// maps, `K = 9 C` up to 9216): per task one panel of 48 output channels over all `n` images, the
/// reduction in blocks of about [`CV_DEEP_KC`] rows divided by the images (at least
/// [`CV_DEEP_KC_MIN`]), every (image, pixel tile) over each block, the partial sums kept per tile
/// between blocks, so each panel is read from memory once per call (not once per chunk of
/// pixels), and the next block of the panel is prefetched while the current one runs. Callers pass
/// a few images at a time (up to 8: [`super::dense`]); measured slower than `gemm` at batch 8
/// (see the README).
/// Image `i`'s input row `kk` starts at `x[i * xi + kk * xs]` (`p` pixels); out `[n, o, p]`.
/// Panics unless [`cv_available`]`(o)` and the slices are long enough.
#[allow(clippy::too_many_arguments)]
pub fn conv1x1_cv_deep(
    x: &[f32],
    xs: usize,
    xi: usize,
    wp: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    n: usize,
    k: usize,
    o: usize,
    p: usize,
) -> Vec<f32> {
    let len = n * o * p;
    assert!(cv_available(o) && k > 0 && p > 0 && xs >= p);
    assert!(n == 0 || x.len() >= (n - 1) * xi + (k - 1) * xs + p);
    assert!(wp.len() >= o * k && bias.is_none_or(|b| b.len() >= o));
    assert!(len <= i32::MAX as usize);
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let tiles = small_tiles(p);
    let nkb = k.div_ceil((CV_DEEP_KC / n).max(CV_DEEP_KC_MIN));
    let kc = k.div_ceil(nkb);
    let panels = o.div_ceil(CW);
    let serial = n * o * k * p < SERIAL_MACS;
    let dst = OutPtr(out.as_mut_ptr());
    // Tasks: a panel over every image, the images inside each reduction block, so each block of
    // the panel is read from memory once per call; several images take smaller blocks, so their
    // input blocks stay in L2 together.
    let nt = tiles.len();
    let calls = n * nt;
    let job = |b: usize| {
        let o0 = b * CW;
        let width = CW.min(o - o0);
        let panel = &wp[o0 * k..][..width * k];
        let bs = bias.map(|bv| &bv[o0..o0 + width]);
        // Partial sums per (image, tile) between reduction blocks; zeros for the first block.
        let mut acc: Vec<CvAcc> = vec![[0f32; PXMAX * CW]; calls];
        for kb in 0..nkb {
            let k0 = kb * kc;
            let kn = kc.min(k - k0);
            let last = k0 + kn == k;
            let ws = &panel[k0 * width..][..kn * width];
            // The calls of this block prefetch the next block of the panel, each its share.
            let next = if last {
                &[][..]
            } else {
                let kn2 = kc.min(k - k0 - kn);
                &panel[(k0 + kn) * width..][..kn2 * width]
            };
            for (c, a) in acc.iter_mut().enumerate() {
                let (img, (p0, np)) = (c / nt, tiles[c % nt]);
                let pf = &next[c * next.len() / calls..(c + 1) * next.len() / calls];
                // SAFETY: rows o0..o0+width, pixels p0..p0+np of image `img` are in bounds of
                // the `len`-float buffer and written by this task only (tasks differ in panel),
                // after the last block. Together the tasks write all of the buffer.
                unsafe {
                    let finish = last.then(|| (bs, act, dst.ptr().add((img * o + o0) * p + p0), p));
                    cv_block_acc(
                        &x[img * xi + k0 * xs..],
                        xs,
                        ws,
                        pf,
                        kn,
                        p0,
                        np,
                        width,
                        a,
                        finish,
                    );
                }
            }
        }
    };
    run_jobs(panels, serial, job);
    // SAFETY: every output was written above.
    unsafe { out.set_len(len) };
    out
}

/// Partial sums of one register block of [`conv1x1_cv_deep`] between reduction blocks: pixel `j`'s
/// channels at `j * CW`.
type CvAcc = [f32; PXMAX * CW];

/// One register block of [`conv1x1_cv`]: `width` channels (16, 32 or 48) x pixels `p0..p0+np`,
/// the input rows `xs` floats apart.
///
/// # Safety
/// `out` valid for writing rows `0..width` (stride `p`) of `np` floats; AVX-512 present.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn cv_block(
    x: &[f32],
    xs: usize,
    w: &[f32],
    pf: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    k: usize,
    p: usize,
    p0: usize,
    np: usize,
    width: usize,
    out: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(x.len() >= (k - 1) * xs + p0 + np && w.len() >= k * width);
        assert!((1..=PXMAX).contains(&np) && matches!(width, 16 | 32 | 48));
        let a = avx512::CvArgs {
            x: x[p0..].as_ptr(),
            w: w.as_ptr(),
            pf: pf.as_ptr(),
            pf_lines: pf.len() / 16,
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            res: res.map_or(std::ptr::null(), |r| r[p0..].as_ptr()),
            out,
            xs,
            k,
            p,
            act,
        };
        macro_rules! go {
            ($($px:literal)*) => {
                match (width / 16, np) {
                    $( (3, $px) => avx512::cv_tile::<3, $px>(&a),
                       (2, $px) => avx512::cv_tile::<2, $px>(&a),
                       (_, $px) => avx512::cv_tile::<1, $px>(&a), )*
                    _ => unreachable!(),
                }
            };
        }
        // SAFETY: see the function's contract.
        go!(1 2 3 4 5 6 7 8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, xs, w, pf, bias, res, act, k, p, p0, np, width, out);
        unreachable!("conv1x1_cv is only dispatched on AVX-512 CPUs");
    }
}

/// One register block of [`conv1x1_cv_deep`] over one reduction block (`k` rows): the sums start
/// from `acc` and are left there; with `finish = Some((bias, act, out, p))` (the last block) they
/// are then finished (bias, activation) and scattered to `out` (rows `p` floats apart).
///
/// # Safety
/// With `finish`, `out` valid for writing rows `0..width` (stride `p`) of `np` floats; AVX-512
/// present.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
#[inline]
unsafe fn cv_block_acc(
    x: &[f32],
    xs: usize,
    w: &[f32],
    pf: &[f32],
    k: usize,
    p0: usize,
    np: usize,
    width: usize,
    acc: &mut CvAcc,
    finish: Option<(Option<&[f32]>, Activation, *mut f32, usize)>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(x.len() >= (k - 1) * xs + p0 + np && w.len() >= k * width);
        assert!((1..=PXMAX).contains(&np) && matches!(width, 16 | 32 | 48));
        let (bias, act, out, p) =
            finish.unwrap_or((None, Activation::None, std::ptr::null_mut(), 0));
        assert!(bias.is_none_or(|b| b.len() >= width));
        let a = avx512::CvArgs {
            x: x[p0..].as_ptr(),
            w: w.as_ptr(),
            pf: pf.as_ptr(),
            pf_lines: pf.len() / 16,
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            res: std::ptr::null(),
            out,
            xs,
            k,
            p,
            act,
        };
        let ap = acc.as_mut_ptr();
        macro_rules! go {
            ($($px:literal)*) => {
                match (width / 16, np) {
                    $( (3, $px) => avx512::cv_tile_acc::<3, $px>(&a, ap),
                       (2, $px) => avx512::cv_tile_acc::<2, $px>(&a, ap),
                       (_, $px) => avx512::cv_tile_acc::<1, $px>(&a, ap), )*
                    _ => unreachable!(),
                }
            };
        }
        // SAFETY: see the function's contract; `acc` holds PXMAX * CW floats.
        go!(1 2 3 4 5 6 7 8);
        if finish.is_some() {
            // SAFETY: `out` as the contract says, `acc` written above.
            avx512::cv_finish(&a, ap, width / 16, np);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, xs, w, pf, k, p0, np, width, acc, finish);
        unreachable!("conv1x1_cv_deep is only dispatched on AVX-512 CPUs");
    }
}

/// Which packed layout a [`PointwiseWeight`] holds (and so which kernel runs it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// [`pack`]: `MR` channels x up to 48 pixels per register block ([`conv1x1_packed`]).
    Panels8,
    /// [`pack_cv`]: 48 channels x up to 8 pixels per register block ([`conv1x1_cv`]).
    ChannelVectors,
}

/// Smallest feature map (pixels per image) for which [`PointwiseWeight::layout_for`] picks
/// [`Layout::Panels8`]; smaller maps (WRN's 7x7) take [`Layout::ChannelVectors`], which wastes no
/// vector lanes on the pixel remainder. Measured (single-thread, interleaved, noisy) against the
/// unpacked kernel: channel vectors 0.83-0.89x the time at 7x7 (batch 1 and 8), a wash at 14x14
/// batch 1 (0.87-1.05x), slower at 28x28 and up (1.07-1.4x) and at 14x14 batch 8 (1.03-1.05x),
/// where 8-channel panels took 0.75-0.95x.
pub const PANELS8_MIN_PIXELS: usize = 100;

/// A 1x1 convolution weight `[O, K, 1, 1]` kept ONLY in a packed layout (the original is dropped:
/// the packed copy is the same size). Shared by clones. Only on AVX-512 CPUs
/// ([`PointwiseWeight::supported`]).
#[derive(Clone)]
pub struct PointwiseWeight {
    data: std::sync::Arc<Vec<f32>>,
    o: usize,
    k: usize,
    layout: Layout,
}

impl std::fmt::Debug for PointwiseWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointwiseWeight")
            .field("out_channels", &self.o)
            .field("in_channels", &self.k)
            .field("layout", &self.layout)
            .finish()
    }
}

impl PointwiseWeight {
    /// Whether a weight of `o` output channels can be packed in `layout` on this CPU.
    pub fn supported(o: usize, layout: Layout) -> bool {
        match layout {
            Layout::Panels8 => available(o),
            Layout::ChannelVectors => cv_available(o),
        }
    }

    /// The layout measured faster for feature maps of `pixels` pixels per image (see
    /// [`PANELS8_MIN_PIXELS`]), if a weight of `o` output channels can be packed at all.
    pub fn layout_for(o: usize, pixels: usize) -> Option<Layout> {
        let want = if pixels >= PANELS8_MIN_PIXELS {
            Layout::Panels8
        } else {
            Layout::ChannelVectors
        };
        [want, Layout::Panels8]
            .into_iter()
            .find(|&l| Self::supported(o, l))
    }

    /// Pack `w` (`[O, K, 1, 1]`, f32, CPU) in `layout`.
    pub fn new(w: &candle_core::Tensor, layout: Layout) -> candle_core::Result<Self> {
        let (o, k, kh, kw) = w.dims4()?;
        if kh != 1 || kw != 1 || w.dtype() != candle_core::DType::F32 || !w.device().is_cpu() {
            candle_core::bail!(
                "PointwiseWeight: expected an f32 CPU [O, K, 1, 1] weight, got {:?} {:?}",
                w.dims(),
                w.dtype()
            );
        }
        if k == 0 || !Self::supported(o, layout) {
            candle_core::bail!("PointwiseWeight: {layout:?} unsupported for {:?}", w.dims());
        }
        let w = w.contiguous()?;
        let v = super::cpu::F32View::new(&w)?;
        let data = match layout {
            Layout::Panels8 => pack(v.slice()?, o, k),
            Layout::ChannelVectors => pack_cv(v.slice()?, o, k),
        };
        Ok(Self {
            data: std::sync::Arc::new(data),
            o,
            k,
            layout,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.o
    }

    pub fn in_channels(&self) -> usize {
        self.k
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `act(W x X + b [+ R])` on raw slices (`x: [n, K, p]`, `res: [n, O, p]`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        res: Option<&[f32]>,
        act: Activation,
        n: usize,
        p: usize,
    ) -> Vec<f32> {
        let (o, k) = (self.o, self.k);
        match self.layout {
            Layout::Panels8 => conv1x1_packed(x, &self.data, bias, res, act, n, k, o, p),
            Layout::ChannelVectors => conv1x1_cv(x, &self.data, bias, res, act, n, k, o, p),
        }
    }
}

/// A k x k convolution weight `[O, C, k, k]` kept ONLY in the channel-vector layout ([`pack_cv`])
/// over its im2col reduction (`K = C k k`): the [`PointwiseWeight`] of the `[O, C k k, 1, 1]`
/// reshape, for [`conv1x1_cv_deep`] on im2col matrices (Wide ResNet's 3x3 convolutions with 7x7
/// outputs). The original is dropped (the packed copy is the same size). Shared by clones. Only
/// where [`cv_available`]`(O)`.
#[derive(Clone, Debug)]
pub struct KxkCvWeight {
    packed: PointwiseWeight,
    c: usize,
    k: usize,
}

impl KxkCvWeight {
    /// Pack `w` (`[O, C, k, k]`, f32, CPU); an error unless [`cv_available`]`(O)`.
    pub fn new(w: &candle_core::Tensor) -> candle_core::Result<Self> {
        let (o, c, kh, kw) = w.dims4()?;
        if kh != kw || kh == 0 {
            candle_core::bail!("KxkCvWeight: expected a square kernel, got {:?}", w.dims());
        }
        let flat = w.contiguous()?.reshape((o, c * kh * kw, 1, 1))?;
        Ok(Self {
            packed: PointwiseWeight::new(&flat, Layout::ChannelVectors)?,
            c,
            k: kh,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.packed.o
    }

    pub fn in_channels(&self) -> usize {
        self.c
    }

    pub fn kernel(&self) -> usize {
        self.k
    }

    /// The packed panels ([`pack_cv`] of `[O, C k k]`).
    pub(crate) fn packed(&self) -> &[f32] {
        &self.packed.data
    }
}
