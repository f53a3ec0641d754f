//! Winograd convolution F(m x m, 3 x 3) for dense (`groups == 1`) 3x3 stride-1 convolutions.
//!
//! `Y = A^T [ (G g G^T) . (B^T d B) ] A` per output tile of `m x m` pixels read from an input tile of
//! `a x a = (m + 2) x (m + 2)` pixels (Lavin & Gray 2015, interpolation points 0, +-1, +-2 (, inf)):
//! - F(2,3) ([`Tile::F2`]): 16 products per 4 outputs instead of 36 (2.25x fewer multiplications);
//! - F(4,3) ([`Tile::F4`]): 36 products per 16 outputs instead of 144 (4x fewer), at the price of a
//!   larger transformed weight (36/9 = 4x the original) and a few more fp32 rounding errors.
//!
//! Three passes per batch chunk (several images share the GEMMs when a layer has few tiles):
//! 1. input transform, rayon over channels: `V[c][e][t]` (`e` = element of the `a x a` tile,
//!    `t` = tile index over the images of the chunk), 16 tiles per SIMD vector;
//! 2. `a*a` independent GEMMs `M[e] (O x T) = U[e] (O x C) x V[:, e, :] (C x T)`, rayon over `e`,
//!    each single-threaded (no synchronisation inside small GEMMs); on AVX-512 CPUs `U[e]` is kept
//!    packed in 8-channel panels and the GEMM is [`super::packed1x1::gemm_serial`] (no operand
//!    packed per call; 1-8% faster than the `gemm` crate on Wide ResNet's shapes), else `gemm`;
//! 3. output transform, rayon over (image, output channel) planes, with the shared epilogue (bias,
//!    residual, activation) on each output row.
//!
//! `U` (the transformed weight) is computed once per weight and variant and kept in a
//! [`PreparedWeight`]; [`super::conv2d`] without one transforms the weight on every call.

use super::cpu::{epilogue, multiversion};
use super::dense::gemm_strided;
use super::{Activation, Geometry};
use candle_core::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;
use std::ops::{Add, Mul, Sub};
use std::sync::{Arc, OnceLock};

/// Output tile size of the Winograd variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// F(2x2, 3x3): 4x4 input tiles.
    F2,
    /// F(4x4, 3x3): 6x6 input tiles.
    F4,
}

impl Tile {
    /// Output pixels per tile side.
    pub const fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Input pixels per tile side (`m + 2`).
    pub const fn a(self) -> usize {
        self.m() + 2
    }

    fn g(self) -> &'static [[f64; 3]] {
        match self {
            Tile::F2 => &G2,
            Tile::F4 => &G4,
        }
    }
}

/// Weight transform matrices `G` (`a x 3`).
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const G4: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Smallest output side that uses F(2,3) (see [`choose`]).
pub const MIN_F2_SIZE: usize = 14;

/// The Winograd variant for a dense 3x3 stride-1 convolution of these sizes, or `None` where the
/// im2col + GEMM path is faster.
///
/// Measured on the WRN layers (single-thread on-CPU time per image in ms, interleaved A/B on a busy
/// 2-vCPU AVX-512 box, `ops::conv2d_with_kernel`), im2col / F(2,3) / F(4,3):
/// - batch 1: 56^2x128 8.8/4.7/4.0, 28^2x256 6.6/4.5/4.0, 14^2x512 6.7/5.3/7.7, 7^2x1024 8.4/10.3/23.0;
/// - batch 8: 56^2 8.3/4.6/4.7, 28^2 7.4/4.7/4.4, 14^2 6.6/4.6/4.5, 7^2 6.6/5.2/4.6.
///
/// F(2,3) from 14x14 up (at 7x7 with one image, 16 tiles, the transformed weight (16/9 of the
/// original) costs more memory traffic than the work saved; with a batch of 4+ it saves ~1.4 ms per
/// image per 7x7 layer but its transformed weights would add 134 MB to the full profile's resident
/// set, whose budget is 450 MB: the 7x7 layers stay on im2col at every batch size).
///
/// F(4,3) is faster from 28x28 up (10-15% on those layers, ~1.5% of the WRN forward pass) but
/// triples the logit error of WRN against torchvision (max |dlogit| 9.2e-4 vs 3.5e-4 with F(2,3)
/// only and 3.2e-4 without Winograd; the parity tolerance is 1e-3), and its weights are 4x the
/// original (+150 MB per 1024-channel layer): only with `IMGCLASS_WINOGRAD=f4` (from 28x28 up).
pub fn choose(n: usize, c: usize, o: usize, oh: usize, ow: usize) -> Option<Tile> {
    let _ = (c, o);
    if oh.min(ow) >= 28 && mode() == Mode::WithF4 {
        return Some(Tile::F4);
    }
    let tiles = n * oh.div_ceil(2) * ow.div_ceil(2);
    (oh.min(ow) >= MIN_F2_SIZE && tiles >= 49).then_some(Tile::F2)
}

