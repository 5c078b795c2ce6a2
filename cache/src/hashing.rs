//! File hashing and the stat cache.
//!
//! Hashing large inputs (datasets, model weights) on every `plan` would dominate a no-op run, so
//! a file's digest is remembered against its `(dev, inode, size, mtime_ns)`; if none of those
//! changed, the remembered digest is used without reading the file. Entries for files modified
//! within the last second are not stored (a write in the same timestamp tick would go unseen —
//! git's "racy clean" problem). Large files are hashed memory-mapped on all cores, as `b3sum` does.
//! A file hashed by its writer as it was written is not read again when it moves into the store
//! ([`remember_written`]).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::digest::ObjectDigest;
use crate::error::{IoContext, Result};

/// Files at least this large are hashed with mmap + rayon.
const MMAP_THRESHOLD: u64 = 1 << 20;

/// Digests of files this process wrote and hashed as it wrote them (a merge's output: hashing
/// while writing saves reading gigabytes again), keyed by `(dev, inode)` with the size and mtime
/// they had when remembered. [`Store::put_file_move`](crate::Store::put_file_move) takes an
/// entry instead of reading the file when the file still has that identity, size and mtime; the
/// entry is gone once taken. Only the writer of a file that nothing else writes may remember it:
/// a rewrite of the same size within one mtime tick would go unseen (as for the stat cache).
static WRITTEN: std::sync::Mutex<Written> = std::sync::Mutex::new(BTreeMap::new());

/// `(dev, inode)` → `(size, mtime_ns, digest)`.
type Written = BTreeMap<(u64, u64), (u64, i128, ObjectDigest)>;

/// Remember that `path`, as it is now, has content digest `digest` (see [`WRITTEN`]).
pub fn remember_written(path: &Path, digest: ObjectDigest) -> Result<()> {
    let meta = fs::metadata(path).at(path)?;
    let (dev, ino, size, mtime) = StatEntry::stamp(&meta);
    written().insert((dev, ino), (size, mtime, digest));
    Ok(())
}

/// The remembered digest of `path` if it is unchanged since [`remember_written`], taking it.
pub(crate) fn take_written(meta: &fs::Metadata) -> Option<ObjectDigest> {
    let (dev, ino, size, mtime) = StatEntry::stamp(meta);
    let mut map = written();
    match map.remove(&(dev, ino)) {
        Some((s, m, d)) if (s, m) == (size, mtime) => Some(d),
        _ => None,
    }
}

fn written() -> std::sync::MutexGuard<'static, Written> {
    // A panic while holding the lock leaves the map consistent (single inserts and removes).
    WRITTEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hash one file's content (no stat cache).
pub fn hash_file_uncached(path: &Path) -> Result<ObjectDigest> {
    let meta = fs::metadata(path).at(path)?;
    let mut hasher = blake3::Hasher::new();
    if meta.len() >= MMAP_THRESHOLD {
        hasher.update_mmap_rayon(path).at(path)?;
    } else {
        let bytes = fs::read(path).at(path)?;
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().into())
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct StatEntry {
    path: String,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    digest: ObjectDigest,
}

impl StatEntry {
    fn stamp(meta: &fs::Metadata) -> (u64, u64, u64, i128) {
        (
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        )
    }
}

/// Remembered digests, one small file per hashed path under `<store>/statcache/`.
#[derive(Debug, Clone)]
pub struct StatCache {
    dir: std::path::PathBuf,
}

/// Outcome of a cached hash, for benchmarks and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashSource {
    StatCache,
    Read,
}

impl StatCache {
    pub fn new(dir: std::path::PathBuf) -> Self {
        Self { dir }
    }

    fn entry_path(&self, abs: &Path) -> std::path::PathBuf {
        let h = blake3::hash(abs.as_os_str().as_encoded_bytes());
        self.dir.join(&h.to_hex()[..32])
    }

    /// The digest of `path`'s content, from the stat cache when the file is unchanged.
    pub fn hash_file(&self, path: &Path) -> Result<(ObjectDigest, HashSource)> {
        let abs = fs::canonicalize(path).at(path)?;
        let meta = fs::metadata(&abs).at(&abs)?;
        let (dev, ino, size, mtime_ns) = StatEntry::stamp(&meta);
        let entry_path = self.entry_path(&abs);
        if let Ok(bytes) = fs::read(&entry_path)
            && let Ok(e) = serde_json::from_slice::<StatEntry>(&bytes)
            && e.path == abs.to_string_lossy()
            && (e.dev, e.ino, e.size, e.mtime_ns) == (dev, ino, size, mtime_ns)
        {
            return Ok((e.digest, HashSource::StatCache));
        }
        let digest = hash_file_uncached(&abs)?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        // Only remember files whose mtime is safely in the past (see module docs).
        if mtime_ns + 1_000_000_000 < now_ns {
            let e = StatEntry {
                path: abs.to_string_lossy().into_owned(),
                dev,
                ino,
                size,
                mtime_ns,
                digest,
            };
            let bytes = serde_json::to_vec(&e).expect("stat entry serializes");
            // The stat cache is an optimisation: failing to write it must not fail the caller.
            let _ = write_atomic(&entry_path, &bytes);
        }
        Ok((digest, HashSource::Read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_file_is_served_from_the_stat_cache_and_a_change_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let cache = StatCache::new(d.path().join("sc"));
        let f = d.path().join("data.bin");
        fs::write(&f, b"hello").unwrap();
        // Backdate so the entry is not "racy".
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (d1, s1) = cache.hash_file(&f).unwrap();
        let (d2, s2) = cache.hash_file(&f).unwrap();
        assert_eq!((s1, s2), (HashSource::Read, HashSource::StatCache));
        assert_eq!(d1, d2);
        assert_eq!(d1, ObjectDigest::of(b"hello"));
        fs::write(&f, b"HELLO").unwrap();
        let (d3, s3) = cache.hash_file(&f).unwrap();
        assert_eq!(s3, HashSource::Read);
        assert_eq!(d3, ObjectDigest::of(b"HELLO"));
    }

    #[test]
    fn mmap_path_matches_plain_hash() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("big.bin");
        let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 31 % 251) as u8).collect();
        fs::write(&f, &data).unwrap();
        assert_eq!(hash_file_uncached(&f).unwrap(), ObjectDigest::of(&data));
    }
}
