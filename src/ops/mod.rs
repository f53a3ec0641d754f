//! Fast CPU kernels (owner: performance). The only place `unsafe` is allowed.
//!
//! Models call convolutions ONLY through [`conv2d`], so a faster kernel can be swapped in here without
//! touching the model code. Each fast kernel keeps a reference test against the plain candle op
//! ([`reference::conv2d`]).
//!
//! Dispatch (f32 CPU tensors, square kernels, dilation 1):
//! - depthwise (`groups == C == O`): direct NCHW kernel ([`depthwise`]), rayon over (n, c) planes,
//!   register-blocked 4 rows x 16 columns, AVX-512 / AVX2+FMA chosen at run time, fused epilogue;
//! - dense `groups == 1`: GEMM through the `gemm` crate ([`dense`]): 1x1 stride 1 reads the input in
//!   place, strided 1x1 and kxk go through im2col; bias, residual and activation fused into one pass
//!   over the GEMM output;
//! - dense 3x3 stride 1 where it is faster ([`winograd::choose`]): Winograd F(2x2,3x3)
//!   ([`winograd`]), its transformed weights kept in a [`PreparedWeight`] (pass one to
//!   [`conv2d_prepared`]; plain [`conv2d`] transforms the weight on every call), or only in its
//!   transformed form, the original dropped, in a [`WinogradWeight`] ([`conv2d_winograd`]: always
//!   Winograd, for layers that never take another kernel); on AVX-512 CPUs its 16 GEMMs run on
//!   the packed 1x1 kernel ([`packed1x1::gemm_serial`]) with the transformed weight packed at load
//!   by default on AMD CPUs only, the `gemm` crate elsewhere ([`cpu::packed_gemms_by_default`];
//!   `IMGCLASS_WINO_GEMM=0` / `=1`, read once, forces the `gemm` crate / the packed kernel);
//!   `IMGCLASS_WINOGRAD=0` in the environment (read once) turns it off (the A/B switch for
//!   benchmarks); `IMGCLASS_WINOGRAD=f4` also uses F(4x4,3x3) from 28x28 up (a little faster,
//!   3x the rounding error);
//! - Wide ResNet's 1x1 stride-1 convolutions on AVX-512 CPUs: the weight kept only in a packed
//!   layout ([`PointwiseWeight`], [`conv2d_pointwise`], [`packed1x1`]): 8-channel panels (register
//!   blocks of 8 channels x 48 pixels, reduction blocked by 128) from 14x14 up, 48-channel vectors
//!   (48 channels x up to 8 pixels, no lanes lost to the pixel remainder) on 7x7;
//!   `IMGCLASS_PACK1X1=0` (read once) keeps them on the unpacked kernel (the A/B switch);
//! - Wide ResNet's 3x3 convolutions with 7x7 outputs on AVX-512 CPUs: the weight kept only in the
//!   48-channel-vector layout over its im2col reduction ([`KxkCvWeight`], [`conv2d_kxk_cv`]):
//!   im2col, then the reduction-blocked channel-vector kernel
//!   ([`packed1x1::conv1x1_cv_deep`]), by default on AMD CPUs only; `IMGCLASS_KXK_CV=0` / `=1`
//!   (read once) forces im2col + `gemm` / the channel-vector kernel (the A/B switch);
//! - MobileNetV3's 1x1 convolutions and SqueezeExcitation's 1x1-map convolutions on AVX-512
//!   CPUs: register-blocked kernels with the epilogue in registers ([`pointwise`]); [`linear`]
//!   (the classifier) as a fused GEMV there too; [`conv2d_se_scaled`] folds SqueezeExcitation's
//!   `x * hardsigmoid(s)` into the project 1x1 convolution;
//! - dense convolutions with `C*K*K <= 32`, or at most 4 input channels and `C*K*K <= 160` (the
//!   RGB stems of both models) on AVX-512 CPUs: a direct kernel over stride-phase planes built per
//!   band of output rows (`stem`);
//! - anything else (other grouped convolutions, non-f32, non-CPU): the plain candle reference.
//!
//! Beside single convolutions, [`inverted_residual`] runs a whole MobileNetV3 block (expand 1x1 →
//! depthwise → project 1x1) over bands of rows on maps from [`FUSE_MIN_PIXELS`] up ([`fused`]),
//! so its intermediate maps stay in cache; `IMGCLASS_FUSE=0` (read once) turns it off.
//!
//! [`pool`] has the other ops of the two networks (global average pooling, SqueezeExcitation's
//! scaling, max pooling) on the same rayon pool. [`resize`] is the preprocessing's one kernel: the
//! horizontal pass of Pillow's 8-bit resampling with AVX-512 (same integer sums).