/// Whether the Winograd kernel may be used: `IMGCLASS_WINOGRAD=0` turns it off (A/B switch for
/// benchmarks), `IMGCLASS_WINOGRAD=f4` also uses F(4,3) (see [`choose`]); read once per process.
pub fn enabled() -> bool {
    mode() != Mode::Off
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    Auto,
    WithF4,
}

fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("IMGCLASS_WINOGRAD") {
        Ok(v) if v.trim() == "0" => Mode::Off,
        Ok(v) if v.trim().eq_ignore_ascii_case("f4") => Mode::WithF4,
        _ => Mode::Auto,
    })
}

/// A convolution weight plus its transformed forms, computed on first use and shared by clones.
///
/// Build it once (at model load time) and pass it to [`super::conv2d_prepared`] on every call, so a
/// weight is transformed once per Winograd variant instead of once per call.
#[derive(Clone)]
pub struct PreparedWeight(Arc<Inner>);

struct Inner {
    weight: Tensor,
    f2: OnceLock<Vec<f32>>,
    f4: OnceLock<Vec<f32>>,
}

impl std::fmt::Debug for PreparedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedWeight")
            .field("shape", &self.0.weight.dims())
            .field("f2", &self.0.f2.get().is_some())
            .field("f4", &self.0.f4.get().is_some())
            .finish()
    }
}

impl PreparedWeight {
    pub fn new(weight: Tensor) -> Self {
        Self(Arc::new(Inner {
            weight,
            f2: OnceLock::new(),
            f4: OnceLock::new(),
        }))
    }

    pub fn weight(&self) -> &Tensor {
        &self.0.weight
    }

    /// `U[e][o][c]` for `tile`, from the contiguous f32 weight `w` (`[O, C, 3, 3]`) of this value.
    pub(crate) fn transformed(&self, tile: Tile, w: &[f32], o: usize, c: usize) -> &[f32] {
        let cell = match tile {
            Tile::F2 => &self.0.f2,
            Tile::F4 => &self.0.f4,
        };
        cell.get_or_init(|| transform_weights(w, o, c, tile))
    }
}

/// A dense 3x3 weight kept ONLY in its F(2,3)-transformed form: the original is dropped, so a
/// layer that always runs as Winograd (see [`super::conv2d_winograd`]) holds 16/9 of its weight
/// instead of 25/9 ([`PreparedWeight`] keeps both).
#[derive(Clone)]
pub struct WinogradWeight {
    u: Arc<Vec<f32>>,
    o: usize,
    c: usize,
}

impl std::fmt::Debug for WinogradWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WinogradWeight")
            .field("out_channels", &self.o)
            .field("in_channels", &self.c)
            .finish()
    }
}

