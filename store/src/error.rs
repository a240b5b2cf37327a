//! The storage engine's one error type.
//!
//! Rules: a variant names what went wrong for the caller, not which
//! dependency failed, so the hub can map each to the right gRPC status in
//! one place and the CLI can tell "you asked for something impossible"
//! ([`StoreError::BadInput`]) from "someone else is in the way"
//! ([`StoreError::Conflict`], [`StoreError::Locked`],
//! [`StoreError::RefConflict`]), "the bytes on disk are wrong"
//! ([`StoreError::Corrupt`], [`StoreError::Damaged`]) and "this is a bug"
//! ([`StoreError::Internal`]). A cause with a type keeps it (`#[from]`);
//! messages name the path or id involved and, where the user can act, what
//! to do. The enum is `#[non_exhaustive]`: match the variants you handle.

use std::io;
use std::path::{Path, PathBuf};

use ds_format::{FormatError, ObjectId, PackId};
use thiserror::Error;

/// Every error the storage engine reports. Variants are semantic (what went
/// wrong for the user), not per-dependency.
#[derive(Debug, Error)]
#[non_exhaustive]
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
    /// The request cannot be done as asked (a bad path, spec or size).
    #[error("{0}")]
    BadInput(String),
    /// Another process or a concurrent change is in the way.
    #[error("{0}")]
    Conflict(String),
    /// Bytes on disk (a ref file, a dirty layer) are not what ds wrote.
    #[error("{0}")]
    Corrupt(String),
    /// The store was opened with too little (or the wrong) access.
    #[error("{0}")]
    WrongAccess(&'static str),
    /// A mount operation failed (an errno, and a detail to log).
    #[error("{0}")]
    Mount(#[from] crate::vfs::VfsError),
    /// An object the store lacks could not be had from where a lazy store
    /// fetches them ([`crate::Lazy`]).
    #[error("fetching {id} lazily: {why}")]
    Unavailable { id: ObjectId, why: String },
    /// A worker thread died or stopped: a bug, or the consequence of an
    /// error reported first.
    #[error("{0}")]
    Internal(String),
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
