//! forge-cache: the content-addressed store under `.forge/`.
//!
//! It knows nothing of ML or of pipelines: it stores blobs and directory trees by their blake3
//! digest, maps step keys to the outputs they produced (the action cache), keeps run records,
//! hands out per-step locks, shares results through a remote cache, and checks and cleans itself (`verify`, `gc`). The engine decides
//! *whether* a step runs; this crate decides *where its results live*. See [`store`] for the
//! on-disk layout.

pub mod atomic;
pub mod digest;
pub mod error;
pub mod hashing;
pub mod lock;
pub mod maintenance;
pub mod memo;
pub mod remote;
pub mod runs;
pub mod store;

pub use digest::{Digest, DigestKind, MemoKey, ObjectDigest, StepKey};
pub use error::{Result, StoreError};
pub use hashing::{HashSource, hash_file_uncached};
pub use lock::{Acquired, FileLock, Holder, LockError, LockOptions, Reclaim, pid_alive};
pub use maintenance::{GcReport, VerifyReport};
pub use memo::{Memo, MemoRoot};
pub use remote::{Remote, RemoteError, Transfer};
pub use runs::{RunStep, RunSummary, RunWriter};
pub use store::{ActionRecord, STORE_FORMAT, StepRef, Store, Tree, TreeEntry};