impl WinogradWeight {
    /// Transform `w` (`[O, C, 3, 3]`, f32, CPU).
    pub fn new(w: &Tensor) -> candle_core::Result<Self> {
        let (o, c, kh, kw) = w.dims4()?;
        if kh != 3 || kw != 3 || w.dtype() != candle_core::DType::F32 || !w.device().is_cpu() {
            candle_core::bail!(
                "WinogradWeight: expected an f32 CPU [O, C, 3, 3] weight, got {:?} {:?}",
                w.dims(),
                w.dtype()
            );
        }
        let w = w.contiguous()?;
        let v = super::cpu::F32View::new(&w)?;
        let u = transform_weights(v.slice()?, o, c, Tile::F2);
        Ok(Self {
            u: Arc::new(u),
            o,
            c,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.o
    }

    pub fn in_channels(&self) -> usize {
        self.c
    }

    pub(crate) fn transformed(&self) -> &[f32] {
        &self.u
    }
}

/// Whether the transformed weights of a layer with `o` output channels are kept as
/// [`super::packed1x1::pack`]ed panels per element (`U[e]` = `[O/8][C][8]`) and its GEMMs run on
/// [`super::packed1x1::gemm_serial`] (AVX-512 CPUs; by default on AMD CPUs only,
/// [`super::cpu::packed_gemms_by_default`], `IMGCLASS_WINO_GEMM=0` / `=1` forces it off / on),
/// instead of `U[e][o][c]` through `gemm`. Fixed for the process, so a weight transformed earlier
/// always matches.
pub(crate) fn packed_gemm(o: usize) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        super::env_switch("IMGCLASS_WINO_GEMM", super::cpu::packed_gemms_by_default())
    }) && super::packed1x1::available(o)
}

/// `U[e][o][c] = (G w[o][c] G^T)[e]`, computed in f64 and rounded once; each `U[e]` packed when
/// [`packed_gemm`]`(o)`.
pub(crate) fn transform_weights(w: &[f32], o: usize, c: usize, tile: Tile) -> Vec<f32> {
    let a = tile.a();
    let g = tile.g();
    assert!(w.len() >= o * c * 9);
    let per_o: Vec<Vec<f32>> = (0..o)
        .into_par_iter()
        .map(|oc| {
            let mut v = vec![0f32; a * a * c];
            for ci in 0..c {
                let k = &w[(oc * c + ci) * 9..][..9];
                // t = G k (a x 3)
                let mut t = [[0f64; 3]; 6];
                for (i, gi) in g.iter().enumerate() {
                    for q in 0..3 {
                        t[i][q] = (0..3).map(|p| gi[p] * f64::from(k[p * 3 + q])).sum();
                    }
                }
                // u = t G^T (a x a)
                for i in 0..a {
                    for (j, gj) in g.iter().enumerate() {
                        let s: f64 = (0..3).map(|q| t[i][q] * gj[q]).sum();
                        v[(i * a + j) * c + ci] = s as f32;
                    }
                }
            }
            v
        })
        .collect();
    let mut u = vec![0f32; a * a * o * c];
    u.par_chunks_mut(o * c).enumerate().for_each(|(e, ue)| {
        for (oc, row) in ue.chunks_mut(c).enumerate() {
            row.copy_from_slice(&per_o[oc][e * c..][..c]);
        }
    });
    if packed_gemm(o) {
        u.par_chunks_mut(o * c)
            .for_each(|ue| ue.copy_from_slice(&super::packed1x1::pack(ue, o, c)));
    }
    u
}

/// Tiles per SIMD vector in the transforms (one AVX-512 register of f32).
const L: usize = 16;
/// Tiles per GEMM to aim for: smaller layers put several images into one GEMM.
const TILE_TARGET: usize = 256;
/// Upper bound of the transformed input + output of one batch chunk, in floats (32 MiB).
const CHUNK_BUDGET: usize = 8 << 20;

/// Scratch buffers (transformed input and GEMM output; im2col columns) kept between calls: a fresh
/// buffer of a few MiB per call costs page faults and zeroing (a quarter of the run time at 56x56).
/// One pool for the process, not one buffer per thread: a forward pass runs on whichever pool
/// thread picks it up, and per-thread buffers left one large buffer on every thread (~18 MiB each
/// for Wide ResNet). The pool holds as many buffers as calls ever ran at once (usually one).
static SCRATCH: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// Run `f` on a scratch slice of `len` floats (contents unspecified) taken from [`SCRATCH`] (also
/// used by [`super::dense`] for im2col). The largest pooled buffer is taken, and grown (replaced)
/// when it is too short; it goes back to the pool afterwards.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    // A nested call (another forward pass stolen by this rayon thread while it waits) finds the
    // first buffer taken and uses another one.
    let taken = {
        let mut pool = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
        let largest = (0..pool.len()).max_by_key(|&i| pool[i].len());
        largest.map(|i| pool.swap_remove(i))
    };
    let mut buf = match taken {
        Some(b) if b.len() >= len => b,
        short => {
            // Free the short buffer first, so that the peak holds one buffer, not both.
            drop(short);
            vec![0f32; len]
        }
    };
    let r = f(&mut buf[..len]);
    SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    r
}