pub mod alloc;
mod cpu;
pub mod dense;
pub mod depthwise;
pub mod fused;
pub mod mmap;
pub mod packed1x1;
pub mod pointwise;
pub mod pool;
pub mod resize;
pub mod sched;
mod stem;
pub mod winograd;

pub use packed1x1::{KxkCvWeight, PointwiseWeight};
pub use pool::{global_avg_pool, max_pool2d, se_scale};
pub use winograd::{PreparedWeight, WinogradWeight};

use candle_core::{DType, Device, Result, Tensor};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Keep candle's own elementwise thread pool ("candle-bp", spinning workers) from competing with
/// rayon's pool, which runs every kernel here: on a 2-core machine the two pools oversubscribe the
/// cores and MobileNetV3's forward pass takes ~3x longer. Sets `CANDLE_NUM_THREADS=1` (candle's
/// remaining elementwise ops then run on the calling thread) unless the user set it.
///
/// Call once at process start, before any tensor operation and before other threads are spawned
/// (`std::env::set_var` is not safe to race with other threads reading the environment).
pub fn configure_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Run `f` (typically a whole forward pass) on a thread of rayon's pool and return its result.
///
/// Every kernel here is a rayon parallel loop. Called from a thread outside the pool, each of them
/// (about 150 per MobileNetV3 forward pass) parks the caller on a latch and wakes a worker: tens of
/// microseconds each. Called from inside the pool they start at once. `rayon::scope` from outside
/// the pool runs its body on a pool thread and blocks until it is done.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if IN_POOL.get() {
        // Nested call: already on a pool thread, with a warm pool.
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let (_guard, alone) = InPoolGuard::enter();
        // Only a forward pass that runs alone keeps the pool warm (see `keep_warm`).
        if alone && spin_enabled() {
            let owner = rayon::current_thread_index();
            let done = &done;
            s.spawn(move |_| keep_warm(owner, done));
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

thread_local! {
    /// Whether this thread is running the body of an [`in_pool`] call.
    static IN_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`in_pool`] bodies running now (all threads).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Marks this thread as inside [`in_pool`] and counts it in [`ACTIVE`] until dropped.
struct InPoolGuard;

impl InPoolGuard {
    /// The guard, and whether no other [`in_pool`] body was running.
    fn enter() -> (Self, bool) {
        IN_POOL.set(true);
        let before = ACTIVE.fetch_add(1, Ordering::AcqRel);
        (Self, before == 0)
    }
}

impl Drop for InPoolGuard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
        IN_POOL.set(false);
    }
}

/// Whether [`in_pool`] keeps the pool's other threads spinning during a forward pass: on unless
/// `IMGCLASS_SPIN` is `0`/`false`/`no`/`off` in the environment (read once) or [`set_spin`] said
/// otherwise. The server turns it off by default (`imgclass serve --spin`): there the spinning
/// thread takes CPU from JPEG decoding (lite: ~15% fewer requests per second with it, on 2 cores).
pub fn spin_enabled() -> bool {
    match SPIN.load(Ordering::Relaxed) {
        SPIN_OFF => false,
        SPIN_ON => true,
        _ => {
            let on = std::env::var("IMGCLASS_SPIN").map_or(true, |v| {
                !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "false" | "no" | "off"
                )
            });
            set_spin(on);
            on
        }
    }
}

/// Turns [`in_pool`]'s spinning on or off for this process (see [`spin_enabled`]).
pub fn set_spin(on: bool) {
    SPIN.store(if on { SPIN_ON } else { SPIN_OFF }, Ordering::Relaxed);
}

