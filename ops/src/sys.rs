//! The operating-system calls that need `unsafe`, each with its safety argument, so the rest of
//! the crate has none (`unsafe_code` is denied across the workspace; this module and the coming
//! ternary kernel are the only exceptions, and a test keeps it so).

#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::process::CommandExt;

/// Make the command's process die with SIGKILL when forge dies (even by SIGKILL), instead of
/// running on as an orphan that writes into the scratch dir of the next, resumed attempt.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Keep freed memory mapped instead of returning it to the kernel after every step (glibc only;
/// see `device::tune_allocator` for why).
pub fn raise_malloc_thresholds(mmap_threshold: i32, trim_threshold: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters and is thread-safe in glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_threshold);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim_threshold);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (mmap_threshold, trim_threshold);
}

/// Map `file` read-only.
pub fn map_readonly(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is only read, and forge's store never rewrites a published object in
    // place (objects are written to a temp file and renamed), so its bytes cannot change under us.
    unsafe { memmap2::Mmap::map(file) }
}

/// Let the kernel drop the pages of `len` bytes at `start` of a read-only mapping from this
/// process's resident set (they are re-read from the file if touched again).
pub fn drop_pages(map: &memmap2::Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: a read-only file mapping: dropped pages are re-read from the file when touched,
    // so no reader can observe a change, and the range lies inside the mapping.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
}
