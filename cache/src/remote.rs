//! The remote cache: step results shared through object storage, so that a store on another
//! machine downloads what one machine built instead of building it again (Bazel's remote cache,
//! DVC's remotes).
//!
//! A remote is a URL the `object_store` crate understands: `s3://bucket/prefix` (AWS S3, MinIO,
//! R2, Ceph… with `AWS_ENDPOINT` for non-AWS services), `gs://bucket/prefix`,
//! `az://container/prefix`, `file:///dir`, or a plain directory path. Credentials come from the
//! services' standard environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`) and
//! the instance metadata / web-identity chain; they are never part of a step key, and a URL is
//! only ever displayed without its user-info.
//!
//! ```text
//! <prefix>/objects/<blake3 hex>         blobs and tree manifests, as in the local store
//! <prefix>/actions/<step key hex>.json  the action record (output tree digests, metrics)
//! ```
//!
//! Content addressing makes uploads idempotent (an object already there is not sent again) and
//! every download checkable: each object's bytes are hashed and compared with its name before the
//! local store takes it, so a truncated or corrupt remote object is refused — the step is built
//! instead — never served. An action is uploaded after all the objects it names, so a reader
//! that finds the action finds its outputs.

use std::time::Instant;

use object_store::ObjectStore;
use object_store::path::Path as RemotePath;

