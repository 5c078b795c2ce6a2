//! The on-disk store: objects, trees, actions, step refs, views, work dirs and run records.
//!
//! ```text
//! .forge/
//!   FORMAT                      "forge-store <STORE_FORMAT>"; a mismatch is an error, never a guess
//!   objects/ab/cdef…            blobs and tree manifests, named by blake3 of their bytes, read-only
//!   actions/ab/cdef….json       step key → ActionRecord (output digests, metrics, key pre-image)
//!   refs/<h>.json               (pipeline, step id) → latest key + pre-image, for `plan`'s reasons
//!   views/<tree>/               a tree checked out as hard links to its objects, shared read-only
//!   work/<key>/                 scratch, outputs being written and checkpoints of an unfinished step
//!   runs/<run-id>/              run.json (summary) and events.jsonl of each `apply`
//!   locks/                      per-step locks and the store lock
//!   memo/<bucket>/v<N>/         memo tables: values keyed by typed pre-images (see `memo`)
//!   statcache/                  remembered file digests (see `hashing`)
//!   quarantine/                 corrupt objects moved aside by `verify`
//!   tmp/                        temp files; everything enters the store by rename from here
//! ```
//! Nothing half-written is ever visible: files are written to `tmp/` (or the destination's
//! directory), fsynced and renamed into place.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::{rename_into_place, sync_dir, tempfile_in, write_atomic};
use crate::digest::{ObjectDigest, StepKey};
use crate::error::{IoContext, Result, StoreError};
use crate::hashing::{HashSource, StatCache};
use crate::lock::{FileLock, Holder, LockOptions, StoreLock, lock_exclusive, lock_store};

/// Bumped whenever the layout or any record format changes incompatibly.
pub const STORE_FORMAT: u32 = 1;
const TREE_FORMAT: u32 = 1;

/// One file in a tree manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// `/`-separated path relative to the tree root.
    pub path: String,
    pub digest: ObjectDigest,
    pub size: u64,
    pub executable: bool,
}

/// A directory snapshot: sorted entries. Its digest is the blake3 of its canonical JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub forge_tree: u32,
    pub entries: Vec<TreeEntry>,
}

impl Tree {
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// What a finished step produced, stored under its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRecord {
    pub key: StepKey,
    pub step: String,
    pub op: String,
    /// Output name → tree digest.
    pub outputs: BTreeMap<String, ObjectDigest>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// The exact pre-image that hashes to `key` (kept to explain future cache misses).
    pub preimage: serde_json::Value,
    pub created_unix_ms: u64,
    pub duration_ms: u64,
    pub run_id: String,
}

/// The latest result of one step of one pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRef {
    pub pipeline: String,
    pub step: String,
    pub key: StepKey,
    pub preimage: serde_json::Value,
    pub updated_unix_ms: u64,
    /// The pipeline vars the step read and their values (not part of the key: only there to
    /// name a changed var as the reason for a re-run).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vars: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Handle to a store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    stat: StatCache,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const DIRS: &[&str] = &[
    "objects",
    "actions",
    "refs",
    "views",
    "work",
    "runs",
    "locks",
    "memo",
    "statcache",
    "quarantine",
    "tmp",
];