const SPIN_OFF: u8 = 1;
const SPIN_ON: u8 = 2;
/// 0: not decided yet (the environment decides), else `SPIN_OFF` / `SPIN_ON`.
static SPIN: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Runs on another pool thread for the length of one forward pass and keeps it busy: it runs the
/// pass's parallel work as soon as it is queued (`rayon::yield_now` steals one job) instead of
/// letting the thread fall asleep between two of the ~150 kernels and paying a futex wake-up (tens of
/// microseconds on a VM) at the start of the next one. ONNX Runtime's pool spins the same way.
///
/// It stops when the pass is done, and at once when another forward pass starts concurrently (then
/// nobody spins): it must never sit, spinning, on top of the frames of work that another pass waits
/// for. It never runs on the thread of the pass it serves (`owner`) for the same reason.
fn keep_warm(owner: Option<usize>, done: &AtomicBool) {
    let alone = || ACTIVE.load(Ordering::Acquire) == 1;
    if rayon::current_thread_index() != owner {
        while !done.load(Ordering::Acquire) && alone() {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    }
}

/// Activation fused after a convolution (and after the residual add, when there is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Hardswish,
}

/// Geometry of a 2-D convolution (dilation is always 1 in our models).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

/// Which implementation [`conv2d`] uses for a given call (exposed for tests and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Depthwise,
    Dense,
    Winograd(winograd::Tile),
    Reference,
}

/// The kernel [`conv2d`] picks for these operands.
pub fn select_kernel(x: &Tensor, w: &Tensor, p: ConvParams) -> Kernel {
    let cpu_f32 = |t: &Tensor| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu);
    if !cpu_f32(x) || !cpu_f32(w) || x.rank() != 4 || w.rank() != 4 || p.stride == 0 {
        return Kernel::Reference;
    }
    let (Ok((_, c, h, wd)), Ok((o, ci, kh, kw))) = (x.dims4(), w.dims4()) else {
        return Kernel::Reference;
    };
    if kh != kw || h + 2 * p.padding < kh || wd + 2 * p.padding < kw {
        return Kernel::Reference;
    }
    if p.groups == 1 && ci == c {
        let (n, o) = (x.dims()[0], w.dims()[0]);
        let (oh, ow) = (h + 2 * p.padding - kh + 1, wd + 2 * p.padding - kw + 1);
        match winograd_applies(kh, p) {
            true => winograd::choose(n, c, o, oh, ow).map_or(Kernel::Dense, Kernel::Winograd),
            false => Kernel::Dense,
        }
    } else if p.groups == c && o == c && ci == 1 {
        Kernel::Depthwise
    } else {
        Kernel::Reference
    }
}

fn winograd_applies(k: usize, p: ConvParams) -> bool {
    k == 3 && p.stride == 1 && p.groups == 1 && winograd::enabled()
}

/// `act(conv2d(x, w) + b [+ residual])` for `x: [N,C,H,W]`, `w: [O, C/groups, K, K]`, `b: [O]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: ConvParams,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    match select_kernel(x, w, p) {
        Kernel::Reference => reference::conv2d(x, w, b, p, act, residual),
        k => fast_prepared(x, &PreparedWeight::new(w.clone()), b, p, act, residual, k),
    }
}

/// [`conv2d`] with a weight prepared once ([`PreparedWeight`]: transformed weights are cached).
pub fn conv2d_prepared(
    x: &Tensor,
    w: &PreparedWeight,
    b: Option<&Tensor>,
    p: ConvParams,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    conv2d_with_kernel(select_kernel(x, w.weight(), p), x, w, b, p, act, residual)
}

