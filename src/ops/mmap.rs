//! Memory-mapped safetensors: the one `unsafe` call of the loading path, kept here with the rest of
//! the crate's `unsafe` code.

use candle_core::safetensors::MmapedSafetensors;
use std::path::Path;

/// Memory-map a safetensors file read-only.
///
/// The mapping is only read, and callers copy every tensor out of it before dropping it. The one
/// caveat is memory-mapping's own: if another process truncates the file while it is mapped, reads
/// can fault. Weights files are written atomically (temp file + rename), so a file is never
/// truncated in place by imgclass itself.
pub fn mmap_safetensors(path: &Path) -> candle_core::Result<MmapedSafetensors> {
    // SAFETY: see the function documentation: read-only mapping of a file that imgclass never
    // modifies in place; tensors are copied out before the mapping is dropped.
    #[allow(unsafe_code)]
    unsafe {
        MmapedSafetensors::new(path)
    }
}