use crate::digest::{ObjectDigest, StepKey};
use crate::error::StoreError;
use crate::store::{ActionRecord, Store, Tree};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote cache `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("remote cache `{url}`: {what} `{path}` failed")]
    Service {
        url: String,
        what: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error(
        "remote cache `{url}`: object {} is corrupt (its {size} bytes hash to {}); it was not used",
        expected.short(), actual.short()
    )]
    Corrupt {
        url: String,
        expected: ObjectDigest,
        actual: ObjectDigest,
        size: usize,
    },
    #[error("remote cache `{url}`: the action record of step key {} is unreadable: {message}", key.short())]
    BadAction {
        url: String,
        key: StepKey,
        message: String,
    },
    #[error("step key {} has no result in the local store to push", key.short())]
    NotBuilt { key: StepKey },
    #[error(transparent)]
    Local(#[from] StoreError),
}

/// What one download or upload moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Objects sent or received (objects already on the other side are not counted).
    pub objects: u64,
    pub bytes: u64,
    pub millis: u64,
}

/// A remote cache.
#[derive(Debug)]
pub struct Remote {
    inner: Box<dyn ObjectStore>,
    prefix: RemotePath,
    url: String,
    rt: tokio::runtime::Runtime,
}

/// `url` without user-info (`s3://key:secret@bucket` → `s3://bucket`).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Remote {
    /// Open the remote at `url` (see the module doc for the forms), configured from the
    /// environment.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        let shown = redact(url);
        let bad = |message: String| RemoteError::Url {
            url: shown.clone(),
            message,
        };
        let parsed = if url.contains("://") {
            url::Url::parse(url).map_err(|e| bad(e.to_string()))?
        } else {
            // A plain path: a directory (made if missing) on this machine or a shared filesystem.
            std::fs::create_dir_all(url).map_err(|e| bad(e.to_string()))?;
            let abs = std::fs::canonicalize(url).map_err(|e| bad(e.to_string()))?;
            url::Url::from_directory_path(&abs)
                .map_err(|()| bad("not an absolute directory".into()))?
        };
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| bad("not a local path".into()))?;
            std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
        }
        // The builders' own configuration keys are the lower-cased environment variable names.
        let env = std::env::vars().filter_map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            ["aws_", "google_", "azure_"]
                .iter()
                .any(|p| k.starts_with(p))
                .then_some((k, v))
        });
        let (inner, prefix) =
            object_store::parse_url_opts(&parsed, env).map_err(|e| bad(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start its I/O runtime: {e}")))?;
        Ok(Remote {
            inner,
            prefix,
            url: shown,
            rt,
        })
    }

    /// The URL, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn object_path(&self, d: &ObjectDigest) -> RemotePath {
        self.prefix.child("objects").child(d.to_hex())
    }

    fn action_path(&self, key: &StepKey) -> RemotePath {
        self.prefix
            .child("actions")
            .child(format!("{}.json", key.to_hex()))
    }

    fn service(
        &self,
        what: &'static str,
        path: &RemotePath,
    ) -> impl Fn(object_store::Error) -> RemoteError {
        let (url, path) = (self.url.clone(), path.to_string());
        move |source| RemoteError::Service {
            url: url.clone(),
            what,
            path: path.clone(),
            source: Box::new(source),
        }
    }

    /// The bytes at `path`, or `None` when there is nothing there.
    fn get(&self, path: &RemotePath) -> Result<Option<Vec<u8>>, RemoteError> {
        let err = self.service("download of", path);
        self.rt.block_on(async {
            match self.inner.get(path).await {
                Ok(r) => Ok(Some(r.bytes().await.map_err(&err)?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err(e)),
            }
        })
    }

    fn exists(&self, path: &RemotePath) -> Result<bool, RemoteError> {
        let err = self.service("lookup of", path);
        self.rt.block_on(async {
            match self.inner.head(path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(err(e)),
            }
        })
    }

    fn put(&self, path: &RemotePath, bytes: Vec<u8>) -> Result<(), RemoteError> {
        let err = self.service("upload of", path);
        self.rt
            .block_on(self.inner.put(path, bytes.into()))
            .map(drop)
            .map_err(err)
    }

    /// The object `d`, checked against its digest.
    fn get_object(&self, d: &ObjectDigest) -> Result<Option<Vec<u8>>, RemoteError> {
        let Some(bytes) = self.get(&self.object_path(d))? else {
            return Ok(None);
        };
        let actual = ObjectDigest::of(&bytes);
        if actual != *d {
            // Bytes that do not hash to their name are never valid: delete them, so that the
            // next upload of this object (by whoever rebuilds it) replaces them.
            let path = self.object_path(d);
            let _ = self.rt.block_on(self.inner.delete(&path));
            return Err(RemoteError::Corrupt {
                url: self.url.clone(),
                expected: *d,
                actual,
                size: bytes.len(),
            });
        }
        Ok(Some(bytes))
    }

    /// The action record the remote holds for `key`, unchecked (for `plan`'s "remote hit").
    pub fn action(&self, key: &StepKey) -> Result<Option<ActionRecord>, RemoteError> {
        let Some(bytes) = self.get(&self.action_path(key))? else {
            return Ok(None);
        };
        let bad = |message: String| RemoteError::BadAction {
            url: self.url.clone(),
            key: *key,
            message,
        };
        let rec: ActionRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if rec.key != *key {
            return Err(bad(format!("it names step key {}", rec.key.short())));
        }
        Ok(Some(rec))
    }

    /// True when the remote has an action record for `key`.
    pub fn has_action(&self, key: &StepKey) -> Result<bool, RemoteError> {
        self.exists(&self.action_path(key))
    }

    /// Download the result of `key` into `store`: every output tree and the objects it names
    /// that the local store lacks, each verified, then the action record. `Ok(None)` when the
    /// remote does not have it (or lacks one of its objects).
    pub fn fetch(
        &self,
        store: &Store,
        key: &StepKey,
    ) -> Result<Option<(ActionRecord, Transfer)>, RemoteError> {
        let t0 = Instant::now();
        let Some(rec) = self.action(key)? else {
            return Ok(None);
        };
        let mut moved = Transfer::default();
        let mut take = |d: &ObjectDigest| -> Result<Option<Vec<u8>>, RemoteError> {
            let Some(bytes) = self.get_object(d)? else {
                return Ok(None);
            };
            moved.objects += 1;
            moved.bytes += bytes.len() as u64;
            Ok(Some(bytes))
        };
        for tree_digest in rec.outputs.values() {
            if store.tree_complete(tree_digest) {
                continue;
            }
            let tree_bytes = match store.read_object(tree_digest) {
                Ok(b) => b,
                Err(_) => match take(tree_digest)? {
                    Some(b) => b,
                    None => return Ok(None),
                },
            };
            let tree: Tree =
                serde_json::from_slice(&tree_bytes).map_err(|e| RemoteError::BadAction {
                    url: self.url.clone(),
                    key: *key,
                    message: format!("tree {} does not parse: {e}", tree_digest.short()),
                })?;
            for e in &tree.entries {
                if store.has_object(&e.digest) {
                    continue;
                }
                let Some(bytes) = take(&e.digest)? else {
                    return Ok(None);
                };
                store.put_bytes(&bytes)?;
            }
            store.put_bytes(&tree_bytes)?;
        }
        store.put_action(&rec)?;
        moved.millis = t0.elapsed().as_millis() as u64;
        Ok(Some((rec, moved)))
    }

    /// Upload the result of `key` from `store`: the objects the remote lacks, then the action.
    pub fn push(&self, store: &Store, key: &StepKey) -> Result<Transfer, RemoteError> {
        let t0 = Instant::now();
        let rec = store
            .get_action(key)?
            .ok_or(RemoteError::NotBuilt { key: *key })?;
        let mut moved = Transfer::default();
        let mut send = |d: &ObjectDigest| -> Result<(), RemoteError> {
            let path = self.object_path(d);
            if self.exists(&path)? {
                return Ok(());
            }
            let bytes = store.read_object(d)?;
            moved.objects += 1;
            moved.bytes += bytes.len() as u64;
            self.put(&path, bytes)
        };
        for tree_digest in rec.outputs.values() {
            let tree = store.read_tree(tree_digest)?;
            for e in &tree.entries {
                send(&e.digest)?;
            }
            send(tree_digest)?;
        }
        let json = serde_json::to_vec_pretty(&rec).expect("action record serializes");
        self.put(&self.action_path(key), json)?;
        moved.millis = t0.elapsed().as_millis() as u64;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(store: &Store, content: &[(&str, &[u8])]) -> StepKey {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in content {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let tree = store.put_tree_copy(dir.path()).unwrap();
        let key = StepKey::of(format!("{content:?}").as_bytes());
        store
            .put_action(&ActionRecord {
                key,
                step: "s".into(),
                op: "exec".into(),
                outputs: [("out".to_string(), tree)].into(),
                metrics: Default::default(),
                preimage: serde_json::json!({}),
                created_unix_ms: 1,
                duration_ms: 2,
                run_id: "r".into(),
            })
            .unwrap();
        key
    }

    /// Two stores (two machines) and a directory remote.
    struct World {
        a: Store,
        b: Store,
        remote: Remote,
        dir: tempfile::TempDir,
        _stores: tempfile::TempDir,
    }

    impl World {
        fn new() -> World {
            let stores = tempfile::tempdir().unwrap();
            let dir = tempfile::tempdir().unwrap();
            World {
                a: Store::open(stores.path().join("a")).unwrap(),
                b: Store::open(stores.path().join("b")).unwrap(),
                remote: Remote::open(dir.path().to_str().unwrap()).unwrap(),
                dir,
                _stores: stores,
            }
        }
    }

    #[test]
    fn a_result_pushed_from_one_store_is_fetched_whole_into_another() {
        let w = World::new();
        let (sa, sb, remote) = (&w.a, &w.b, &w.remote);
        let key = built(sa, &[("w.bin", b"weights"), ("c.json", b"{}")]);
        assert!(remote.fetch(sb, &key).unwrap().is_none());
        let up = remote.push(sa, &key).unwrap();
        assert_eq!(
            (up.objects, up.bytes),
            (
                3,
                7 + 2
                    + sa.read_object(&sa.read_action(&key).unwrap().unwrap().outputs["out"])
                        .unwrap()
                        .len() as u64
            )
        );
        // Idempotent: nothing is sent twice.
        assert_eq!(remote.push(sa, &key).unwrap().objects, 0);
        assert!(remote.has_action(&key).unwrap());
        let (rec, down) = remote.fetch(sb, &key).unwrap().unwrap();
        assert_eq!(down.objects, 3);
        let got = sb
            .get_action(&key)
            .unwrap()
            .expect("complete in the second store");
        assert_eq!(got.outputs, rec.outputs);
        assert_eq!(
            sb.read_tree(&rec.outputs["out"]).unwrap(),
            sa.read_tree(&rec.outputs["out"]).unwrap()
        );
    }

    #[test]
    fn a_corrupt_or_truncated_remote_object_is_refused() {
        let w = World::new();
        let (sa, sb, remote, r) = (&w.a, &w.b, &w.remote, &w.dir);
        let key = built(sa, &[("w.bin", b"the weights of a model")]);
        remote.push(sa, &key).unwrap();
        let tree = sa
            .read_tree(&sa.read_action(&key).unwrap().unwrap().outputs["out"])
            .unwrap();
        let blob = r
            .path()
            .join("objects")
            .join(tree.entries[0].digest.to_hex());
        std::fs::write(&blob, b"the weights of a").unwrap();
        let err = remote.fetch(sb, &key).unwrap_err();
        assert!(
            matches!(err, RemoteError::Corrupt { size: 16, .. }),
            "{err}"
        );
        assert!(sb.read_action(&key).unwrap().is_none(), "nothing recorded");
        assert!(!sb.has_object(&tree.entries[0].digest));
        // The bad object was deleted from the remote: now a miss, and the next push repairs it.
        assert!(!blob.exists());
        assert!(remote.fetch(sb, &key).unwrap().is_none());
        assert_eq!(remote.push(sa, &key).unwrap().objects, 1);
        assert!(remote.fetch(sb, &key).unwrap().is_some());
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(redact("s3://AKIA:secret@bucket/p"), "s3://bucket/p");
        assert_eq!(redact("s3://bucket/p"), "s3://bucket/p");
        let e = Remote::open("nope://x").unwrap_err().to_string();
        assert!(e.contains("nope://x"), "{e}");
    }
}