/// [`conv2d_prepared`] with an explicit kernel (tests and benchmarks compare kernels on one shape).
/// Errors if `kernel` cannot run this convolution.
pub fn conv2d_with_kernel(
    kernel: Kernel,
    x: &Tensor,
    w: &PreparedWeight,
    b: Option<&Tensor>,
    p: ConvParams,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let auto = select_kernel(x, w.weight(), p);
    let ok = match kernel {
        Kernel::Reference => true,
        Kernel::Depthwise => auto == Kernel::Depthwise,
        Kernel::Dense => matches!(auto, Kernel::Dense | Kernel::Winograd(_)),
        Kernel::Winograd(_) => {
            matches!(auto, Kernel::Dense | Kernel::Winograd(_))
                && w.weight().dims()[2] == 3
                && p.stride == 1
        }
    };
    if !ok {
        candle_core::bail!(
            "conv2d: kernel {kernel:?} cannot run {:?} * {:?} with {p:?}",
            x.dims(),
            w.weight().dims()
        );
    }
    match kernel {
        Kernel::Reference => reference::conv2d(x, w.weight(), b, p, act, residual),
        k => fast_prepared(x, w, b, p, act, residual, k),
    }
}

fn fast_prepared(
    x: &Tensor,
    prepared: &PreparedWeight,
    b: Option<&Tensor>,
    p: ConvParams,
    act: Activation,
    residual: Option<&Tensor>,
    kernel: Kernel,
) -> Result<Tensor> {
    let w = prepared.weight().contiguous()?;
    let (o, _, k, _) = w.dims4()?;
    let wv = cpu::F32View::new(&w)?;
    run_fast(x, o, k, b, p, residual, |xs, bs, rs, geom| {
        let (n, c, h, wd) = (geom.n, geom.c, geom.h, geom.w);
        let xv = xs;
        let out = match kernel {
            Kernel::Depthwise if depthwise::cv_applies(geom, rs.is_some()) => {
                depthwise::depthwise_cv(xv, wv.slice()?, bs, act, geom)
            }
            Kernel::Depthwise => depthwise::depthwise(xv, wv.slice()?, bs, rs, act, geom),
            Kernel::Winograd(tile) => {
                let u = prepared.transformed(tile, wv.slice()?, o, c);
                winograd::winograd(xv, u, tile, bs, rs, act, geom)
            }
            // SqueezeExcitation's 1x1 convolutions on a 1x1 map: dot products.
            _ if one_by_one(kernel, k, p)
                && h * wd == 1
                && rs.is_none()
                && pointwise::gemv_available() =>
            {
                pointwise::gemv(xv, wv.slice()?, bs, act, n, c, o)
            }
            _ if one_by_one(kernel, k, p) && pointwise::conv1x1_preferred(n, c, o, h * wd) => {
                pointwise::conv1x1(xv, wv.slice()?, bs, rs, act, n, c, o, h * wd)
            }
            Kernel::Dense if stem::available(c, k, o) => {
                stem::conv(xv, wv.slice()?, bs, rs, act, geom)
            }
            _ => dense::dense(xv, wv.slice()?, bs, rs, act, geom),
        };
        Ok(out)
    })
}

fn one_by_one(kernel: Kernel, k: usize, p: ConvParams) -> bool {
    kernel == Kernel::Dense && k == 1 && p.stride == 1 && p.padding == 0
}

/// `act(conv2d(x * hardsigmoid(s), w) + b [+ residual])`: the convolution after torchvision's
/// SqueezeExcitation, whose scale `hardsigmoid(s)` (`s: [N, C]` or `[N, C, 1, 1]`, the `fc2`
/// output) multiplies the input channels. Same result as `conv2d(&se_scale(x, s)?, ..)`.
///
/// For the 1x1 convolutions [`pointwise`] runs, the scale is folded into the kernel (each input
/// row is multiplied by its scale as it is loaded: one multiply per 8 multiply-adds; measured
/// faster than scaling the weight's columns per image, `W diag(g)`, on MobileNetV3's SE blocks),
/// so `x * hardsigmoid(s)` is never written or read back; otherwise [`se_scale`] then [`conv2d`].
pub fn conv2d_se_scaled(
    x: &Tensor,
    s: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: ConvParams,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    if s.elem_count() != n * c || !(s.dims() == [n, c] || s.dims() == [n, c, 1, 1]) {
        candle_core::bail!(
            "conv2d_se_scaled: scale shape {:?} for input {:?}",
            s.dims(),
            x.dims()
        );
    }
    let s_ok = s.dtype() == DType::F32 && matches!(s.device(), Device::Cpu);
    let kernel = select_kernel(x, w, p);
    let o = w.dims().first().copied().unwrap_or(0);
    let k = w.dims().get(2).copied().unwrap_or(0);
    let fused = s_ok
        && one_by_one(kernel, k, p)
        && h * wd > 1
        && pointwise::conv1x1_preferred(n, c, o, h * wd);
    if !fused {
        return conv2d(&se_scale(x, s)?, w, b, p, act, residual);
    }
    let s = s.contiguous()?;
    let sv = cpu::F32View::new(&s)?;
    let gate: Vec<f32> = sv
        .slice()?
        .iter()
        .map(|v| (v + 3.0).clamp(0.0, 6.0) / 6.0)
        .collect();
    let w = w.contiguous()?;
    let wv = cpu::F32View::new(&w)?;
    run_fast(x, o, 1, b, p, residual, |xs, bs, rs, geom| {
        Ok(pointwise::conv1x1_scaled(
            xs,
            Some(&gate),
            wv.slice()?,
            bs,
            rs,
            act,
            n,
            geom.c,
            o,
            h * wd,
        ))
    })
}

