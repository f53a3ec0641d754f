//! Pillow's `Image.resize(size, BILINEAR)` for 8-bit RGB, restricted to an output window.
//!
//! This is a re-implementation of Pillow's `libImaging/Resample.c` (8 bits per channel path):
//! separable two-pass resampling, horizontal pass first then vertical, a triangle filter whose
//! support is scaled by the downscale factor (antialiasing), coefficients normalised per output
//! pixel, then turned into fixed point with `PRECISION_BITS = 32 - 8 - 2` and each pass rounded
//! and clipped to u8. Every output pixel depends only on its own coordinates, so computing only
//! the pixels of the center crop gives exactly the same values as resizing the whole image and
//! cropping afterwards, at a fraction of the cost.

use crate::ops::resize;
use std::ops::Range;

/// Fixed-point precision of Pillow's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bilinear (triangle) filter, support 1.
#[inline]
fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's normalised (floating-point) bilinear weights of output pixel `xx` of an axis resized
/// from `in_size` to `out_size`: `(first input index, weights)`, the weights summing to 1.
/// These are the weights [`Coeffs::new`] turns into fixed point.
pub(crate) fn pillow_weights(in_size: usize, out_size: usize, xx: usize) -> (usize, Vec<f64>) {
    let in1 = in_size as f32;
    let scale = f64::from(in1) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let ss = 1.0 / filterscale;
    let center = (xx as f64 + 0.5) * scale;
    let xmin = ((center - support + 0.5) as i64).max(0);
    let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
    let count = ((xmax - xmin).max(0) as usize).min(ksize);
    let mut w: Vec<f64> = (0..count)
        .map(|x| bilinear_filter((((x as i64 + xmin) as f64) - center + 0.5) * ss))
        .collect();
    let ww: f64 = w.iter().sum();
    if ww != 0.0 {
        w.iter_mut().for_each(|v| *v /= ww);
    }
    (xmin as usize, w)
}

