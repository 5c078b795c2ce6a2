//! The operating-system calls and CPU instructions that need `unsafe`, each with its safety
//! argument, so the rest of the crate has none (`unsafe_code` is denied across the workspace;
//! this module is the only exception, and a test keeps it so): process and memory calls, and
//! the ternary kernel's AVX2 inner loops behind safe functions that check the CPU first.

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

/// Ask the kernel to start writing `len` bytes of `file` at `offset` to disk now, without
/// waiting (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so a large file's final fsync has
/// little left to do. Best effort: elsewhere, or on error, nothing happens.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open for the
        // call; it touches no memory of this process.
        let _ = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Let the kernel drop the pages of `len` bytes at `start` of a read-only mapping from this
/// process's resident set (they are re-read from the file if touched again).
pub fn drop_pages(map: &memmap2::Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: a read-only file mapping: dropped pages are re-read from the file when touched,
    // so no reader can observe a change, and the range lies inside the mapping.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
}

/// `Σ k·x` over a row of the packed ternary format (`row`: whole 32-byte blocks of 2-bit codes
/// `k`; `x`: four activations per byte, in the layout of `quant::packed`) with AVX2, or `None`
/// when the CPU has no AVX2 (the caller then runs its portable loop).
///
/// # Panics
/// When `row` is not whole blocks or `x` has not four activations per byte.
pub fn packed_code_dot(row: &[u8], x: &[i8]) -> Option<i32> {
    assert!(
        row.len().is_multiple_of(32) && x.len() == 4 * row.len(),
        "whole 32-byte blocks"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), and every load reads 32 bytes at an
        // offset the loop bounds keep inside `row` and `x` (lengths asserted above).
        return Some(unsafe { avx2::packed_code_dot(row, x) });
    }
    None
}

/// `Σ k·x` of unpacked codes `k ∈ {0, 1, 2}` (one byte each) and int8 activations with AVX2, or
/// `None` without it.
///
/// # Panics
/// When the slices differ in length or are not a multiple of 32 long.
pub fn code_dot(codes: &[u8], x: &[i8]) -> Option<i32> {
    assert!(
        codes.len() == x.len() && codes.len().is_multiple_of(32),
        "whole 32-lane chunks"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above); the loads stay inside both slices, whose
        // equal lengths are a multiple of 32 (asserted above).
        return Some(unsafe { avx2::code_dot(codes, x) });
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm_add_epi32, _mm_cvtsi128_si32, _mm_hadd_epi32, _mm256_add_epi16,
        _mm256_add_epi32, _mm256_and_si256, _mm256_castsi256_si128, _mm256_extracti128_si256,
        _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_set1_epi8,
        _mm256_set1_epi16, _mm256_setzero_si256, _mm256_srli_epi16,
    };

    /// The eight i32 lanes of `v`, summed.
    #[target_feature(enable = "avx2")]
    fn sum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_hadd_epi32(s, s);
        _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
    }

    /// Per 32-byte block: four shifted masks give 4 × 32 codes; `maddubs` multiplies codes (u8)
    /// by activations (i8) and adds pairs into i16 (|sum| ≤ 4·2·2·128 = 2048 over the four
    /// groups, far from i16's range); `madd` by 1 widens to i32 once per block.
    #[target_feature(enable = "avx2")]
    pub unsafe fn packed_code_dot(row: &[u8], x: &[i8]) -> i32 {
        let mask = _mm256_set1_epi8(0b11);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for (block, xb) in row.chunks_exact(32).zip(x.chunks_exact(128)) {
            // SAFETY (all loads): `block` has 32 bytes and `xb` 128, so each reads in bounds.
            let b = unsafe { _mm256_loadu_si256(block.as_ptr().cast()) };
            let lanes = |g: usize| unsafe { _mm256_loadu_si256(xb[32 * g..].as_ptr().cast()) };
            let k0 = _mm256_and_si256(_mm256_srli_epi16::<6>(b), mask);
            let k1 = _mm256_and_si256(_mm256_srli_epi16::<4>(b), mask);
            let k2 = _mm256_and_si256(_mm256_srli_epi16::<2>(b), mask);
            let k3 = _mm256_and_si256(b, mask);
            let s = _mm256_add_epi16(
                _mm256_add_epi16(
                    _mm256_maddubs_epi16(k0, lanes(0)),
                    _mm256_maddubs_epi16(k1, lanes(1)),
                ),
                _mm256_add_epi16(
                    _mm256_maddubs_epi16(k2, lanes(2)),
                    _mm256_maddubs_epi16(k3, lanes(3)),
                ),
            );
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones));
        }
        sum_i32(acc)
    }

    /// 32 codes and 32 activations at a time, as above without the unpacking.
    #[target_feature(enable = "avx2")]
    pub unsafe fn code_dot(codes: &[u8], x: &[i8]) -> i32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for (k, xs) in codes.chunks_exact(32).zip(x.chunks_exact(32)) {
            // SAFETY: both chunks are 32 bytes long.
            let (k, xs) = unsafe {
                (
                    _mm256_loadu_si256(k.as_ptr().cast()),
                    _mm256_loadu_si256(xs.as_ptr().cast()),
                )
            };
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(k, xs), ones));
        }
        sum_i32(acc)
    }
}