/// `act(conv2d(x, w) + b [+ residual])` with a weight kept only in its Winograd form
/// ([`WinogradWeight`]): always F(2,3); stride 1, groups 1, any input size.
pub fn conv2d_winograd(
    x: &Tensor,
    w: &WinogradWeight,
    b: Option<&Tensor>,
    padding: usize,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let cpu_f32 = x.dtype() == DType::F32 && matches!(x.device(), Device::Cpu);
    let (_, c, h, wd) = x.dims4()?;
    if !cpu_f32 || c != w.in_channels() || h + 2 * padding < 3 || wd + 2 * padding < 3 {
        candle_core::bail!(
            "conv2d_winograd: cannot run {:?} ({:?}) * [{}, {}, 3, 3] with padding {padding}",
            x.dims(),
            x.dtype(),
            w.out_channels(),
            w.in_channels()
        );
    }
    let p = ConvParams {
        stride: 1,
        padding,
        groups: 1,
    };
    run_fast(
        x,
        w.out_channels(),
        3,
        b,
        p,
        residual,
        |xs, bs, rs, geom| {
            Ok(winograd::winograd(
                xs,
                w.transformed(),
                winograd::Tile::F2,
                bs,
                rs,
                act,
                geom,
            ))
        },
    )
}

/// `act(conv2d(x, w) + b)` for a k x k convolution whose weight is kept only in the channel-vector
/// layout over its im2col reduction ([`KxkCvWeight`]; AVX-512 CPUs): im2col, then the
/// reduction-blocked channel-vector kernel ([`packed1x1::conv1x1_cv_deep`]).
pub fn conv2d_kxk_cv(
    x: &Tensor,
    w: &KxkCvWeight,
    b: Option<&Tensor>,
    p: ConvParams,
    act: Activation,
) -> Result<Tensor> {
    let cpu_f32 = x.dtype() == DType::F32 && matches!(x.device(), Device::Cpu);
    let (_, c, h, wd) = x.dims4()?;
    let k = w.kernel();
    if !cpu_f32
        || c != w.in_channels()
        || p.groups != 1
        || p.stride == 0
        || h + 2 * p.padding < k
        || wd + 2 * p.padding < k
    {
        candle_core::bail!(
            "conv2d_kxk_cv: cannot run {:?} ({:?}) * [{}, {}, {k}, {k}] with {p:?}",
            x.dims(),
            x.dtype(),
            w.out_channels(),
            w.in_channels()
        );
    }
    run_fast(x, w.out_channels(), k, b, p, None, |xs, bs, _, geom| {
        Ok(dense::im2col_cv(xs, w.packed(), bs, act, geom))
    })
}

/// An A/B switch of the kernels, read from the environment variable `var` (callers read it once):
/// `0` off, any other value on, unset `default`.
pub(crate) fn env_switch(var: &str, default: bool) -> bool {
    std::env::var(var).map_or(default, |v| v.trim() != "0")
}

