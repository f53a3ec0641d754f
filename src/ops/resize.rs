//! The horizontal pass of Pillow's 8-bit resampling (`preprocess::resample`) with AVX-512 (and,
//! for CPUs without it, AVX2: [`Pairs`]): the same integer sums, so the same bytes.
//!
//! One output pixel reads a window of `K` RGB input pixels (`3K` bytes). The scalar path sums `K`
//! four-lane products per pixel. Here the window's first 31 bytes are widened to 32-bit lanes
//! in two vectors (bytes `0..16` and `15..31`, so lane `i` of both holds channel `i % 3`), multiplied
//! by the pixel's coefficients laid out per byte ([`expand`]: 32 per pixel, zero past the window
//! and on the byte the two loads share), added, and reduced per channel with three lane shifts
//! (`+3`, `+6`, `+12` lanes). Products are below 2^30 and the weights are non-negative, so the
//! 32-bit sums are exact and the order of the additions does not matter. Kernels of up to 10 taps
//! (downscales up to ~4.5x, the usual case for a photo going to 232 pixels); longer ones keep the
//! scalar path.
//!
//! Measured (one 640x480 JPEG's window, 466 rows x 224 output pixels, K = 7):
//! `cargo bench --bench conv_kernels -- resize_hpass`.

use super::cpu::{level, Level};

/// Coefficients per output pixel in the [`expand`]ed layout (two 16-lane vectors).
pub const EXPANDED: usize = 32;
/// Bytes of the input row each pixel's loads read from its window start.
const READ: usize = 31;
/// Longest kernel the AVX-512 pass takes: `3K <= READ - 1` bytes.
pub const MAX_TAPS: usize = 10;

/// Whether [`horizontal_rows`] runs for `ksize`-tap kernels on this CPU.
pub fn available(ksize: usize) -> bool {
    (1..=MAX_TAPS).contains(&ksize) && level() == Level::Avx512
}

/// Per-pixel fixed-point coefficients (`ksize` per pixel, zero past each pixel's tap count) into
/// the per-byte layout: pixel `x`, lane `i < 15` is byte `i` of the window (tap `i / 3`), lane 15
/// is zero, lane `16 + i` is byte `15 + i`; zero past `3 * ksize` bytes.
pub fn expand(k: &[i32], ksize: usize) -> Vec<i32> {
    assert!(ksize > 0 && ksize <= MAX_TAPS && k.len().is_multiple_of(ksize));
    let n = k.len() / ksize;
    let mut out = vec![0i32; n * EXPANDED];
    for (row, e) in k.chunks_exact(ksize).zip(out.chunks_exact_mut(EXPANDED)) {
        for (i, v) in e.iter_mut().enumerate() {
            let byte = if i < 16 { i } else { i - 1 };
            if i != 15 && byte < 3 * ksize {
                *v = row[byte / 3];
            }
        }
    }
    out
}

/// The output pixels of one horizontal pass: where each pixel's window starts and its weights.
#[derive(Clone, Copy, Debug)]
pub struct Pass<'a> {
    /// Byte offset of each output pixel's window in its input row (non-decreasing).
    pub starts: &'a [usize],
    /// The [`expand`]ed coefficients, [`EXPANDED`] per output pixel.
    pub e: &'a [i32],
    /// Rounding term added to every sum (`1 << (bits - 1)`).
    pub half: i32,
    /// Fixed-point fraction bits: each sum is shifted right by this much, then clipped to 0..=255.
    pub bits: u32,
}