/// `act(conv3x3(x, w) + bias [+ res])` with `u` = [`transform_weights`] of `w` for `tile`.
pub(crate) fn winograd(
    x: &[f32],
    u: &[f32],
    tile: Tile,
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
) -> Vec<f32> {
    let (m, a) = (tile.m(), tile.a());
    let aa = a * a;
    let (ntx, nty) = (g.ow.div_ceil(m), g.oh.div_ceil(m));
    let tpi = ntx * nty;
    let plane = g.oh * g.ow;
    let nb = TILE_TARGET
        .div_ceil(tpi)
        .min(CHUNK_BUDGET / (aa * tpi * (g.c + g.o)).max(1))
        .clamp(1, g.n.max(1));
    let mut out = vec![0f32; g.n * g.o * plane];
    // Rows of V are `t_all + L` long: the input transform stores whole SIMD vectors, the tail
    // lanes landing on tiles written later or in the padding. M gets `L` floats of slack at the
    // end, so the output transform can load whole vectors too.
    let v_len = aa * g.c * (nb * tpi + L);
    let m_len = aa * g.o * nb * tpi + L;
    with_scratch(v_len + m_len, |scratch| {
        let (v, mm) = scratch.split_at_mut(v_len);
        for i0 in (0..g.n).step_by(nb) {
            let nbi = nb.min(g.n - i0);
            let out = &mut out[i0 * g.o * plane..][..nbi * g.o * plane];
            chunk(x, u, tile, bias, res, act, g, i0, nbi, v, mm, out);
        }
    });
    out
}

/// One batch chunk: images `i0..i0 + nb`, output planes `out`.
#[allow(clippy::too_many_arguments)]
fn chunk(
    x: &[f32],
    u: &[f32],
    tile: Tile,
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
    i0: usize,
    nbi: usize,
    v: &mut [f32],
    mm: &mut [f32],
    out: &mut [f32],
) {
    let aa = tile.a() * tile.a();
    let (ntx, nty) = (g.ow.div_ceil(tile.m()), g.oh.div_ceil(tile.m()));
    let plane = g.oh * g.ow;
    let t_all = nbi * ntx * nty;
    let vs = t_all + L;
    {
        let v = &mut v[..aa * g.c * vs];
        let mm = &mut mm[..aa * g.o * t_all + L];
        v.par_chunks_mut(aa * vs)
            .enumerate()
            .for_each(|(c, dst)| match tile {
                Tile::F2 => input_f2(x, g, i0, nbi, c, dst),
                Tile::F4 => input_f4(x, g, i0, nbi, c, dst),
            });
        let v = &*v;
        mm[..aa * g.o * t_all]
            .par_chunks_mut(g.o * t_all)
            .enumerate()
            .for_each(|(e, dst)| {
                if packed_gemm(g.o) {
                    return super::packed1x1::gemm_serial(
                        &u[e * g.o * g.c..][..g.o * g.c],
                        &v[e * vs..],
                        aa * vs,
                        dst,
                        t_all,
                        g.o,
                        g.c,
                        t_all,
                    );
                }
                gemm_strided(
                    g.o,
                    t_all,
                    g.c,
                    &u[e * g.o * g.c..][..g.o * g.c],
                    &v[e * vs..],
                    aa * vs,
                    dst,
                    Parallelism::None,
                )
            });
        let mm = &*mm;
        let job = OutJob { mm, t_all, g, act };
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(idx, dst)| {
                let (j, oc) = (idx / g.o, idx % g.o);
                let b = bias.map_or(0.0, |b| b[oc]);
                let r = res.map(|r| &r[((i0 + j) * g.o + oc) * plane..][..plane]);
                match tile {
                    Tile::F2 => output_f2(&job, j, oc, b, r, dst),
                    Tile::F4 => output_f4(&job, j, oc, b, r, dst),
                }
            });
    }
}

/// Read-only operands of the output transform.
struct OutJob<'a> {
    mm: &'a [f32],
    t_all: usize,
    g: &'a Geometry,
    act: Activation,
}

/// `L` lanes of f32: one value of `L` neighbouring tiles.
#[derive(Clone, Copy)]
struct V([f32; L]);

