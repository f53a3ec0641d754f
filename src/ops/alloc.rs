//! The allocator policy of the server: reuse freed buffers under load, give them back when idle.
//!
//! The glibc calls here are the server's only libc calls besides [`super::sched`]'s, kept with the
//! crate's other `unsafe`. Measured (lite, 4 clients, 640×480 JPEG, 2 cores): mmapping every
//! buffer above 128 KiB (so it goes back to the OS at once when freed) cost ~40% of the throughput
//! in page faults on fresh memory for every tensor; with glibc's defaults the freed tensors are
//! reused, but its per-thread arenas keep their free top chunks, which `malloc_trim` does not
//! release (RSS stayed ~70 MiB after a burst instead of ~35 on an earlier build; 53 against 35 MiB
//! now). One arena for every thread bounds the resident set (the full profile needs that: 424 MiB
//! right after a load against 486–498 MiB with per-thread arenas), but costs throughput: the
//! compute threads, the decoders and the runtime all take and free their buffers under one lock
//! (lite, interleaved: ~183 req/s with one arena against ~198 with glibc's default, and decoding at
//! idle priority only pays with per-thread arenas, ~211 req/s: a decoder preempted while it holds
//! the one arena's lock stalls the compute threads). So the lite profile keeps glibc's arenas and
//! the full profile uses one ([`crate::server::config::Profile::default_malloc_arenas`]).

/// Limit glibc's malloc to `n` arenas (`M_ARENA_MAX`; 1: every thread shares one, so that
/// [`release_free_memory`] can give all free memory back). The threads that allocate are few (the
/// engine, the compute pool, the decoders) and allocate few large buffers each. Call before other
/// threads start. Returns whether it was set; a no-op returning `false` off glibc or for `n == 0`.
pub fn set_arena_max(n: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Ok(n) = libc::c_int::try_from(n) else {
            return false;
        };
        if n == 0 {
            return false;
        }
        // SAFETY: mallopt only changes the allocator's parameters (under its own lock); it takes
        // no pointers.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
        ok == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

/// Return the allocator's free memory to the OS: glibc's `malloc_trim(0)` (free pages of every
/// arena, and the top of the main heap). Returns whether any memory was released. A no-op
/// returning `false` on other platforms or C libraries.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and only walks the allocator's own free lists under
        // its arena locks; it is safe to call from any thread at any time.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released != 0
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim_gives_freed_memory_back() {
        // 64 MiB touched then freed: glibc mmaps a block that large and unmaps it at free, so make
        // many medium blocks instead, which stay in the heap until trimmed.
        let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 256 * 1024]).collect();
        let sum: u64 = blocks.iter().map(|b| u64::from(b[100])).sum();
        assert_eq!(sum, (0..256u64).sum::<u64>());
        drop(blocks);
        // whatever the heap state, trimming must not fail or corrupt the allocator
        let _ = release_free_memory();
        let again = vec![7u8; 1 << 20];
        assert_eq!(again.iter().map(|&b| u64::from(b)).sum::<u64>(), 7 << 20);
    }
}