impl Store {
    /// Open the store at `root`, creating it if absent.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let format_file = root.join("FORMAT");
        match fs::read_to_string(&format_file) {
            Ok(s) => check_format(&root, &s)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&root).at(&root)?;
                write_atomic(
                    &format_file,
                    format!("forge-store {STORE_FORMAT}\n").as_bytes(),
                )
                .at(&format_file)?;
            }
            Err(e) => {
                return Err(StoreError::Io {
                    path: format_file,
                    source: e,
                });
            }
        }
        for d in DIRS {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        // Absolute, so paths handed to ops stay valid whatever their working directory.
        let root = fs::canonicalize(&root).at(&root)?;
        Ok(Self {
            stat: StatCache::new(root.join("statcache")),
            root,
        })
    }

    /// Open an existing store without creating anything; `None` when there is none.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Option<Self>> {
        let root = root.into();
        let format_file = root.join("FORMAT");
        match fs::read_to_string(&format_file) {
            Ok(s) => {
                check_format(&root, &s)?;
                Ok(Some(Self::open(root)?))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                path: format_file,
                source: e,
            }),
        }
    }

    /// The store's memo tables (`memo/`).
    pub fn memos(&self) -> crate::memo::MemoRoot {
        crate::memo::MemoRoot::at(self.root.join("memo"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    // ----- objects ---------------------------------------------------------------------------

    pub fn object_path(&self, d: &ObjectDigest) -> PathBuf {
        let h = d.to_hex();
        self.root.join("objects").join(&h[..2]).join(&h[2..])
    }

    pub fn has_object(&self, d: &ObjectDigest) -> bool {
        self.object_path(d).is_file()
    }

    pub fn read_object(&self, d: &ObjectDigest) -> Result<Vec<u8>> {
        let p = self.object_path(d);
        match fs::read(&p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::MissingObject { digest: *d })
            }
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// The stat-cached digest of a file outside the store (inputs named in a pipeline).
    pub fn hash_file(&self, path: &Path) -> Result<(ObjectDigest, HashSource)> {
        self.stat.hash_file(path)
    }

    /// Store `bytes` as an object.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectDigest> {
        let d = ObjectDigest::of(bytes);
        if self.has_object(&d) {
            return Ok(d);
        }
        let tmp_dir = self.root.join("tmp");
        let (tmp, mut f) = tempfile_in(&tmp_dir).at(&tmp_dir)?;
        io::Write::write_all(&mut f, bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        drop(f);
        self.install_object(&tmp, &d)?;
        Ok(d)
    }

    /// Move a finished file (e.g. a step's output) into the store as an object. The source is
    /// consumed: renamed into place when the object is new, deleted when it already exists.
    pub fn put_file_move(&self, path: &Path) -> Result<ObjectDigest> {
        // A file its writer hashed while writing it is not read again.
        let meta = fs::metadata(path).at(path)?;
        let d = match crate::hashing::take_written(&meta) {
            Some(d) => d,
            None => crate::hashing::hash_file_uncached(path)?,
        };
        if self.has_object(&d) {
            fs::remove_file(path).at(path)?;
            return Ok(d);
        }
        fs::File::open(path).and_then(|f| f.sync_all()).at(path)?;
        self.install_object(path, &d)?;
        Ok(d)
    }

    /// Copy a file from outside the store in as an object (the source is left alone).
    pub fn put_file_copy(&self, path: &Path) -> Result<ObjectDigest> {
        let (d, _) = self.hash_file(path)?;
        if self.has_object(&d) {
            return Ok(d);
        }
        let tmp_dir = self.root.join("tmp");
        let (tmp, f) = tempfile_in(&tmp_dir).at(&tmp_dir)?;
        drop(f);
        fs::copy(path, &tmp).at(path)?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
        // Re-hash what was copied: the source may have changed since it was stat-cached.
        let copied = crate::hashing::hash_file_uncached(&tmp)?;
        self.install_object(&tmp, &copied)?;
        Ok(copied)
    }

    fn install_object(&self, tmp: &Path, d: &ObjectDigest) -> Result<()> {
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o444)).at(tmp)?;
        let dest = self.object_path(d);
        let dir = dest.parent().expect("object path has a parent");
        fs::create_dir_all(dir).at(dir)?;
        // Renaming over an existing identical object is harmless (same bytes).
        fs::rename(tmp, &dest).at(&dest)?;
        sync_dir(dir).at(dir)?;
        Ok(())
    }

    // ----- trees -----------------------------------------------------------------------------

    /// Snapshot a directory into the store, moving its files in (the directory is consumed).
    pub fn put_tree_move(&self, dir: &Path) -> Result<ObjectDigest> {
        self.put_tree_with(dir, &|p| self.put_file_move(p))
    }

    /// Snapshot a directory (or a single file, stored as a one-entry tree) by copying.
    pub fn put_tree_copy(&self, path: &Path) -> Result<ObjectDigest> {
        let tree = self.build_tree(path, &|p| self.put_file_copy(p))?;
        self.put_tree_manifest(&tree)
    }

    /// The digest `put_tree_copy(path)` would give, without storing anything (stat-cached).
    /// Used to put the content of pipeline-named files and directories into step keys.
    pub fn tree_digest_of(&self, path: &Path) -> Result<ObjectDigest> {
        let tree = self.build_tree(path, &|p| self.hash_file(p).map(|(d, _)| d))?;
        Ok(ObjectDigest::of(
            &serde_json::to_vec(&tree).expect("tree serializes"),
        ))
    }

    fn put_tree_with(
        &self,
        dir: &Path,
        put: &dyn Fn(&Path) -> Result<ObjectDigest>,
    ) -> Result<ObjectDigest> {
        let tree = self.build_tree(dir, put)?;
        self.put_tree_manifest(&tree)
    }

    /// The tree of `path`: a directory's files, or a single file as a one-entry tree named by its
    /// file name. `put` turns each file into its object digest (storing it or only hashing it).
    fn build_tree(&self, path: &Path, put: &dyn Fn(&Path) -> Result<ObjectDigest>) -> Result<Tree> {
        let meta = fs::symlink_metadata(path).at(path)?;
        let mut files = Vec::new();
        if meta.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, path.to_owned(), meta));
        } else {
            walk_files(path, path, &mut files)?;
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(files.len());
        for (rel, abs, meta) in files {
            let digest = put(&abs)?;
            entries.push(TreeEntry {
                path: rel,
                digest,
                size: meta.len(),
                executable: is_exec(&meta),
            });
        }
        Ok(Tree {
            forge_tree: TREE_FORMAT,
            entries,
        })
    }

    pub fn put_tree_manifest(&self, tree: &Tree) -> Result<ObjectDigest> {
        let bytes = serde_json::to_vec(tree).expect("tree serializes");
        self.put_bytes(&bytes)
    }

    pub fn read_tree(&self, d: &ObjectDigest) -> Result<Tree> {
        let bytes = self.read_object(d)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            path: self.object_path(d),
            what: "tree manifest",
            source,
        })
    }

    /// True when the tree and every object it names are present.
    pub fn tree_complete(&self, d: &ObjectDigest) -> bool {
        match self.read_tree(d) {
            Ok(t) => t.entries.iter().all(|e| self.has_object(&e.digest)),
            Err(_) => false,
        }
    }

    /// A read-only checkout of a tree under `views/<digest>/`, made once and shared. Each call
    /// builds in its own temporary directory (steps of one process may check out the same tree
    /// at the same time) and renames it into place.
    pub fn checkout(&self, d: &ObjectDigest) -> Result<PathBuf> {
        let view = self.root.join("views").join(d.to_hex());
        if view.is_dir() {
            return Ok(view);
        }
        let tree = self.read_tree(d)?;
        let tmp = self.root.join("tmp").join(format!(
            "view-{}-{}-{}",
            d.short(),
            std::process::id(),
            crate::atomic::unique()
        ));
        let _ = fs::remove_dir_all(&tmp);
        self.materialize(&tree, &tmp, false)?;
        match rename_into_place(&tmp, &view) {
            Ok(()) => Ok(view),
            Err(_) if view.is_dir() => {
                // Another process checked it out first; theirs is identical.
                let _ = fs::remove_dir_all(&tmp);
                Ok(view)
            }
            Err(e) => Err(StoreError::Io {
                path: view,
                source: e,
            }),
        }
    }

    /// Writable copies of a tree's files under `dest` (for `forge export`).
    pub fn export(&self, d: &ObjectDigest, dest: &Path) -> Result<()> {
        let tree = self.read_tree(d)?;
        self.materialize(&tree, dest, true)
    }

    fn materialize(&self, tree: &Tree, dest: &Path, writable_copies: bool) -> Result<()> {
        fs::create_dir_all(dest).at(dest)?;
        for e in &tree.entries {
            let target = dest.join(&e.path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).at(parent)?;
            }
            let obj = self.object_path(&e.digest);
            if !obj.is_file() {
                return Err(StoreError::MissingObject { digest: e.digest });
            }
            let _ = fs::remove_file(&target);
            if writable_copies || fs::hard_link(&obj, &target).is_err() {
                fs::copy(&obj, &target).at(&target)?;
                let mode = match (writable_copies, e.executable) {
                    (true, true) => 0o755,
                    (true, false) => 0o644,
                    (false, true) => 0o555,
                    (false, false) => 0o444,
                };
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).at(&target)?;
            }
        }
        Ok(())
    }

    // ----- actions and refs ------------------------------------------------------------------

    fn action_path(&self, key: &StepKey) -> PathBuf {
        let h = key.to_hex();
        self.root
            .join("actions")
            .join(&h[..2])
            .join(format!("{}.json", &h[2..]))
    }

    pub fn put_action(&self, rec: &ActionRecord) -> Result<()> {
        let p = self.action_path(&rec.key);
        let bytes = serde_json::to_vec_pretty(rec).expect("action record serializes");
        write_atomic(&p, &bytes).at(&p)
    }

    /// The action recorded under `key`, if it exists *and* all its outputs are intact in the
    /// store (a quarantined or deleted object turns a hit into a miss, so it gets rebuilt).
    pub fn get_action(&self, key: &StepKey) -> Result<Option<ActionRecord>> {
        let Some(rec) = self.read_action(key)? else {
            return Ok(None);
        };
        if rec.outputs.values().all(|d| self.tree_complete(d)) {
            Ok(Some(rec))
        } else {
            Ok(None)
        }
    }

    /// The action recorded under `key`, without checking its outputs.
    pub fn read_action(&self, key: &StepKey) -> Result<Option<ActionRecord>> {
        let p = self.action_path(key);
        match fs::read(&p) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::Json {
                        path: p,
                        what: "action record",
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    pub(crate) fn all_action_keys(&self) -> Result<Vec<StepKey>> {
        Ok(sharded_entries(&self.root.join("actions"), ".json")?
            .into_iter()
            .filter_map(|(name, _)| name.parse().ok())
            .collect())
    }

    pub(crate) fn remove_action(&self, key: &StepKey) -> Result<()> {
        let p = self.action_path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    fn ref_path(&self, pipeline: &str, step: &str) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(pipeline.as_bytes());
        h.update(b"\0");
        h.update(step.as_bytes());
        self.root
            .join("refs")
            .join(format!("{}.json", &h.finalize().to_hex()[..32]))
    }

    pub fn set_step_ref(&self, r: &StepRef) -> Result<()> {
        let p = self.ref_path(&r.pipeline, &r.step);
        let bytes = serde_json::to_vec_pretty(r).expect("step ref serializes");
        write_atomic(&p, &bytes).at(&p)
    }

    pub fn step_ref(&self, pipeline: &str, step: &str) -> Result<Option<StepRef>> {
        let p = self.ref_path(pipeline, step);
        read_json_opt(&p, "step ref")
    }

    pub fn step_refs(&self) -> Result<Vec<(PathBuf, StepRef)>> {
        let mut out = Vec::new();
        for p in read_dir_sorted(&self.root.join("refs"))? {
            if let Some(r) = read_json_opt::<StepRef>(&p, "step ref")? {
                out.push((p, r));
            }
        }
        Ok(out)
    }

    // ----- work dirs and locks ---------------------------------------------------------------

    /// Scratch and checkpoint directory of a step that has not finished; it survives crashes and
    /// is removed once the step's outputs are in the store.
    pub fn work_dir(&self, key: &StepKey) -> PathBuf {
        self.root.join("work").join(key.to_hex())
    }

    /// Lock one step so concurrent processes run it once. See [`crate::lock`].
    pub fn lock_step(
        &self,
        key: &StepKey,
        opts: LockOptions,
        cancelled: &dyn Fn() -> bool,
        on_wait: &dyn Fn(Option<&Holder>),
    ) -> Result<FileLock> {
        let p = self
            .root
            .join("locks")
            .join(format!("{}.lease", key.to_hex()));
        Ok(lock_exclusive(&p, opts, cancelled, on_wait)?)
    }

    /// Shared store lock (apply) or exclusive (gc, verify).
    pub fn lock_store(&self, exclusive: bool) -> Result<StoreLock> {
        Ok(lock_store(
            &self.root.join("locks").join("store.lock"),
            exclusive,
        )?)
    }
}

fn check_format(root: &Path, s: &str) -> Result<()> {
    let expected = format!("forge-store {STORE_FORMAT}");
    if s.trim() == expected {
        Ok(())
    } else {
        Err(StoreError::Format {
            root: root.to_owned(),
            found: s.trim().to_owned(),
            expected: STORE_FORMAT,
        })
    }
}

fn is_exec(meta: &fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

fn walk_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf, fs::Metadata)>,
) -> Result<()> {
    for entry in read_dir_sorted(dir)? {
        let meta = fs::symlink_metadata(&entry).at(&entry)?;
        if meta.file_type().is_symlink() {
            return Err(StoreError::Symlink { path: entry });
        } else if meta.is_dir() {
            walk_files(root, &entry, out)?;
        } else if meta.is_file() {
            let rel = entry
                .strip_prefix(root)
                .expect("walked path is under root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, entry, meta));
        }
    }
    Ok(())
}

/// Entries of a two-level sharded directory (`ab/cdef…<suffix>`) as (`abcdef…`, path).
pub(crate) fn sharded_entries(dir: &Path, suffix: &str) -> Result<Vec<(String, PathBuf)>> {
    let name_of = |p: &Path| {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for shard in read_dir_sorted(dir)? {
        let prefix = name_of(&shard);
        for f in read_dir_sorted(&shard)? {
            if let Some(stem) = name_of(&f).strip_suffix(suffix) {
                out.push((format!("{prefix}{stem}"), f));
            }
        }
    }
    Ok(out)
}

pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut v = rd
                .map(|e| e.map(|e| e.path()))
                .collect::<io::Result<Vec<_>>>()
                .at(dir)?;
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::Io {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

pub(crate) fn read_json_opt<T: serde::de::DeserializeOwned>(
    p: &Path,
    what: &'static str,
) -> Result<Option<T>> {
    match fs::read(p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Json {
                path: p.to_owned(),
                what,
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            path: p.to_owned(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join(".forge")).unwrap();
        (d, s)
    }

    #[test]
    fn a_file_hashed_while_written_is_not_read_again_unless_it_changed() {
        let (d, s) = store();
        let f = d.path().join("w.bin");
        fs::write(&f, b"merged weights").unwrap();
        // A remembered digest is taken as is: a wrong one shows the file was not read.
        let claimed = ObjectDigest::of(b"what the writer hashed");
        crate::hashing::remember_written(&f, claimed).unwrap();
        assert_eq!(s.put_file_move(&f).unwrap(), claimed);
        // A new file at the same path is hashed.
        fs::write(&f, b"merged weights").unwrap();
        assert_eq!(
            s.put_file_move(&f).unwrap(),
            ObjectDigest::of(b"merged weights")
        );
        // Changed after it was remembered (another size): hashed, the memory ignored.
        fs::write(&f, b"x").unwrap();
        crate::hashing::remember_written(&f, claimed).unwrap();
        fs::write(&f, b"changed after").unwrap();
        assert_eq!(
            s.put_file_move(&f).unwrap(),
            ObjectDigest::of(b"changed after")
        );
    }

    #[test]
    fn tree_round_trip_through_checkout_and_export() {
        let (d, s) = store();
        let src = d.path().join("out");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a.txt"), b"alpha").unwrap();
        fs::write(src.join("sub/b.txt"), b"beta").unwrap();
        let predicted = s.tree_digest_of(&src).unwrap();
        let t = s.put_tree_copy(&src).unwrap();
        assert_eq!(predicted, t);
        // Same content → same digest, independent of where it came from.
        let src2 = d.path().join("again");
        fs::create_dir_all(src2.join("sub")).unwrap();
        fs::write(src2.join("sub/b.txt"), b"beta").unwrap();
        fs::write(src2.join("a.txt"), b"alpha").unwrap();
        assert_eq!(s.put_tree_move(&src2).unwrap(), t);
        let tree = s.read_tree(&t).unwrap();
        assert_eq!(
            tree.entries
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>(),
            ["a.txt", "sub/b.txt"]
        );
        let view = s.checkout(&t).unwrap();
        assert_eq!(fs::read(view.join("sub/b.txt")).unwrap(), b"beta");
        let exp = d.path().join("exp");
        s.export(&t, &exp).unwrap();
        fs::write(exp.join("a.txt"), b"edited").unwrap(); // writable copy, store untouched
        assert_eq!(
            fs::read(s.object_path(&tree.entries[0].digest)).unwrap(),
            b"alpha"
        );
    }

    #[test]
    fn action_with_missing_output_is_a_miss() {
        let (_d, s) = store();
        let blob = s.put_bytes(b"x").unwrap();
        let tree = s
            .put_tree_manifest(&Tree {
                forge_tree: 1,
                entries: vec![TreeEntry {
                    path: "x".into(),
                    digest: blob,
                    size: 1,
                    executable: false,
                }],
            })
            .unwrap();
        let key = StepKey::of(b"k");
        let rec = ActionRecord {
            key,
            step: "s".into(),
            op: "exec".into(),
            outputs: [("out".to_string(), tree)].into(),
            metrics: Default::default(),
            preimage: serde_json::json!({}),
            created_unix_ms: 0,
            duration_ms: 0,
            run_id: "r".into(),
        };
        s.put_action(&rec).unwrap();
        assert!(s.get_action(&key).unwrap().is_some());
        fs::remove_file(s.object_path(&blob)).unwrap();
        assert!(s.get_action(&key).unwrap().is_none());
        assert!(s.read_action(&key).unwrap().is_some());
    }

    #[test]
    fn wrong_format_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join(".forge");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("FORMAT"), "forge-store 999\n").unwrap();
        let e = Store::open(&root).unwrap_err();
        assert!(e.to_string().contains("format version"), "{e}");
    }

    #[test]
    fn symlinks_in_outputs_are_rejected() {
        let (d, s) = store();
        let src = d.path().join("out");
        fs::create_dir_all(&src).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        assert!(matches!(
            s.put_tree_copy(&src),
            Err(StoreError::Symlink { .. })
        ));
    }
}