/// Fixed-point coefficients of a range of output pixels along one axis.
#[derive(Debug, Clone)]
pub(crate) struct Coeffs {
    /// First input index of each output pixel of the range.
    pub xmin: Vec<usize>,
    /// Number of input pixels of each output pixel.
    pub len: Vec<usize>,
    /// Coefficient row stride.
    pub ksize: usize,
    /// `out.len() * ksize` fixed-point coefficients.
    pub k: Vec<i32>,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for output pixels `out` of an axis
    /// resized from `in_size` to `out_size` (box = the whole input).
    pub(crate) fn new(in_size: usize, out_size: usize, out: Range<usize>) -> Coeffs {
        // Pillow computes `in1 - in0` in float and divides in double.
        let in1 = in_size as f32;
        let scale = f64::from(in1) / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filterscale; // bilinear support 1.0 * filterscale
        let ksize = (support.ceil() as usize) * 2 + 1;
        let n = out.len();
        let mut xmin_v = Vec::with_capacity(n);
        let mut len_v = Vec::with_capacity(n);
        let mut k = vec![0i32; n * ksize];
        let mut w = vec![0f64; ksize];
        let ss = 1.0 / filterscale;
        for (i, xx) in out.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C casts truncate toward zero.
            let mut xmin = (center - support + 0.5) as i64;
            if xmin < 0 {
                xmin = 0;
            }
            let mut xmax = (center + support + 0.5) as i64;
            if xmax > in_size as i64 {
                xmax = in_size as i64;
            }
            let count = (xmax - xmin).max(0) as usize;
            let count = count.min(ksize);
            let mut ww = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(count) {
                let v = bilinear_filter((((x as i64 + xmin) as f64) - center + 0.5) * ss);
                *wx = v;
                ww += v;
            }
            let row = &mut k[i * ksize..(i + 1) * ksize];
            for x in 0..count {
                let mut v = w[x];
                if ww != 0.0 {
                    v /= ww;
                }
                row[x] = if v < 0.0 {
                    (-0.5 + v * f64::from(1u32 << PRECISION_BITS)) as i32
                } else {
                    (0.5 + v * f64::from(1u32 << PRECISION_BITS)) as i32
                };
            }
            xmin_v.push(xmin as usize);
            len_v.push(count);
        }
        Coeffs {
            xmin: xmin_v,
            len: len_v,
            ksize,
            k,
        }
    }

    /// Input index range that the output range reads.
    pub(crate) fn input_span(&self) -> Range<usize> {
        let lo = self.xmin.iter().copied().min().unwrap_or(0);
        let hi = self
            .xmin
            .iter()
            .zip(&self.len)
            .map(|(a, b)| a + b)
            .max()
            .unwrap_or(0);
        lo..hi.max(lo)
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow ≥ 13 runs the vertical pass first when the height shrinks by more than twice as many
/// pixels as the width (`Resample.c`, `ImagingResampleInner`); otherwise horizontal first.
/// The order changes the rounding of the intermediate image, so it is part of parity.
pub(crate) fn vertical_first(w: usize, h: usize, out_w: usize, out_h: usize) -> bool {
    let dh = h as i64 - out_h as i64;
    let dw = w as i64 - out_w as i64;
    dh > 0 && dh > dw * 2
}

/// A window of the image Pillow would produce with `resize((out_w, out_h), BILINEAR)` on the
/// RGB8 image `src` (`w`×`h`, rows of `3*w` bytes): output columns `cols`, rows `rows`.
/// Returns `cols.len() * rows.len() * 3` bytes, row-major RGB.
pub(crate) fn resize_window(
    src: &[u8],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    let cw = cols.len();
    let ch = rows.len();
    if cw == 0 || ch == 0 || w == 0 || h == 0 {
        return vec![0; cw * ch * 3];
    }
    let hc = (out_w != w).then(|| Coeffs::new(w, out_w, cols.clone()));
    let vc = (out_h != h).then(|| Coeffs::new(h, out_h, rows.clone()));
    run_passes(
        src,
        w,
        hc,
        vc,
        vertical_first(w, h, out_w, out_h),
        cols,
        rows,
    )
}

/// Run the two passes with prepared coefficients (`None`: that axis is copied unchanged).
pub(crate) fn run_passes(
    src: &[u8],
    w: usize,
    hc: Option<Coeffs>,
    vc: Option<Coeffs>,
    vertical_first: bool,
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    let cw = cols.len();
    let ch = rows.len();
    let in_cols = hc.as_ref().map_or(cols.clone(), Coeffs::input_span);
    let in_rows = vc.as_ref().map_or(rows.clone(), Coeffs::input_span);

    if vertical_first {
        // Vertical pass over the input columns the horizontal pass reads, then horizontal.
        let mid_w = in_cols.len();
        let mid = match &vc {
            Some(vc) => {
                let mut mid = vec![0u8; ch * mid_w * 3];
                vertical_pass(src, w, in_cols.start, mid_w, 0, vc, &mut mid);
                mid
            }
            None => copy_window(src, w, in_cols.clone(), rows.clone()),
        };
        match &hc {
            Some(hc) => {
                let mut out = vec![0u8; ch * cw * 3];
                horizontal_pass(&mid, mid_w, in_cols.start, 0..ch, hc, &mut out, cw);
                out
            }
            None => mid,
        }
    } else {
        // Horizontal pass over the input rows the vertical pass reads, then vertical.
        let mid = match &hc {
            Some(hc) => {
                let mut mid = vec![0u8; in_rows.len() * cw * 3];
                horizontal_pass(src, w, 0, in_rows.clone(), hc, &mut mid, cw);
                mid
            }
            None => copy_window(src, w, cols.clone(), in_rows.clone()),
        };
        match &vc {
            Some(vc) => {
                let mut out = vec![0u8; ch * cw * 3];
                vertical_pass(&mid, cw, 0, cw, in_rows.start, vc, &mut out);
                out
            }
            None => mid,
        }
    }
}

fn copy_window(src: &[u8], w: usize, cols: Range<usize>, rows: Range<usize>) -> Vec<u8> {
    let cw = cols.len();
    let mut out = vec![0u8; rows.len() * cw * 3];
    for (r, y) in rows.enumerate() {
        let s = &src[(y * w + cols.start) * 3..(y * w + cols.end) * 3];
        out[r * cw * 3..(r + 1) * cw * 3].copy_from_slice(s);
    }
    out
}

/// Horizontal pass: for each source row in `rows` (rows of `src_w` pixels whose first column is
/// input column `col0`), the output columns of `c`, written as rows of `cw` pixels.
///
/// The common kernel sizes run [`horizontal_pass_k`], whose tap loop has a length known at compile
/// time (unrolled, no bounds checks inside); the sums are the same integers in the same order.
fn horizontal_pass(
    src: &[u8],
    src_w: usize,
    col0: usize,
    rows: Range<usize>,
    c: &Coeffs,
    out: &mut [u8],
    cw: usize,
) {
    // AVX-512: the same sums, several times fewer instructions (see `ops::resize`).
    let line_len = src_w * 3;
    let half = 1i32 << (PRECISION_BITS - 1);
    let starts: Vec<usize> = c.xmin.iter().map(|&m| (m - col0) * 3).collect();
    if let Some(blocks) = resize::Blocks::new(&starts, &c.k, c.ksize, half, PRECISION_BITS) {
        blocks.rows(
            &src[rows.start * line_len..rows.end * line_len],
            line_len,
            rows.len(),
            out,
        );
        return;
    }
    if resize::available(c.ksize) {
        let e = resize::expand(&c.k, c.ksize);
        let pass = resize::Pass {
            starts: &starts,
            e: &e,
            half,
            bits: PRECISION_BITS,
        };
        resize::horizontal_rows(
            &src[rows.start * line_len..rows.end * line_len],
            line_len,
            rows.len(),
            &pass,
            out,
        );
        return;
    }
    // AVX2 (no AVX-512): two taps per 8-lane multiply, the same sums.
    if let Some(pairs) = resize::Pairs::new(&starts, &c.k, c.ksize, half, PRECISION_BITS) {
        pairs.rows(
            &src[rows.start * line_len..rows.end * line_len],
            line_len,
            rows.len(),
            out,
        );
        return;
    }
    match c.ksize {
        3 => horizontal_pass_k::<3>(src, src_w, col0, rows, c, out, cw),
        5 => horizontal_pass_k::<5>(src, src_w, col0, rows, c, out, cw),
        7 => horizontal_pass_k::<7>(src, src_w, col0, rows, c, out, cw),
        9 => horizontal_pass_k::<9>(src, src_w, col0, rows, c, out, cw),
        _ => {
            for (r, y) in rows.enumerate() {
                let line = &src[y * src_w * 3..(y + 1) * src_w * 3];
                let orow = &mut out[r * cw * 3..(r + 1) * cw * 3];
                for (xx, o) in orow.chunks_exact_mut(3).enumerate() {
                    horizontal_pixel(line, col0, c, xx, o);
                }
            }
        }
    }
}

/// One output pixel of the horizontal pass, with its own tap count (any kernel size; the pixels
/// whose `K`-tap window would run past the end of the row).
#[inline]
fn horizontal_pixel(line: &[u8], col0: usize, c: &Coeffs, xx: usize, o: &mut [u8]) {
    let half = 1i32 << (PRECISION_BITS - 1);
    let xmin = c.xmin[xx] - col0;
    let n = c.len[xx];
    let k = &c.k[xx * c.ksize..xx * c.ksize + n];
    let px = &line[xmin * 3..(xmin + n) * 3];
    let (mut s0, mut s1, mut s2) = (half, half, half);
    for (p, &kv) in px.chunks_exact(3).zip(k) {
        s0 += i32::from(p[0]) * kv;
        s1 += i32::from(p[1]) * kv;
        s2 += i32::from(p[2]) * kv;
    }
    o[0] = clip8(s0);
    o[1] = clip8(s1);
    o[2] = clip8(s2);
}

/// [`horizontal_pass`] for `c.ksize == K`: every pixel sums all `K` taps of its coefficient row
/// (the taps past `c.len[xx]` have coefficient 0, so the sum is the same), except near the end of
/// the row, where the window would leave it.
fn horizontal_pass_k<const K: usize>(
    src: &[u8],
    src_w: usize,
    col0: usize,
    rows: Range<usize>,
    c: &Coeffs,
    out: &mut [u8],
    cw: usize,
) {
    let half = 1i32 << (PRECISION_BITS - 1);
    for (r, y) in rows.enumerate() {
        let line = &src[y * src_w * 3..(y + 1) * src_w * 3];
        let orow = &mut out[r * cw * 3..(r + 1) * cw * 3];
        for (xx, (o, k)) in orow
            .chunks_exact_mut(3)
            .zip(c.k.chunks_exact(K))
            .enumerate()
        {
            // One byte more than the K pixels: each tap reads 4 bytes (R, G, B and the next
            // pixel's R, whose sum is dropped), so the compiler can use 4-lane vectors.
            let start = (c.xmin[xx] - col0) * 3;
            let Some(win) = line.get(start..start + 3 * K + 1) else {
                horizontal_pixel(line, col0, c, xx, o);
                continue;
            };
            let mut s = [half; 4];
            for (j, &kv) in k.iter().enumerate() {
                let p = &win[3 * j..3 * j + 4];
                for (sc, &pc) in s.iter_mut().zip(p) {
                    *sc += i32::from(pc) * kv;
                }
            }
            o[0] = clip8(s[0]);
            o[1] = clip8(s[1]);
            o[2] = clip8(s[2]);
        }
    }
}

/// Vertical pass: source rows of `src_w` pixels whose first row is input row `row0`; reads the
/// `n_cols` columns starting at `col0`; writes one output row of `n_cols` pixels per output row
/// of `c`.
fn vertical_pass(
    src: &[u8],
    src_w: usize,
    col0: usize,
    n_cols: usize,
    row0: usize,
    c: &Coeffs,
    out: &mut [u8],
) {
    let half = 1i32 << (PRECISION_BITS - 1);
    let width = n_cols * 3;
    for (yy, orow) in out.chunks_exact_mut(width).enumerate() {
        let ymin = c.xmin[yy] - row0;
        let n = c.len[yy];
        let k = &c.k[yy * c.ksize..yy * c.ksize + n];
        let first = (ymin * src_w + col0) * 3;
        resize::vertical_row(src, first, src_w * 3, k, half, PRECISION_BITS, orow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let out = resize_window(&src, 5, 4, 5, 4, 0..5, 0..4);
        assert_eq!(out, src);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(1000usize, 232usize), (300, 232), (7, 232), (4000, 309)] {
            let c = Coeffs::new(i, o, 0..o);
            for xx in 0..o {
                let s: i32 = c.k[xx * c.ksize..xx * c.ksize + c.len[xx]].iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= c.len[xx] as i32,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }

    #[test]
    fn fixed_size_horizontal_pass_equals_the_per_pixel_sums() {
        // Kernel sizes 3, 5, 7, 9 (the fixed-size paths, or `ops::resize` on AVX-512 CPUs) and 11,
        // 13 (the generic one), windows that
        // start at column 0 and that end at the last column (where the fixed-size window would
        // leave the row and the per-pixel path takes over), with a column offset.
        let mut seed = 12345u32;
        for (w, ow) in [
            (20usize, 39usize),
            (40, 39),
            (41, 17),
            (97, 29),
            (160, 35),
            (230, 41),
        ] {
            let h = 3;
            let src: Vec<u8> = (0..w * h * 3)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            for cols in [0..ow, ow / 3..ow, 0..ow / 2] {
                let c = Coeffs::new(w, ow, cols.clone());
                let span = c.input_span();
                let cw = cols.len();
                // The pass reads a window of the rows starting at input column `span.start`.
                let sub: Vec<u8> = (0..h)
                    .flat_map(|y| src[(y * w + span.start) * 3..(y * w + span.end) * 3].to_vec())
                    .collect();
                let mut got = vec![0u8; h * cw * 3];
                horizontal_pass(&sub, span.len(), span.start, 0..h, &c, &mut got, cw);
                let mut want = vec![0u8; h * cw * 3];
                for y in 0..h {
                    let line = &sub[y * span.len() * 3..(y + 1) * span.len() * 3];
                    for xx in 0..cw {
                        let o = &mut want[(y * cw + xx) * 3..][..3];
                        horizontal_pixel(line, span.start, &c, xx, o);
                    }
                }
                assert_eq!(got, want, "{w}->{ow} cols {cols:?} ksize {}", c.ksize);
            }
        }
    }

    #[test]
    fn window_equals_full_resize_then_crop_in_both_pass_orders() {
        assert!(vertical_first(20, 61, 18, 29));
        assert!(!vertical_first(37, 23, 16, 29));
        window_case(37, 23, 16, 29);
        window_case(20, 61, 18, 29);
    }

    fn window_case(w: usize, h: usize, ow: usize, oh: usize) {
        let src: Vec<u8> = (0..w * h * 3)
            .map(|i| ((i * 31 + i / 7) % 256) as u8)
            .collect();
        let full = resize_window(&src, w, h, ow, oh, 0..ow, 0..oh);
        let win = resize_window(&src, w, h, ow, oh, 3..11, 5..20);
        for y in 5..20 {
            for x in 3..11 {
                for c in 0..3 {
                    assert_eq!(
                        full[(y * ow + x) * 3 + c],
                        win[((y - 5) * 8 + x - 3) * 3 + c]
                    );
                }
            }
        }
    }
}
