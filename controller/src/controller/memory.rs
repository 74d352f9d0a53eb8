//! Keeping `tend run` small between ticks (glibc malloc; a no-op elsewhere).
//!
//! glibc gives each thread that allocates an arena of its own (up to eight per
//! core) and keeps what is freed in each for reuse. A controller wakes up,
//! reconciles and sleeps, and what a reconcile freed (probe outputs, plans,
//! release tarballs) is not needed again until the next one. So `tend run`
//! asks for one arena ([`limit_arenas`]: its threads mostly wait on I/O, there
//! is little to contend) and hands the free pages back to the kernel after
//! every reconcile ([`release_free`]). BENCHMARKS.md ("Where tend's memory
//! goes") has the figures.

/// One malloc arena for the whole process. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, and M_ARENA_MAX
    // accepts any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Give the free pages of every arena back to the kernel (a few hundred
/// microseconds for tend's heap).
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