impl V {
    const ZERO: V = V([0.0; L]);

    #[inline(always)]
    fn load(s: &[f32]) -> V {
        let mut v = [0f32; L];
        v.copy_from_slice(&s[..L]);
        V(v)
    }

    #[inline(always)]
    fn store(&self, d: &mut [f32]) {
        d[..L].copy_from_slice(&self.0);
    }
}

impl Add for V {
    type Output = V;
    #[inline(always)]
    fn add(mut self, o: V) -> V {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
        self
    }
}

impl Sub for V {
    type Output = V;
    #[inline(always)]
    fn sub(mut self, o: V) -> V {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a -= b;
        }
        self
    }
}

impl Mul<f32> for V {
    type Output = V;
    #[inline(always)]
    fn mul(mut self, s: f32) -> V {
        for a in self.0.iter_mut() {
            *a *= s;
        }
        self
    }
}

/// One dimension of the input transform `B^T d`.
#[inline(always)]
fn in1d<const A: usize>(d: &[V; A]) -> [V; A] {
    let mut r = [V::ZERO; A];
    if A == 6 {
        r[0] = d[0] * 4.0 - d[2] * 5.0 + d[4];
        r[1] = d[3] + d[4] - (d[1] + d[2]) * 4.0;
        r[2] = (d[1] - d[2]) * 4.0 + d[4] - d[3];
        r[3] = (d[3] - d[1]) * 2.0 + d[4] - d[2];
        r[4] = (d[1] - d[3]) * 2.0 + d[4] - d[2];
        r[5] = d[1] * 4.0 - d[3] * 5.0 + d[5];
    } else {
        r[0] = d[0] - d[2];
        r[1] = d[1] + d[2];
        r[2] = d[2] - d[1];
        r[3] = d[1] - d[3];
    }
    r
}

/// One dimension of the output transform `A^T m`.
#[inline(always)]
fn out1d<const A: usize, const M: usize>(m: &[V; A]) -> [V; M] {
    let mut y = [V::ZERO; M];
    if A == 6 {
        let (s12, d12) = (m[1] + m[2], m[1] - m[2]);
        let (s34, d34) = (m[3] + m[4], m[3] - m[4]);
        y[0] = m[0] + s12 + s34;
        y[1] = d12 + d34 * 2.0;
        y[2] = s12 + s34 * 4.0;
        y[3] = d12 + d34 * 8.0 + m[5];
    } else {
        y[0] = m[0] + m[1] + m[2];
        y[1] = m[1] - m[2] - m[3];
    }
    y
}

/// Transform channel `c` of images `i0..i0 + nb` into `dst = V[c]` (`[a*a][nb * tiles]`).
#[inline(always)]
fn input_channel<const A: usize, const M: usize>(
    x: &[f32],
    g: &Geometry,
    i0: usize,
    nb: usize,
    c: usize,
    dst: &mut [f32],
) {
    let (ntx, nty) = (g.ow.div_ceil(M), g.oh.div_ceil(M));
    let tpi = ntx * nty;
    let vs = nb * tpi + L;
    let chunks = ntx.div_ceil(L);
    // Zero-padded input row: row[q] = x[ty*M + r - pad][q - pad], wide enough for all lanes, then
    // split by phase: ph[r][p][k] = row[k*M + p], so that the value `col` of the 16 tiles from
    // `tx0` on, row[(tx0 + l)*M + col], is the contiguous ph[r][col % M][tx0 + col / M + l].
    let pl = chunks * L + 1;
    let mut tb = [0f32; 36 * L];
    let mut ph = vec![0f32; A * M * pl];
    let plane = g.h * g.w;
    let (pad, w) = (g.pad, g.w);
    for j in 0..nb {
        let src = &x[((i0 + j) * g.c + c) * plane..][..plane];
        for ty in 0..nty {
            // `ph` is a ring of A padded rows, input row `iy` in slot `iy % A`: a tile row shares
            // its first A - M rows with the one before, so only M rows are new (all A at the
            // first tile row of an image).
            let slot: [usize; A] = std::array::from_fn(|r| (ty * M + r) % A);
            let new_from = if ty == 0 { 0 } else { A - M };
            for (r, &sl) in slot.iter().enumerate().skip(new_from) {
                let phr = &mut ph[sl * M * pl..][..M * pl];
                let iy = ty * M + r;
                if iy < pad || iy - pad >= g.h {
                    phr.fill(0.0);
                    continue;
                }
                deinterleave_padded::<M>(&src[(iy - pad) * w..][..w], pad, phr, pl);
            }
            for ch in 0..chunks {
                let tx0 = ch * L;
                // B^T d B: rows (d B) into `tb[r][col]`, then columns. The intermediate goes
                // through memory: kept in arrays, LLVM transposes it with gathers.
                for (r, &sl) in slot.iter().enumerate() {
                    let dr: [V; A] = std::array::from_fn(|col| {
                        V::load(&ph[(sl * M + col % M) * pl + tx0 + col / M..])
                    });
                    for (col, v) in in1d(&dr).iter().enumerate() {
                        v.store(&mut tb[(r * A + col) * L..]);
                    }
                }
                let t0 = j * tpi + ty * ntx + tx0;
                for col in 0..A {
                    let tc: [V; A] = std::array::from_fn(|r| V::load(&tb[(r * A + col) * L..]));
                    for (i, v) in in1d(&tc).iter().enumerate() {
                        // Lanes past the row's last tile land on tiles stored later or in the padding.
                        v.store(&mut dst[(i * A + col) * vs + t0..]);
                    }
                }
            }
        }
    }
}

