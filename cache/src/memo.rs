//! Memo tables: values that are a pure function of a typed key, shared by every step and run of a
//! store — a merge candidate's fitness by its weights' digest, say — so the same computation is
//! never done twice.
//!
//! ```text
//! memo/<bucket>/v<version>/ab/cdef…    one entry: "<blake3 of value>\n" then the value's bytes
//! ```
//!
//! A bucket is named by its owner and versioned: bump the version when the values a key maps to
//! would change, and old entries are never read again (`gc` removes them). A key is the blake3 of
//! the bucket, its version and the canonical JSON of a typed pre-image (the same discipline as
//! step keys), so keys cannot be built ad hoc. Entries are written atomically; `get` checks each
//! entry's recorded digest and treats a mismatch as a miss; `verify` re-hashes and removes corrupt
//! entries; `gc` removes entries of other versions' directories that no kept run touched, and
//! entries no kept run used (a hit refreshes an entry's modification time).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::atomic::write_atomic;
use crate::digest::MemoKey;
use crate::error::{IoContext, Result};

/// One versioned memo bucket of a store.
#[derive(Debug, Clone)]
pub struct Memo {
    bucket: String,
    version: u32,
    dir: PathBuf,
}

/// Where memo buckets live: a store's `memo/`, or any directory (tests, a step without a store).
#[derive(Debug, Clone)]
pub struct MemoRoot {
    root: PathBuf,
}

impl MemoRoot {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Bucket `bucket` (a plain name: letters, digits, `-`, `_`) at `version`.
    pub fn bucket(&self, bucket: &str, version: u32) -> Result<Memo> {
        assert!(
            !bucket.is_empty()
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "memo bucket names are plain names: `{bucket}`"
        );
        let dir = self.root.join(bucket).join(format!("v{version}"));
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(Memo {
            bucket: bucket.into(),
            version,
            dir,
        })
    }
}

impl Memo {
    /// The key of a typed pre-image.
    pub fn key<T: Serialize>(&self, preimage: &T) -> MemoKey {
        let json = serde_json::to_value(preimage).expect("memo pre-image serializes");
        let bytes = serde_json::to_vec(&canonical(json)).expect("json");
        let mut h = blake3::Hasher::new();
        h.update(b"forge-memo\0");
        h.update(self.bucket.as_bytes());
        h.update(&self.version.to_le_bytes());
        h.update(&bytes);
        h.finalize().into()
    }

    fn path(&self, key: &MemoKey) -> PathBuf {
        let hex = key.to_hex();
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    /// The value under `key`, if present and intact.
    pub fn get(&self, key: &MemoKey) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&path),
        };
        let Some(value) = intact(&bytes) else {
            return Ok(None);
        };
        // Refresh the entry's time: `gc` keeps what recent runs used.
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Ok(Some(value.to_vec()))
    }

    /// Store `value` under `key` (atomically; a concurrent writer of the same key writes the same
    /// bytes).
    pub fn put(&self, key: &MemoKey, value: &[u8]) -> Result<()> {
        let path = self.path(key);
        let mut bytes = blake3::hash(value).to_hex().as_bytes().to_vec();
        bytes.push(b'\n');
        bytes.extend_from_slice(value);
        write_atomic(&path, &bytes).at(&path)
    }
}

/// The value of an entry's bytes when its recorded digest matches.
pub(crate) fn intact(entry: &[u8]) -> Option<&[u8]> {
    let (digest, value) = (entry.get(..64)?, entry.get(65..)?);
    (entry.get(64) == Some(&b'\n') && blake3::hash(value).to_hex().as_bytes() == digest)
        .then_some(value)
}

/// Every entry file under a memo root, with its bucket directory.
pub(crate) fn entries(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).at(&dir),
        };
        for e in rd {
            let e = e.at(&dir)?;
            let p = e.path();
            if e.file_type().at(&p)?.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn canonical(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let sorted: std::collections::BTreeMap<String, Value> =
                m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct K<'a> {
        name: &'a str,
        n: u32,
    }

    #[test]
    fn typed_keys_round_trip_and_versions_and_buckets_never_share_entries() {
        let d = tempfile::tempdir().unwrap();
        let root = MemoRoot::at(d.path());
        let m = root.bucket("fitness", 1).unwrap();
        let k = m.key(&K { name: "a", n: 1 });
        assert_eq!(m.get(&k).unwrap(), None);
        m.put(&k, b"0.5").unwrap();
        assert_eq!(m.get(&k).unwrap().as_deref(), Some(&b"0.5"[..]));
        assert_ne!(k, m.key(&K { name: "a", n: 2 }));
        let v2 = root.bucket("fitness", 2).unwrap();
        assert_ne!(
            v2.key(&K { name: "a", n: 1 }),
            k,
            "a new version is a new key space"
        );
        let other = root.bucket("other", 1).unwrap();
        assert_ne!(other.key(&K { name: "a", n: 1 }), k);
    }

    #[test]
    fn a_corrupt_entry_is_a_miss() {
        let d = tempfile::tempdir().unwrap();
        let m = MemoRoot::at(d.path()).bucket("b", 1).unwrap();
        let k = m.key(&1u32);
        m.put(&k, b"value").unwrap();
        let path = m.path(&k);
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(m.get(&k).unwrap(), None);
    }
}
