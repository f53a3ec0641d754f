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
//!    each single-threaded (no synchronisation inside small GEMMs);
//! 3. output transform, rayon over (image, output channel) planes, with the shared epilogue (bias,
//!    residual, activation) on each output row.
//!
//! `U` (the transformed weight) is computed once per weight and variant and kept in a
//! [`PreparedWeight`]; [`super::conv2d`] without one transforms the weight on every call.

use super::cpu::{epilogue, multiversion};
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

/// The Winograd variant for a dense 3x3 stride-1 convolution of these sizes, or `None` where the
/// im2col + GEMM path is faster. Chosen from `cargo bench --bench conv_kernels` on the WRN layers
/// (2 vCPU, AVX-512): see the comments inside.
pub fn choose(n: usize, c: usize, o: usize, oh: usize, ow: usize) -> Option<Tile> {
    let _ = (n, c, o);
    if oh.min(ow) >= 8 {
        Some(Tile::F4)
    } else {
        None
    }
}

/// Whether the Winograd kernel may be used: `IMGCLASS_WINOGRAD=0` turns it off (A/B switch for
/// benchmarks), read once per process.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("IMGCLASS_WINOGRAD").map_or(true, |v| v.trim() != "0"))
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

/// `U[e][o][c] = (G w[o][c] G^T)[e]`, computed in f64 and rounded once.
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
    u
}

/// Tiles per SIMD vector in the transforms (one AVX-512 register of f32).
const L: usize = 16;
/// Tiles per GEMM to aim for: smaller layers put several images into one GEMM.
const TILE_TARGET: usize = 256;
/// Upper bound of the transformed input + output of one batch chunk, in floats (64 MiB).
const CHUNK_BUDGET: usize = 16 << 20;

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
    let mut v = vec![0f32; aa * g.c * nb * tpi];
    let mut mm = vec![0f32; aa * g.o * nb * tpi];
    for i0 in (0..g.n).step_by(nb) {
        let nbi = nb.min(g.n - i0);
        let t_all = nbi * tpi;
        let v = &mut v[..aa * g.c * t_all];
        let mm = &mut mm[..aa * g.o * t_all];
        v.par_chunks_mut(aa * t_all)
            .enumerate()
            .for_each(|(c, dst)| match tile {
                Tile::F2 => input_f2(x, g, i0, nbi, c, dst),
                Tile::F4 => input_f4(x, g, i0, nbi, c, dst),
            });
        let v = &*v;
        mm.par_chunks_mut(g.o * t_all)
            .enumerate()
            .for_each(|(e, dst)| {
                gemm_strided(
                    g.o,
                    t_all,
                    g.c,
                    &u[e * g.o * g.c..][..g.o * g.c],
                    &v[e * t_all..],
                    aa * t_all,
                    dst,
                )
            });
        let mm = &*mm;
        let job = OutJob { mm, t_all, g, act };
        out[i0 * g.o * plane..][..nbi * g.o * plane]
            .par_chunks_mut(plane)
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
    out
}

/// Read-only operands of the output transform.
struct OutJob<'a> {
    mm: &'a [f32],
    t_all: usize,
    g: &'a Geometry,
    act: Activation,
}

/// `dst[m, n] = lhs[m, k] x rhs[k, n]` with `lhs` and `dst` row-major contiguous and `rhs` rows
/// `rhs_rs` floats apart, on the calling thread.
fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    rhs: &[f32],
    rhs_rs: usize,
    dst: &mut [f32],
) {
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    assert!(lhs.len() >= m * k && dst.len() >= m * n && rhs_rs >= n);
    assert!(rhs.len() >= (k - 1) * rhs_rs + n);
    // SAFETY: every element read or written is in bounds of its slice for these sizes and strides
    // (asserted above); `dst` is exclusively borrowed and does not alias `lhs` or `rhs`;
    // `read_dst == false`, so the previous content of `dst` is never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            rhs_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `L` lanes of f32: one value of `L` neighbouring tiles.
#[derive(Clone, Copy)]
struct V([f32; L]);

impl V {
    const ZERO: V = V([0.0; L]);
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
    let t_all = nb * tpi;
    let chunks = ntx.div_ceil(L);
    // Zero-padded input rows: rows[r][q] = x[ty*M + r - pad][q - pad]; wide enough for all lanes.
    let pw = chunks * L * M + A - M;
    let mut rows = vec![0f32; A * pw];
    let plane = g.h * g.w;
    let (pad, w) = (g.pad, g.w);
    for j in 0..nb {
        let src = &x[((i0 + j) * g.c + c) * plane..][..plane];
        for ty in 0..nty {
            for (r, row) in rows.chunks_mut(pw).enumerate() {
                let iy = ty * M + r;
                if iy < pad || iy - pad >= g.h {
                    row.fill(0.0);
                } else {
                    row[..pad].fill(0.0);
                    row[pad..pad + w].copy_from_slice(&src[(iy - pad) * w..][..w]);
                    row[pad + w..].fill(0.0);
                }
            }
            for ch in 0..chunks {
                let tx0 = ch * L;
                let lanes = L.min(ntx - tx0);
                let mut d = [[V::ZERO; A]; A];
                for (r, dr) in d.iter_mut().enumerate() {
                    let row = &rows[r * pw + tx0 * M..][..L * M + A - M];
                    for (col, dc) in dr.iter_mut().enumerate() {
                        for (l, v) in dc.0.iter_mut().enumerate() {
                            *v = row[l * M + col];
                        }
                    }
                }
                // B^T d B: columns first, then rows.
                let mut t = [[V::ZERO; A]; A];
                for col in 0..A {
                    let cv: [V; A] = std::array::from_fn(|k| d[k][col]);
                    let r = in1d(&cv);
                    for i in 0..A {
                        t[i][col] = r[i];
                    }
                }
                let t0 = j * tpi + ty * ntx + tx0;
                for (i, ti) in t.iter().enumerate() {
                    let vi = in1d(ti);
                    for (jj, vv) in vi.iter().enumerate() {
                        dst[(i * A + jj) * t_all + t0..][..lanes].copy_from_slice(&vv.0[..lanes]);
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
    let ow = g.ow;
    for ty in 0..nty {
        for ch in 0..chunks {
            let tx0 = ch * L;
            let lanes = L.min(ntx - tx0);
            let t0 = j * tpi + ty * ntx + tx0;
            let mut mv = [[V::ZERO; A]; A];
            for (i, mi) in mv.iter_mut().enumerate() {
                for (jj, v) in mi.iter_mut().enumerate() {
                    let e = i * A + jj;
                    let src = &job.mm[(e * g.o + oc) * job.t_all + t0..][..lanes];
                    v.0[..lanes].copy_from_slice(src);
                }
            }
            // A^T m A: columns first, then rows.
            let mut t = [[V::ZERO; A]; M];
            for col in 0..A {
                let cv: [V; A] = std::array::from_fn(|k| mv[k][col]);
                let r: [V; M] = out1d(&cv);
                for i in 0..M {
                    t[i][col] = r[i];
                }
            }
            for (r, tr) in t.iter().enumerate() {
                let y: [V; M] = out1d(tr);
                let row = &mut rows[r * rw + tx0 * M..][..L * M];
                for (cc, yc) in y.iter().enumerate() {
                    for (l, v) in yc.0.iter().enumerate() {
                        row[l * M + cc] = *v;
                    }
                }
            }
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