/// Output transform of image `j`, output channel `oc` into its plane `dst`, with the epilogue.
#[inline(always)]
fn output_plane<const A: usize, const M: usize>(
    job: &OutJob,
    j: usize,
    oc: usize,
    bias: f32,
    res: Option<&[f32]>,
    dst: &mut [f32],
) {
    let g = job.g;
    let (ntx, nty) = (g.ow.div_ceil(M), g.oh.div_ceil(M));
    let tpi = ntx * nty;
    let chunks = ntx.div_ceil(L);
    let rw = chunks * L * M;
    let mut rows = vec![0f32; M * rw];
    // ph[r][cc][k]: output row r of the tile row, column k*M + cc (interleaved into `rows`).
    let pl = chunks * L;
    let mut ph = vec![0f32; M * M * pl];
    let mut tb = [0f32; 24 * L];
    let ow = g.ow;
    for ty in 0..nty {
        for ch in 0..chunks {
            let tx0 = ch * L;
            let t0 = j * tpi + ty * ntx + tx0;
            // A^T m A: rows (m A) into `tb[i][cc]` through memory, then columns.
            for i in 0..A {
                // Lanes past the row's last tile read other tiles or the slack: unused.
                let mi: [V; A] = std::array::from_fn(|jj| {
                    V::load(&job.mm[((i * A + jj) * g.o + oc) * job.t_all + t0..])
                });
                let u: [V; M] = out1d(&mi);
                for (cc, v) in u.iter().enumerate() {
                    v.store(&mut tb[(i * M + cc) * L..]);
                }
            }
            for cc in 0..M {
                let uc: [V; A] = std::array::from_fn(|i| V::load(&tb[(i * M + cc) * L..]));
                let y: [V; M] = out1d(&uc);
                for (r, v) in y.iter().enumerate() {
                    v.store(&mut ph[(r * M + cc) * pl + tx0..]);
                }
            }
        }
        for (row, phr) in rows.chunks_mut(rw).zip(ph.chunks(M * pl)) {
            interleave::<M>(phr, row, pl);
        }
        for r in 0..M {
            let oy = ty * M + r;
            if oy >= g.oh {
                break;
            }
            epilogue(
                &mut dst[oy * ow..][..ow],
                &rows[r * rw..][..ow],
                bias,
                res.map(|p| &p[oy * ow..][..ow]),
                job.act,
            );
        }
    }
}