/// Whether Wide ResNet's 3x3 convolutions with 7x7 outputs keep their weight in the channel-vector
/// layout ([`conv2d_kxk_cv`]) on AVX-512 CPUs: by default on AMD CPUs only
/// ([`cpu::packed_gemms_by_default`]); `IMGCLASS_KXK_CV=0` / `=1` (read once) forces im2col +
/// `gemm` / the channel-vector kernel (the A/B switch).
pub fn kxk_cv_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| env_switch("IMGCLASS_KXK_CV", cpu::packed_gemms_by_default()))
}

/// `act(conv2d(x, w) + b [+ residual])` for a 1x1 stride-1 convolution whose weight is kept only
/// in a packed layout ([`PointwiseWeight`]; AVX-512 CPUs).
pub fn conv2d_pointwise(
    x: &Tensor,
    w: &PointwiseWeight,
    b: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let cpu_f32 = x.dtype() == DType::F32 && matches!(x.device(), Device::Cpu);
    let (_, c, h, wd) = x.dims4()?;
    if !cpu_f32 || c != w.in_channels() || h * wd == 0 {
        candle_core::bail!(
            "conv2d_pointwise: cannot run {:?} ({:?}) * [{}, {}, 1, 1]",
            x.dims(),
            x.dtype(),
            w.out_channels(),
            w.in_channels()
        );
    }
    let p = ConvParams {
        stride: 1,
        padding: 0,
        groups: 1,
    };
    run_fast(x, w.out_channels(), 1, b, p, residual, |xs, bs, rs, g| {
        Ok(w.run(xs, bs, rs, act, g.n, g.h * g.w))
    })
}

/// Whether 1x1 weights may be kept packed ([`PointwiseWeight`]): `IMGCLASS_PACK1X1=0` in the
/// environment turns it off (the A/B switch for benchmarks); read once per process.
pub fn pack1x1_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| env_switch("IMGCLASS_PACK1X1", true))
}

/// Whether MobileNetV3's inverted residuals may run fused ([`inverted_residual`]):
/// `IMGCLASS_FUSE=0` in the environment turns it off (the A/B switch for benchmarks); read once
/// per process.
pub fn fuse_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| env_switch("IMGCLASS_FUSE", true))
}

/// Smallest input map (pixels) [`inverted_residual`] fuses: below it the block's intermediate
/// maps fit in the cache anyway, and the per-band overhead is not worth it.
pub const FUSE_MIN_PIXELS: usize = 56 * 56;

/// One convolution of an inverted residual for [`inverted_residual`]: its (BatchNorm-folded)
/// weight, bias and activation.
#[derive(Clone, Copy, Debug)]
pub struct BlockConv<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
}

