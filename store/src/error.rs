use std::io;
use std::path::{Path, PathBuf};

use ds_format::{FormatError, ObjectId, PackId};
use thiserror::Error;

/// Every error the storage engine reports. Variants are semantic (what went
/// wrong for the user), not per-dependency.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("index (RocksDB) at {}: {msg}", path.display())]
    Index { path: PathBuf, msg: String },
    #[error("no ds store at {} (run `ds init`, or pass --store / set DS_STORE)", .0.display())]
    NotAStore(PathBuf),
    #[error("{} exists and is not an empty directory; refusing to create a store there", .0.display())]
    NotEmpty(PathBuf),
    #[error("store {} is locked by another ds process", .0.display())]
    Locked(PathBuf),
    #[error("{kind} {id} is missing from the store")]
    Missing { kind: &'static str, id: ObjectId },
    #[error("{kind} {id} is damaged{}: {why}", pack.map(|p| format!(" (in pack {p})")).unwrap_or_default())]
    Damaged {
        kind: &'static str,
        id: ObjectId,
        pack: Option<PackId>,
        why: String,
    },
    #[error("pack {pack} is damaged: {why}")]
    DamagedPack { pack: PackId, why: String },
    #[error("invalid workspace name {name:?}: {why}")]
    BadWorkspace { name: String, why: &'static str },
    #[error("workspace {0:?} has no snapshots")]
    UnknownWorkspace(String),
    #[error("no snapshot matches {0:?}")]
    UnknownSnapshot(String),
    #[error("snapshot prefix {prefix:?} is ambiguous: it matches {count} snapshots")]
    Ambiguous { prefix: String, count: usize },
    #[error(
        "workspace {name:?} moved while this operation ran (expected {expected}, found {found}); nothing was changed"
    )]
    RefConflict {
        name: String,
        expected: String,
        found: String,
    },
    #[error("{0:?} does not exist in the snapshot")]
    NoSuchPath(String),
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn index(path: &Path, e: impl std::fmt::Display) -> Self {
        StoreError::Index {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    }
}

/// Attaches the path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
