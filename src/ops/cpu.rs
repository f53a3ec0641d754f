//! Raw access to CPU tensors, run-time SIMD level, and the shared epilogue.

use super::Activation;
use candle_core::{Layout, Result, Storage, StorageRef, Tensor};
use std::sync::OnceLock;

/// A read-locked, contiguous f32 view of a CPU tensor.
pub(crate) struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> F32View<'a> {
    /// `t` must be contiguous (callers make it so); non-contiguous tensors are an error.
    pub(crate) fn new(t: &'a Tensor) -> Result<Self> {
        let (guard, layout): (StorageRef<'a>, &Layout) = t.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("ops: tensor of shape {:?} is not contiguous", t.dims());
        };
        Ok(F32View { guard, start, end })
    }

    pub(crate) fn slice(&self) -> Result<&[f32]> {
        match &*self.guard {
            Storage::Cpu(cpu) => Ok(&cpu.as_slice::<f32>()?[self.start..self.end]),
            _ => candle_core::bail!("ops: fast kernels run on CPU tensors only"),
        }
    }
}

/// SIMD level detected at run time (the binary itself stays portable x86-64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| capped(detected(), std::env::var("IMGCLASS_SIMD").ok().as_deref()))
}

/// The best SIMD level of the running CPU.
fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

/// `IMGCLASS_SIMD=avx2` / `=scalar` caps the level (never raises it): the kernels an older CPU
/// takes, run and measured on a newer one (the tests run the AVX2 kernels this way on AVX-512
/// CPUs). Any other value, or none, keeps the detected level.
fn capped(detected: Level, cap: Option<&str>) -> Level {
    let rank = |l: Level| match l {
        Level::Scalar => 0,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => 1,
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => 2,
    };
    let cap = match cap.map(str::trim) {
        Some("scalar") => Level::Scalar,
        #[cfg(target_arch = "x86_64")]
        Some("avx2") => Level::Avx2,
        _ => return detected,
    };
    if rank(cap) < rank(detected) {
        cap
    } else {
        detected
    }
}

/// Whether this CPU's vendor string is AMD's (`AuthenticAMD`, CPUID leaf 0).
fn is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        // "Auth" "enti" "cAMD" in EBX, EDX, ECX.
        r.ebx == u32::from_le_bytes(*b"Auth")
            && r.edx == u32::from_le_bytes(*b"enti")
            && r.ecx == u32::from_le_bytes(*b"cAMD")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The default of the two GEMM choices that depend on the CPU's memory system rather than on its
/// instruction set: the Winograd GEMMs on the packed 1x1 kernel instead of the `gemm` crate, and
/// Wide ResNet's 7x7-output 3x3 convolutions on the channel-vector kernel instead of im2col +
/// `gemm` (`IMGCLASS_WINO_GEMM`, `IMGCLASS_KXK_CV` override it either way). Both read their
/// input rows in place, where `gemm` first packs them into a contiguous block: faster on the AMD
/// Zen 4 / Zen 5 hosts we measured, slower on the Intel Xeons (whole Wide ResNet passes there, both
/// off against both on: 3-4% faster at batch 1, ~12% at batch 8), so on by default on AMD CPUs only.
pub(crate) fn packed_gemms_by_default() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(is_amd)
}

