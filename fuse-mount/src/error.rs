//! The mount library's one error type.
//!
//! Rules: the store's and the VFS's own errors keep their types; a
//! control-socket exchange that goes wrong says which side and why
//! ([`MountError::Control`] for this end, [`MountError::Refused`] for what
//! the mount process answered); every I/O error names its path.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    #[error("{0}")]
    Store(#[from] ds_store::StoreError),
    #[error("{0}")]
    Vfs(#[from] ds_store::vfs::VfsError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} is already a mountpoint", .0.display())]
    AlreadyMounted(PathBuf),
    #[error("mounting on {} (is /dev/fuse available?): {source}", path.display())]
    Fuse {
        path: PathBuf,
        source: std::io::Error,
    },
    /// This end of a control-socket exchange failed.
    #[error("control socket {}: {why}", path.display())]
    Control { path: PathBuf, why: String },
    /// The mount process answered with an error.
    #[error("{0}")]
    Refused(String),
    /// A [`crate::MountHandle`] outlived its mount.
    #[error("{} is no longer mounted", .0.display())]
    Unmounted(PathBuf),
    /// The request is not one this mount can answer.
    #[error("{0}")]
    BadRequest(String),
}

pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T, MountError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T, MountError> {
        self.map_err(|source| MountError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
