//! The store's error type. Every I/O failure names the path it happened on.

use std::io;
use std::path::PathBuf;

use crate::digest::ObjectDigest;
use crate::lock::LockError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` is not valid JSON for a {what}", path.display())]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the store at `{}` has format version {found}, this forge uses {expected}",
        root.display()
    )]
    Format {
        root: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("object {digest} is missing from the store")]
    MissingObject { digest: ObjectDigest },
    #[error("object {digest} is corrupt: its content hashes to {actual}")]
    CorruptObject {
        digest: ObjectDigest,
        actual: ObjectDigest,
    },
    #[error("`{}` is a symbolic link; step outputs must be regular files and directories", path.display())]
    Symlink { path: PathBuf },
    #[error(transparent)]
    Lock(#[from] LockError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attach a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            path: path.into(),
            source,
        })
    }
}