/// MobileNetV3's inverted residual in one pass over bands of rows ([`fused`]):
/// `project(dw(expand(x))) [+ residual]`, or `dw(expand(x))` without `project`; `expand: None`
/// for a block without one. `dw` has padding `k / 2` and stride `dw_stride`. The same result as
/// the three [`conv2d`] calls, bit for bit.
///
/// Returns `Ok(None)` when the fused kernel does not apply (not AVX-512, other shapes, a map
/// smaller than [`FUSE_MIN_PIXELS`], `IMGCLASS_FUSE=0`): the caller then runs the layers one by
/// one. Mis-shaped operands are an error.
pub fn inverted_residual(
    x: &Tensor,
    expand: Option<BlockConv>,
    dw: BlockConv,
    dw_stride: usize,
    project: Option<BlockConv>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let (n, c, h, wd) = x.dims4()?;
    let cpu_f32 = |t: &Tensor| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu);
    let e = match expand {
        Some(ex) => ex.weight.dims4()?.0,
        None => c,
    };
    let (dwo, dwi, k, k2) = dw.weight.dims4()?;
    let o = match project {
        Some(p) => p.weight.dims4()?.0,
        None => e,
    };
    let shape_ok = expand.is_none_or(|ex| ex.weight.dims() == [e, c, 1, 1])
        && dwo == e
        && dwi == 1
        && k == k2
        && k % 2 == 1
        && dw_stride > 0
        && project.is_none_or(|p| p.weight.dims() == [o, e, 1, 1])
        && h + 2 * (k / 2) >= k
        && wd + 2 * (k / 2) >= k;
    if !shape_ok {
        candle_core::bail!(
            "inverted_residual: input {:?}, expand {:?}, depthwise {:?}, project {:?}",
            x.dims(),
            expand.map(|c| c.weight.dims().to_vec()),
            dw.weight.dims(),
            project.map(|c| c.weight.dims().to_vec())
        );
    }
    let convs = [expand, Some(dw), project];
    for (conv, ch) in convs.iter().zip([e, e, o]) {
        if let Some(b) = conv.and_then(|c| c.bias) {
            if b.dims() != [ch] {
                candle_core::bail!(
                    "inverted_residual: bias shape {:?}, expected [{ch}]",
                    b.dims()
                );
            }
        }
    }
    let pad = k / 2;
    let oh = (h + 2 * pad - k) / dw_stride + 1;
    let ow = (wd + 2 * pad - k) / dw_stride + 1;
    if let Some(r) = residual {
        if project.is_none() || r.dims() != [n, o, oh, ow] {
            candle_core::bail!(
                "inverted_residual: residual shape {:?}, expected [{n}, {o}, {oh}, {ow}] after a \
                 project convolution",
                r.dims()
            );
        }
    }
    let all_f32 = cpu_f32(x)
        && convs
            .iter()
            .flatten()
            .all(|c| cpu_f32(c.weight) && c.bias.is_none_or(cpu_f32))
        && residual.is_none_or(cpu_f32);
    if !fuse_enabled()
        || !all_f32
        || h * wd < FUSE_MIN_PIXELS
        || !fused::available(c, e, project.map(|_| o), ow)
    {
        return Ok(None);
    }
    let contiguous = |t: &Tensor| t.contiguous();
    let x = x.contiguous()?;
    let xv = cpu::F32View::new(&x)?;
    // weights and biases as contiguous tensors, then as slices
    let ts: Vec<Option<(Tensor, Option<Tensor>)>> = convs
        .iter()
        .map(|c| {
            c.map(|c| Ok((contiguous(c.weight)?, c.bias.map(contiguous).transpose()?)))
                .transpose()
        })
        .collect::<Result<_>>()?;
    let views: Vec<Option<(cpu::F32View, Option<cpu::F32View>)>> = ts
        .iter()
        .map(|t| {
            t.as_ref()
                .map(|(w, b)| {
                    Ok((
                        cpu::F32View::new(w)?,
                        b.as_ref().map(cpu::F32View::new).transpose()?,
                    ))
                })
                .transpose()
        })
        .collect::<Result<_>>()?;
    let mut slices = Vec::with_capacity(3);
    for v in &views {
        slices.push(match v {
            Some((w, b)) => Some((w.slice()?, b.as_ref().map(|b| b.slice()).transpose()?)),
            None => None,
        });
    }
    let residual = residual.map(contiguous).transpose()?;
    let rv = residual.as_ref().map(cpu::F32View::new).transpose()?;
    let rs = rv.as_ref().map(|v| v.slice()).transpose()?;
    let pw = |i: usize, conv: Option<BlockConv>, o: usize| {
        conv.zip(slices[i]).map(|(c, (w, b))| fused::Pointwise {
            w,
            b,
            act: c.act,
            o,
        })
    };
    let (dw_w, dw_b) =
        slices[1].unwrap_or_else(|| unreachable!("the depthwise conv is always given"));
    let out = fused::inverted_residual(
        xv.slice()?,
        n,
        c,
        h,
        wd,
        pw(0, expand, e),
        fused::Depthwise {
            w: dw_w,
            b: dw_b,
            act: dw.act,
            k,
            stride: dw_stride,
        },
        pw(2, project, o),
        rs,
    );
    Tensor::from_vec(out, (n, o, oh, ow), &Device::Cpu).map(Some)
}