/// Define `$name(args)` that runs `$body_fn(args)` compiled for the best SIMD level of the CPU.
/// `$body_fn` must be `#[inline(always)]` so it is compiled inside each target-feature wrapper, and
/// generic over `const FMA: bool` (true inside the AVX2/AVX-512 wrappers, see [`fmadd`]).
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body_fn:ident) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v4($($arg: $ty),*) {
                $body_fn::<true>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v3($($arg: $ty),*) {
                $body_fn::<true>($($arg),*)
            }
            match $crate::ops::cpu::level() {
                // SAFETY: level() only reports features the running CPU has.
                #[cfg(target_arch = "x86_64")]
                $crate::ops::cpu::Level::Avx512 => unsafe { v4($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::ops::cpu::Level::Avx2 => unsafe { v3($($arg),*) },
                $crate::ops::cpu::Level::Scalar => $body_fn::<false>($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// The AVX2 lane mask of the first `n <= 8` lanes of a vector of 8 (all-ones lanes are loaded /
/// stored by `_mm256_maskload_ps` / `_mm256_maskstore_ps`).
///
/// # Safety
/// AVX2 present (inlined into the callers' `target_feature` functions).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn lanes8(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// For a row of `np > 0` floats in 16-lane vectors: how many vectors, and the lane mask of the
/// last one (all 16 lanes when `np` is a multiple of 16).
pub(crate) fn vectors_and_mask(np: usize) -> (usize, u16) {
    let nv = np.div_ceil(16);
    let tail = np - (nv - 1) * 16;
    (
        nv,
        if tail == 16 {
            0xFFFF
        } else {
            (1u16 << tail) - 1
        },
    )
}

/// `a * b + c`: one FMA instruction inside the multiversioned kernels (`FMA == true`), a plain
/// multiply-add otherwise (`mul_add` without hardware FMA would be a slow libm call).
#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
pub(crate) fn activate(v: f32, act: Activation) -> f32 {
    match act {
        Activation::None => v,
        Activation::Relu => v.max(0.0),
        Activation::Hardswish => v * ((v + 3.0).clamp(0.0, 6.0) / 6.0),
    }
}

/// `dst[i] = act(src[i] + bias + res[i])` (the residual is optional).
#[inline(always)]
fn epilogue_body<const FMA: bool>(
    dst: &mut [f32],
    src: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    act: Activation,
) {
    match (res, act) {
        (None, Activation::None) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s + bias;
            }
        }
        (None, Activation::Relu) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = (*s + bias).max(0.0);
            }
        }
        (None, Activation::Hardswish) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = activate(*s + bias, Activation::Hardswish);
            }
        }
        (Some(r), act) => {
            for ((d, s), r) in dst.iter_mut().zip(src).zip(r) {
                *d = activate(*s + bias + *r, act);
            }
        }
    }
}

/// In-place variant of [`epilogue_body`].
#[inline(always)]
fn epilogue_inplace_body<const FMA: bool>(
    dst: &mut [f32],
    bias: f32,
    res: Option<&[f32]>,
    act: Activation,
) {
    match (res, act) {
        (None, Activation::None) => {
            for d in dst.iter_mut() {
                *d += bias;
            }
        }
        (None, Activation::Relu) => {
            for d in dst.iter_mut() {
                *d = (*d + bias).max(0.0);
            }
        }
        (None, Activation::Hardswish) => {
            for d in dst.iter_mut() {
                *d = activate(*d + bias, Activation::Hardswish);
            }
        }
        (Some(r), act) => {
            for (d, r) in dst.iter_mut().zip(r) {
                *d = activate(*d + bias + *r, act);
            }
        }
    }
}

multiversion!(pub(crate) fn epilogue(dst: &mut [f32], src: &[f32], bias: f32, res: Option<&[f32]>, act: Activation) => epilogue_body);
multiversion!(pub(crate) fn epilogue_inplace(dst: &mut [f32], bias: f32, res: Option<&[f32]>, act: Activation) => epilogue_inplace_body);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_cap_lowers_the_level_and_never_raises_it() {
        assert_eq!(capped(Level::Scalar, Some("avx2")), Level::Scalar);
        assert_eq!(capped(Level::Scalar, None), Level::Scalar);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(capped(Level::Avx512, Some("avx2")), Level::Avx2);
            assert_eq!(capped(Level::Avx512, Some(" scalar\n")), Level::Scalar);
            assert_eq!(capped(Level::Avx2, Some("avx2")), Level::Avx2);
            assert_eq!(capped(Level::Avx2, Some("avx512")), Level::Avx2);
            assert_eq!(capped(Level::Avx512, Some("native")), Level::Avx512);
            assert_eq!(capped(Level::Avx512, None), Level::Avx512);
        }
        // the level of this process is the CPU's, capped by IMGCLASS_SIMD (CI runs the kernel
        // tests once more with IMGCLASS_SIMD=avx2: this checks the cap took effect there)
        let cap = std::env::var("IMGCLASS_SIMD").ok();
        assert_eq!(level(), capped(detected(), cap.as_deref()));
    }
}
