//! The runner's one error type. A task's own failures (a command that does
//! not exist, a conflicting push) are not errors of the runner: they end
//! the task and are reported on it ([`crate::task`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    #[error("{0}")]
    Sync(#[from] ds_sync::SyncError),
    #[error("{0}")]
    Store(#[from] ds_store::StoreError),
    #[error("{0}")]
    Mount(#[from] ds_fuse::MountError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The hub refused the runner or broke off its stream.
    #[error("{}", .0.message())]
    Rpc(Box<tonic::Status>),
    /// The hub sent what the task protocol does not allow.
    #[error("the hub broke the task protocol: {0}")]
    Protocol(String),
    #[error("bad runner setting: {0}")]
    Config(String),
    /// A task could not be set up or finished; the message says which step.
    #[error("{step}: {why}")]
    Task { step: &'static str, why: String },
}

impl From<tonic::Status> for RunnerError {
    fn from(s: tonic::Status) -> Self {
        RunnerError::Rpc(Box::new(s))
    }
}

pub type Result<T, E = RunnerError> = std::result::Result<T, E>;

/// Adds the path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| RunnerError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