/// For each of `rows` rows of `line_len` bytes in `src` (row `r` at `r * line_len`), output pixel
/// `x` of row `r` (3 bytes at `out[(r * n + x) * 3..]`, `n = pass.starts.len()`) is the rounded,
/// clipped sum over its window, which starts at byte `pass.starts[x]` of the row:
/// `clip8((half + sum_i e[x][i] * window[i]) >> bits)` per channel. Windows that would read past
/// the end of their row are read from a zero-padded copy. Panics unless [`available`] and the
/// slices fit.
pub fn horizontal_rows(src: &[u8], line_len: usize, rows: usize, pass: &Pass, out: &mut [u8]) {
    let (starts, e, half, bits) = (pass.starts, pass.e, pass.half, pass.bits);
    let n = starts.len();
    assert!(level() == Level::Avx512);
    assert!(e.len() >= n * EXPANDED && out.len() >= rows * n * 3 && src.len() >= rows * line_len);
    assert!(starts.iter().all(|&s| s < line_len.max(1)) && bits < 32);
    // Pixels whose 31-byte read stays inside the row (the first `fast` of them: starts grow).
    let fast = starts.partition_point(|&s| s + READ <= line_len);
    assert!(starts[..fast].iter().all(|&s| s + READ <= line_len));
    for r in 0..rows {
        let line = &src[r * line_len..][..line_len];
        let orow = &mut out[r * n * 3..][..n * 3];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 is present (asserted); pixel x < fast reads line[starts[x]..][..31],
        // inside the row (asserted above), and e[x * 32..][..32]; it writes orow[3x..3x+3].
        unsafe {
            avx512::row(
                line.as_ptr(),
                &starts[..fast],
                e.as_ptr(),
                half,
                bits,
                orow.as_mut_ptr(),
            );
        }
        for x in fast..n {
            let mut pad = [0u8; READ + 1];
            let tail = &line[starts[x]..];
            pad[..tail.len().min(READ)].copy_from_slice(&tail[..tail.len().min(READ)]);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, on the 32-byte padded copy; writes orow[3x..3x+3].
            unsafe {
                avx512::row(
                    pad.as_ptr(),
                    &[0],
                    e[x * EXPANDED..].as_ptr(),
                    half,
                    bits,
                    orow[x * 3..].as_mut_ptr(),
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (line, orow, half);
            unreachable!("resize::horizontal_rows is only dispatched on AVX-512 CPUs");
        }
    }
}

/// [`horizontal_rows`] in plain scalar code, tap by tap (the reference of the tests and the
/// benchmark's baseline; the resampler's own scalar path for other CPUs is the same loop with the
/// tap count fixed at compile time). Any CPU.
pub fn horizontal_rows_scalar(
    src: &[u8],
    line_len: usize,
    rows: usize,
    pass: &Pass,
    out: &mut [u8],
) {
    let n = pass.starts.len();
    let (e, half, bits) = (pass.e, pass.half, pass.bits);
    // Tap t's coefficient is the lane of its first byte (3t), shifted by one from byte 15 on.
    let lane = |t: usize| if 3 * t < 15 { 3 * t } else { 3 * t + 1 };
    for r in 0..rows {
        let line = &src[r * line_len..][..line_len];
        for (x, &s) in pass.starts.iter().enumerate() {
            let ce = &e[x * EXPANDED..][..EXPANDED];
            let mut sum = [half; 3];
            for t in 0..MAX_TAPS {
                let kv = ce[lane(t)];
                if kv != 0 {
                    let p = &line[s + 3 * t..][..3];
                    for (sc, &pc) in sum.iter_mut().zip(p) {
                        *sc += kv * i32::from(pc);
                    }
                }
            }
            for (ch, v) in sum.iter().enumerate() {
                out[(r * n + x) * 3 + ch] = (v >> bits).clamp(0, 255) as u8;
            }
        }
    }
}

/// The horizontal pass for AVX2 CPUs without AVX-512 (`Pairs::new` is `None` without AVX2 or for
/// kernels longer than [`MAX_TAPS`]; on AVX-512 CPUs the resampler takes [`horizontal_rows`] or
/// [`Blocks`] first): a pixel's window is read as 8-byte pieces, 6 bytes
/// (two taps x three channels) apart, each widened to eight 32-bit lanes and multiplied by the
/// pixel's coefficients laid out per lane (`[k_t, k_t, k_t, k_t+1, k_t+1, k_t+1, 0, 0]`); the
/// pieces' products are added and channel `c` is lane `c` plus lane `c + 3`. The same integer
/// sums as [`horizontal_rows_scalar`] (exact: products below 2^30, non-negative weights), so the
/// same bytes: about `K / 2` multiplies per pixel instead of `3K`.
pub struct Pairs {
    starts: Vec<usize>,
    /// [`Pairs::nv`] x 8 coefficients per output pixel.
    e: Vec<i32>,
    nv: usize,
    half: i32,
    bits: u32,
}

impl Pairs {
    /// `None` unless the CPU has AVX2 and `1 <= ksize <= MAX_TAPS`. `starts` are the window
    /// starts (bytes, non-decreasing), `k` holds `ksize` coefficients per output pixel.
    pub fn new(starts: &[usize], k: &[i32], ksize: usize, half: i32, bits: u32) -> Option<Pairs> {
        if !(1..=MAX_TAPS).contains(&ksize) || level() == Level::Scalar || bits >= 32 {
            return None;
        }
        let n = starts.len();
        assert!(k.len() == n * ksize);
        let nv = ksize.div_ceil(2);
        let mut e = vec![0i32; n * nv * 8];
        for (row, ex) in k.chunks_exact(ksize).zip(e.chunks_exact_mut(nv * 8)) {
            for (t, &kv) in row.iter().enumerate() {
                let lane = (t / 2) * 8 + (t % 2) * 3;
                ex[lane..lane + 3].fill(kv);
            }
        }
        Some(Pairs {
            starts: starts.to_vec(),
            e,
            nv,
            half,
            bits,
        })
    }

    /// Bytes a pixel's loads read from its window start.
    fn read(&self) -> usize {
        6 * (self.nv - 1) + 8
    }

    /// [`horizontal_rows`]' contract with this pass's pixels: row `r` of `rows` rows of
    /// `line_len` bytes, output pixel `x` at `out[(r * n + x) * 3..][..3]`. Windows that would
    /// read past the end of their row are read from a zero-padded copy. Panics unless the slices
    /// fit.
    pub fn rows(&self, src: &[u8], line_len: usize, rows: usize, out: &mut [u8]) {
        let n = self.starts.len();
        let read = self.read();
        assert!(out.len() >= rows * n * 3 && src.len() >= rows * line_len);
        assert!(self.starts.iter().all(|&s| s < line_len.max(1)));
        let fast = self.starts.partition_point(|&s| s + read <= line_len);
        assert!(self.starts[..fast].iter().all(|&s| s + read <= line_len));
        for r in 0..rows {
            let line = &src[r * line_len..][..line_len];
            let orow = &mut out[r * n * 3..][..n * 3];
            // SAFETY (both calls): AVX2 is present (`new`); pixel x < fast reads
            // line[starts[x]..][..read] inside the row (asserted above), e[x * nv * 8..][..nv * 8]
            // (sized in `new`), and writes orow[3x..3x + 3]; the tail pixels read a 32-byte
            // padded copy (read <= 32 at nv <= 5).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                self.row(line.as_ptr(), &self.starts[..fast], 0, orow.as_mut_ptr());
                for x in fast..n {
                    let mut pad = [0u8; 32];
                    let tail = &line[self.starts[x]..];
                    let m = tail.len().min(32);
                    pad[..m].copy_from_slice(&tail[..m]);
                    self.row(pad.as_ptr(), &[0], x, orow[x * 3..].as_mut_ptr());
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (line, orow, fast);
                unreachable!("resize::Pairs is only built on AVX2 CPUs");
            }
        }
    }

    /// Pixels `first..first + starts.len()`, windows at `line + starts[i]`.
    ///
    /// # Safety
    /// As in [`Pairs::rows`].
    #[cfg(target_arch = "x86_64")]
    unsafe fn row(&self, line: *const u8, starts: &[usize], first: usize, out: *mut u8) {
        let e = self.e.as_ptr().add(first * self.nv * 8);
        let (h, b) = (self.half, self.bits);
        match self.nv {
            1 => avx2::row::<1>(line, starts, e, h, b, out),
            2 => avx2::row::<2>(line, starts, e, h, b, out),
            3 => avx2::row::<3>(line, starts, e, h, b, out),
            4 => avx2::row::<4>(line, starts, e, h, b, out),
            _ => avx2::row::<5>(line, starts, e, h, b, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Output pixel `x < starts.len()`: the window at `line + starts[x]`, coefficients at
    /// `e + 8 NV x`, 3 bytes written at `out + 3x`.
    ///
    /// # Safety
    /// AVX2 present; `line + starts[x]` readable for `6 (NV - 1) + 8` bytes, `e` for
    /// `8 NV starts.len()` i32, `out` writable for `3 starts.len()` bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row<const NV: usize>(
        line: *const u8,
        starts: &[usize],
        e: *const i32,
        half: i32,
        bits: u32,
        out: *mut u8,
    ) {
        let hv = _mm_set1_epi32(half);
        let sh = _mm_cvtsi32_si128(bits as i32);
        let (z, top) = (_mm_setzero_si128(), _mm_set1_epi32(255));
        // lanes 3..6 moved to lanes 0..3
        let up = _mm256_setr_epi32(3, 4, 5, 6, 7, 7, 7, 7);
        for (x, &s) in starts.iter().enumerate() {
            let p = line.add(s);
            let ce = e.add(x * NV * 8);
            let mut v = _mm256_setzero_si256();
            for j in 0..NV {
                let d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(6 * j) as *const __m128i));
                let c = _mm256_loadu_si256(ce.add(8 * j) as *const __m256i);
                v = _mm256_add_epi32(v, _mm256_mullo_epi32(d, c));
            }
            let v = _mm256_add_epi32(v, _mm256_permutevar8x32_epi32(v, up));
            let v = _mm_sra_epi32(_mm_add_epi32(_mm256_castsi256_si128(v), hv), sh);
            let v = _mm_min_epi32(_mm_max_epi32(v, z), top);
            let v = _mm_packus_epi16(_mm_packus_epi32(v, v), z);
            let b = (_mm_cvtsi128_si32(v) as u32).to_le_bytes();
            let o = out.add(3 * x);
            *o = b[0];
            *o.add(1) = b[1];
            *o.add(2) = b[2];
        }
    }
}

/// Output pixels per block of [`Blocks`]: 48 bytes (16 RGB pixels), three 16-lane vectors.
const BLOCK: usize = 16;
/// Bytes of the input row one block may read: two 64-byte vectors (`vpermt2b`'s table).
const SPAN: usize = 128;
/// Bytes of one block's table entry for one tap and one third of its output bytes: the byte
/// permutation (64 bytes) then the coefficients (16 i32).
const ENTRY: usize = 64 + 64;

/// The horizontal pass prepared for AVX-512 VBMI (`vpermt2b`): output pixels in blocks of
/// [`BLOCK`], each reading one window of at most [`SPAN`] bytes of the row. For every tap, a
/// byte permutation lays the block's 48 input bytes of that tap (pixel `p`, channel `c` at byte
/// `start(p) + 3 * tap + c`) out as 48 zero-extended 32-bit lanes, which are multiplied by the
/// pixels' coefficients and summed over the taps: the same integer sums as [`horizontal_rows`],
/// about three times fewer instructions (no per-pixel reduction across lanes).
pub struct Blocks {
    n: usize,
    ksize: usize,
    /// Window start (byte) of each block.
    base: Vec<usize>,
    /// Per block, tap, third: [`ENTRY`] bytes (permutation, then coefficients as i32 LE).
    table: Vec<u8>,
    half: i32,
    bits: u32,
}

impl Blocks {
    /// `None` unless the CPU has AVX-512 VBMI (and BW, VL), the coefficients are non-negative
    /// and every block's windows fit in [`SPAN`] bytes (downscales up to about 2.5x; larger
    /// ones keep [`horizontal_rows`]). `k` holds `ksize` coefficients per output pixel.
    pub fn new(starts: &[usize], k: &[i32], ksize: usize, half: i32, bits: u32) -> Option<Blocks> {
        let n = starts.len();
        if !vbmi_available() || ksize == 0 || k.len() != n * ksize || bits >= 32 {
            return None;
        }
        if k.iter().any(|&v| v < 0) || starts.windows(2).any(|w| w[0] > w[1]) {
            return None;
        }
        let blocks = n.div_ceil(BLOCK);
        let mut base = Vec::with_capacity(blocks);
        let mut table = vec![0u8; blocks * ksize * 3 * ENTRY];
        for b in 0..blocks {
            let x0 = b * BLOCK;
            let nb = BLOCK.min(n - x0);
            let b0 = starts[x0];
            if starts[x0 + nb - 1] + 3 * ksize - b0 > SPAN {
                return None;
            }
            base.push(b0);
            for t in 0..ksize {
                for g in 0..3 {
                    let entry = &mut table[((b * ksize + t) * 3 + g) * ENTRY..][..ENTRY];
                    let (perm, coef) = entry.split_at_mut(64);
                    for i in 0..16 {
                        let e = 16 * g + i;
                        let (p, c) = (e / 3, e % 3);
                        if p < nb {
                            perm[4 * i] = (starts[x0 + p] + 3 * t + c - b0) as u8;
                            coef[4 * i..4 * i + 4]
                                .copy_from_slice(&k[(x0 + p) * ksize + t].to_le_bytes());
                        }
                    }
                }
            }
        }
        Some(Blocks {
            n,
            ksize,
            base,
            table,
            half,
            bits,
        })
    }

    /// [`horizontal_rows`] with this plan: `rows` rows of `line_len` bytes from `src`, output
    /// pixel `x` of row `r` at `out[(r * n + x) * 3..]`. Windows that would read past the end of
    /// their row are read from a zero-padded copy.
    pub fn rows(&self, src: &[u8], line_len: usize, rows: usize, out: &mut [u8]) {
        let n = self.n;
        assert!(out.len() >= rows * n * 3 && src.len() >= rows * line_len);
        assert!(self.base.iter().all(|&b| b < line_len.max(1)));
        assert!(self.table.len() >= self.base.len() * self.ksize * 3 * ENTRY);
        // Blocks whose 128-byte read stays inside the row (bases grow).
        let fast = self.base.partition_point(|&b| b + SPAN <= line_len);
        for r in 0..rows {
            let line = &src[r * line_len..][..line_len];
            let orow = &mut out[r * n * 3..][..n * 3];
            for (b, &b0) in self.base.iter().enumerate() {
                let mut pad = [0u8; SPAN];
                let window = if b < fast {
                    &line[b0..b0 + SPAN]
                } else {
                    let tail = &line[b0..];
                    pad[..tail.len().min(SPAN)].copy_from_slice(&tail[..tail.len().min(SPAN)]);
                    &pad[..]
                };
                let x0 = b * BLOCK;
                let nb = BLOCK.min(n - x0);
                let entries = &self.table[b * self.ksize * 3 * ENTRY..][..self.ksize * 3 * ENTRY];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: VBMI, BW, VL and F are present (checked in `new`, the only constructor);
                // `window` holds SPAN bytes, `entries` ksize * 3 entries, and the block writes
                // orow[3 * x0..3 * (x0 + nb)], inside `orow` (x0 + nb <= n).
                unsafe {
                    vbmi::block(
                        window.as_ptr(),
                        entries.as_ptr(),
                        self.ksize,
                        self.half,
                        self.bits,
                        orow[3 * x0..].as_mut_ptr(),
                        3 * nb,
                    );
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (window, entries, orow, nb);
                    unreachable!("resize::Blocks is only built on AVX-512 VBMI CPUs");
                }
            }
        }
    }
}

/// Whether [`Blocks`] can run on this CPU.
pub(crate) fn vbmi_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        level() == Level::Avx512
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod vbmi {
    use super::ENTRY;
    use std::arch::x86_64::*;

    /// One block of [`super::Blocks::rows`]: `len <= 48` output bytes at `out`.
    ///
    /// # Safety
    /// AVX-512 F, BW, VL and VBMI present; `window` readable for 128 bytes, `entries` for
    /// `ksize * 3` entries of [`ENTRY`] bytes, `out` writable for `len` bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub(super) unsafe fn block(
        window: *const u8,
        entries: *const u8,
        ksize: usize,
        half: i32,
        bits: u32,
        out: *mut u8,
        len: usize,
    ) {
        let lo = _mm512_loadu_si512(window as *const __m512i);
        let hi = _mm512_loadu_si512(window.add(64) as *const __m512i);
        // byte 4i of each 32-bit lane: the pixel byte; the other three bytes zero
        const LANE_BYTE0: __mmask64 = 0x1111_1111_1111_1111;
        let hv = _mm512_set1_epi32(half);
        let mut acc = [hv; 3];
        for t in 0..ksize {
            for (g, a) in acc.iter_mut().enumerate() {
                let e = entries.add((t * 3 + g) * ENTRY);
                let idx = _mm512_loadu_si512(e as *const __m512i);
                let coef = _mm512_loadu_si512(e.add(64) as *const __m512i);
                let px = _mm512_maskz_permutex2var_epi8(LANE_BYTE0, lo, idx, hi);
                *a = _mm512_add_epi32(*a, _mm512_mullo_epi32(px, coef));
            }
        }
        let sh = _mm_cvtsi32_si128(bits as i32);
        let z = _mm512_setzero_si512();
        for (g, a) in acc.iter().enumerate() {
            let v = _mm512_max_epi32(_mm512_sra_epi32(*a, sh), z);
            // the first `len - 16g` of this third's 16 bytes (all of them in a whole block)
            let n = len.saturating_sub(16 * g).min(16) as u32;
            let m = ((1u32 << n) - 1) as __mmask16;
            _mm_mask_storeu_epi8(out.add(16 * g) as *mut i8, m, _mm512_cvtusepi32_epi8(v));
        }
    }
}

/// The vertical pass of one output row:/// The vertical pass of one output row: `out[j] = clip8((half + sum_t k[t] * src[first + t *
/// stride + j]) >> bits)` for `j < out.len()`, i.e. `k.len()` input rows `stride` bytes apart,
/// the first at byte `first`. The same integer sums as Pillow in any order (products below 2^30,
/// non-negative weights), compiled for the CPU's best SIMD level: the 32-bit multiplies need
/// SSE4.1 at least, which the portable x86-64 baseline lacks. Panics if a row is out of `src`.
pub fn vertical_row(
    src: &[u8],
    first: usize,
    stride: usize,
    k: &[i32],
    half: i32,
    bits: u32,
    out: &mut [u8],
) {
    let n = out.len();
    if n == 0 || k.is_empty() {
        out.fill(0);
        return;
    }
    assert!(first + (k.len() - 1) * stride + n <= src.len() && bits < 32);
    vertical_mv(src, first, stride, k, half, bits, out);
}

/// Bytes per block of [`vertical_row`]: four 16-lane vectors of 32-bit sums.
const VBLOCK: usize = 64;

#[inline(always)]
fn vertical_body<const FMA: bool>(
    src: &[u8],
    first: usize,
    stride: usize,
    k: &[i32],
    half: i32,
    bits: u32,
    out: &mut [u8],
) {
    let n = out.len();
    let mut j = 0;
    while j < n {
        let len = VBLOCK.min(n - j);
        let mut acc = [half; VBLOCK];
        for (t, &kv) in k.iter().enumerate() {
            let line = &src[first + t * stride + j..][..len];
            if len == VBLOCK {
                let line: &[u8; VBLOCK] = line.try_into().unwrap_or_else(|_| unreachable!());
                for (a, &p) in acc.iter_mut().zip(line) {
                    *a += i32::from(p) * kv;
                }
            } else {
                for (a, &p) in acc.iter_mut().zip(line) {
                    *a += i32::from(p) * kv;
                }
            }
        }
        for (o, &a) in out[j..j + len].iter_mut().zip(&acc) {
            *o = (a >> bits).clamp(0, 255) as u8;
        }
        j += len;
    }
}

super::cpu::multiversion!(fn vertical_mv(src: &[u8], first: usize, stride: usize, k: &[i32], half: i32, bits: u32, out: &mut [u8]) => vertical_body);

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::EXPANDED;
    use std::arch::x86_64::*;

    /// Output pixel `x < starts.len()`: the window at `line + starts[x]`, coefficients at
    /// `e + 32x`, 3 bytes written at `out + 3x`.
    ///
    /// # Safety
    /// AVX-512F present; `line + starts[x]` readable for 31 bytes, `e` for `32 * starts.len()`
    /// i32, `out` writable for `3 * starts.len()` bytes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row(
        line: *const u8,
        starts: &[usize],
        e: *const i32,
        half: i32,
        bits: u32,
        out: *mut u8,
    ) {
        let z = _mm512_setzero_si512();
        let hv = _mm512_set1_epi32(half);
        let sh = _mm_cvtsi32_si128(bits as i32);
        for (x, &s) in starts.iter().enumerate() {
            let p = line.add(s);
            let d1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
            let d2 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(15) as *const __m128i));
            let ce = e.add(x * EXPANDED);
            let c1 = _mm512_loadu_si512(ce as *const __m512i);
            let c2 = _mm512_loadu_si512(ce.add(16) as *const __m512i);
            let mut v = _mm512_add_epi32(_mm512_mullo_epi32(d1, c1), _mm512_mullo_epi32(d2, c2));
            // Lane i (i < 3) gathers lanes i, i+3, ..., i+15: channel i of the pixel.
            v = _mm512_add_epi32(v, _mm512_alignr_epi32::<3>(z, v));
            v = _mm512_add_epi32(v, _mm512_alignr_epi32::<6>(z, v));
            v = _mm512_add_epi32(v, _mm512_alignr_epi32::<12>(z, v));
            v = _mm512_max_epi32(_mm512_sra_epi32(_mm512_add_epi32(v, hv), sh), z);
            let b = (_mm_cvtsi128_si32(_mm512_cvtusepi32_epi8(v)) as u32).to_le_bytes();
            let o = out.add(3 * x);
            *o = b[0];
            *o.add(1) = b[1];
            *o.add(2) = b[2];
        }
    }
}
