//! The sync client's one error type.
//!
//! Rules: a variant says who must act. [`SyncError::Diverged`] and
//! [`SyncError::NoWorkspace`] are refusals the user resolves (pull, push
//! --force, a typo); [`SyncError::Rpc`] carries the hub's own status, code
//! and message intact; [`SyncError::Protocol`] means the hub broke the
//! protocol (sent what was not asked for, or bytes that do not hash to
//! their id) and nothing it sent was kept; [`SyncError::Store`] is the
//! local store's own error, unflattened. No variant turns a cause into a
//! string where the cause has a type.

use ds_format::ObjectId;

/// Which side of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This machine's store.
    Local,
    /// The hub.
    Hub,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Local => "this store",
            Side::Hub => "the hub",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("{0}")]
    Store(#[from] ds_store::StoreError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("hub URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("cannot reach the hub at {url}: {why}")]
    Connect { url: String, why: String },
    #[error("the token contains characters an HTTP header cannot carry")]
    BadToken,
    #[error("there is no workspace {workspace:?} in {side}")]
    NoWorkspace { workspace: String, side: Side },
    /// The receiving side has history the sent head does not descend from.
    #[error("{message}")]
    Diverged {
        workspace: String,
        ours: ObjectId,
        theirs: ObjectId,
        message: String,
    },
    /// The hub sent something the protocol does not allow; none of it was kept.
    #[error("the hub broke the protocol: {0}")]
    Protocol(String),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The hub refused or failed a request; its message says why.
    #[error("{}", .0.message())]
    Rpc(Box<tonic::Status>),
    /// A bug or a dead worker thread in this process.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<tonic::Status> for SyncError {
    fn from(s: tonic::Status) -> Self {
        SyncError::Rpc(Box::new(s))
    }
}

impl From<tokio::task::JoinError> for SyncError {
    fn from(e: tokio::task::JoinError) -> Self {
        SyncError::Internal(format!("a blocking store task failed: {e}"))
    }
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;