/// `ph[p * pl + k] = row[k * M + p - pad]` for `k < pl`, zero outside `row`.
#[inline(always)]
fn deinterleave_padded<const M: usize>(row: &[f32], pad: usize, ph: &mut [f32], pl: usize) {
    let ph = &mut ph[..pl * M];
    let w = row.len();
    let at = |q: usize| {
        if q >= pad && q - pad < w {
            row[q - pad]
        } else {
            0.0
        }
    };
    // k in lo..hi: every q = k*M + p lies inside the row; from `end` on, none does.
    let lo = pad.div_ceil(M).min(pl);
    let hi = ((pad + w + 1).saturating_sub(M) / M).clamp(lo, pl);
    let end = (pad + w).div_ceil(M).clamp(hi, pl);
    for k in (0..lo).chain(hi..end) {
        for p in 0..M {
            ph[p * pl + k] = at(k * M + p);
        }
    }
    for part in ph.chunks_exact_mut(pl) {
        part[end..].fill(0.0);
    }
    if hi == lo {
        return;
    }
    let inner = &row[lo * M - pad..][..(hi - lo) * M];
    let mut parts = ph.chunks_exact_mut(pl);
    let mut outs: [&mut [f32]; M] =
        std::array::from_fn(|_| parts.next().map_or(&mut [][..], |s| &mut s[lo..hi]));
    // Blocks of L values per phase (fixed sizes: shuffles), then the tail.
    let blocks = (hi - lo) / L;
    for b in 0..blocks {
        let blk = &inner[b * L * M..][..L * M];
        let mut o = [[0f32; L]; M];
        for l in 0..L {
            for (p, op) in o.iter_mut().enumerate() {
                op[l] = blk[l * M + p];
            }
        }
        for (dst, op) in outs.iter_mut().zip(&o) {
            dst[b * L..][..L].copy_from_slice(op);
        }
    }
    for (i, q) in inner.chunks_exact(M).enumerate().skip(blocks * L) {
        for (p, o) in outs.iter_mut().enumerate() {
            o[i] = q[p];
        }
    }
}

/// `row[k * M + p] = ph[p * pl + k]` for `k < pl`.
#[inline(always)]
fn interleave<const M: usize>(ph: &[f32], row: &mut [f32], pl: usize) {
    let row = &mut row[..pl * M];
    let mut parts = ph[..pl * M].chunks_exact(pl);
    let ins: [&[f32]; M] = std::array::from_fn(|_| parts.next().unwrap_or(&[]));
    // `pl` is a multiple of L: blocks of L tiles.
    for (b, blk) in row.chunks_exact_mut(L * M).enumerate() {
        let mut i = [[0f32; L]; M];
        for (ip, src) in i.iter_mut().zip(&ins) {
            ip.copy_from_slice(&src[b * L..][..L]);
        }
        for l in 0..L {
            for (p, ip) in i.iter().enumerate() {
                blk[l * M + p] = ip[l];
            }
        }
    }
}

#[inline(always)]
fn input_f2_body<const FMA: bool>(
    x: &[f32],
    g: &Geometry,
    i0: usize,
    nb: usize,
    c: usize,
    dst: &mut [f32],
) {
    input_channel::<4, 2>(x, g, i0, nb, c, dst)
}

#[inline(always)]
fn input_f4_body<const FMA: bool>(
    x: &[f32],
    g: &Geometry,
    i0: usize,
    nb: usize,
    c: usize,
    dst: &mut [f32],
) {
    input_channel::<6, 4>(x, g, i0, nb, c, dst)
}

#[inline(always)]
fn output_f2_body<const FMA: bool>(
    job: &OutJob,
    j: usize,
    oc: usize,
    bias: f32,
    res: Option<&[f32]>,
    dst: &mut [f32],
) {
    output_plane::<4, 2>(job, j, oc, bias, res, dst)
}

#[inline(always)]
fn output_f4_body<const FMA: bool>(
    job: &OutJob,
    j: usize,
    oc: usize,
    bias: f32,
    res: Option<&[f32]>,
    dst: &mut [f32],
) {
    output_plane::<6, 4>(job, j, oc, bias, res, dst)
}

multiversion!(fn input_f2(x: &[f32], g: &Geometry, i0: usize, nb: usize, c: usize, dst: &mut [f32]) => input_f2_body);
multiversion!(fn input_f4(x: &[f32], g: &Geometry, i0: usize, nb: usize, c: usize, dst: &mut [f32]) => input_f4_body);
multiversion!(fn output_f2(job: &OutJob, j: usize, oc: usize, bias: f32, res: Option<&[f32]>, dst: &mut [f32]) => output_f2_body);
multiversion!(fn output_f4(job: &OutJob, j: usize, oc: usize, bias: f32, res: Option<&[f32]>, dst: &mut [f32]) => output_f4_body);