/// Checks the bias and residual shapes, makes the operands contiguous f32 slices and runs `f` on
/// them with the convolution's geometry (`o` output channels, `k`x`k` kernel); `f` returns the
/// `[N, O, OH, OW]` output.
fn run_fast(
    x: &Tensor,
    o: usize,
    k: usize,
    b: Option<&Tensor>,
    p: ConvParams,
    residual: Option<&Tensor>,
    f: impl FnOnce(&[f32], Option<&[f32]>, Option<&[f32]>, &Geometry) -> Result<Vec<f32>>,
) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let oh = (h + 2 * p.padding - k) / p.stride + 1;
    let ow = (wd + 2 * p.padding - k) / p.stride + 1;
    if let Some(b) = b {
        if b.dims() != [o] {
            candle_core::bail!("conv2d: bias shape {:?}, expected [{o}]", b.dims());
        }
    }
    if let Some(r) = residual {
        if r.dims() != [n, o, oh, ow] {
            candle_core::bail!(
                "conv2d: residual shape {:?}, expected [{n}, {o}, {oh}, {ow}]",
                r.dims()
            );
        }
    }
    let x = x.contiguous()?;
    let b = b.map(|t| t.contiguous()).transpose()?;
    let residual = residual.map(|t| t.contiguous()).transpose()?;
    let xv = cpu::F32View::new(&x)?;
    let bv = b.as_ref().map(cpu::F32View::new).transpose()?;
    let rv = residual.as_ref().map(cpu::F32View::new).transpose()?;
    let bs = bv.as_ref().map(|v| v.slice()).transpose()?;
    let rs = rv.as_ref().map(|v| v.slice()).transpose()?;
    let geom = Geometry {
        n,
        c,
        h,
        w: wd,
        o,
        k,
        stride: p.stride,
        pad: p.padding,
        oh,
        ow,
    };
    let out = f(xv.slice()?, bs, rs, &geom)?;
    Tensor::from_vec(out, (n, o, oh, ow), &Device::Cpu)
}

/// `act(x W^T + b)` for `x: [N, K]`, `w: [O, K]`, `b: [O]` (torch's `Linear` followed by `act`).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu);
    let (Ok((n, k)), Ok((o, k2))) = (x.dims2(), w.dims2()) else {
        candle_core::bail!("linear: input {:?}, weight {:?}", x.dims(), w.dims());
    };
    if k != k2 || b.is_some_and(|b| b.dims() != [o]) {
        candle_core::bail!(
            "linear: input {:?}, weight {:?}, bias {:?}",
            x.dims(),
            w.dims(),
            b.map(|b| b.dims().to_vec())
        );
    }
    let fast = cpu_f32(x) && cpu_f32(w) && b.is_none_or(cpu_f32) && k > 0;
    if !fast || !pointwise::gemv_available() {
        return reference::linear(x, w, b, act);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let b = b.map(|t| t.contiguous()).transpose()?;
    let xv = cpu::F32View::new(&x)?;
    let wv = cpu::F32View::new(&w)?;
    let bv = b.as_ref().map(cpu::F32View::new).transpose()?;
    let bs = bv.as_ref().map(|v| v.slice()).transpose()?;
    let out = pointwise::gemv(xv.slice()?, wv.slice()?, bs, act, n, k, o);
    Tensor::from_vec(out, (n, o), &Device::Cpu)
}

/// Shapes of one convolution call, all in elements.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Plain candle implementations: the reference every fast kernel is tested against.
pub mod reference {
    use super::{Activation, ConvParams};
    use candle_core::{Result, Tensor};

    pub fn conv2d(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: ConvParams,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut y = x.conv2d(w, p.padding, p.stride, 1, p.groups)?;
        if let Some(b) = b {
            y = y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?;
        }
        if let Some(r) = residual {
            y = (y + r)?;
        }
        activation(&y, act)
    }

    pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        let mut y = x.matmul(&w.t()?)?;
        if let Some(b) = b {
            y = y.broadcast_add(b)?;
        }
        activation(&y, act)
    }

    pub fn activation(y: &Tensor, act: Activation) -> Result<Tensor> {
        match act {
            Activation::None => Ok(y.clone()),
            Activation::Relu => y.relu(),
            // x * relu6(x + 3) / 6, as torch.nn.Hardswish
            Activation::Hardswish => y.mul(&((y + 3.0)?.clamp(0f32, 6f32)? / 6.0)?),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
