//! The hub crate's one error type.
//!
//! Rules: variants say who is at fault, because [`crate::service`] turns
//! each into a gRPC status in one place (`status`): what a client sent
//! that the hub will not take is [`HubError::Refused`] (invalid
//! argument), a lost ref race is [`HubError::RefConflict`] (failed
//! precondition), bytes in the bucket that are not what a hub wrote are
//! [`HubError::Corrupt`] (data loss), an unreachable bucket is
//! [`HubError::Storage`] (unavailable), and the rest is internal. The
//! store's own errors keep their variants ([`HubError::Store`]).

use ds_format::ObjectId;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error("object storage: {0}")]
    Storage(#[from] object_store::Error),
    #[error("{0}")]
    Store(#[from] ds_store::StoreError),
    #[error("{0}")]
    Format(#[from] ds_format::FormatError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the storage at {url} does not support conditional writes ({why}); the hub needs them so \
         that two hubs never lose a ref update (AWS S3, MinIO, Ceph and moto support them; \
         Garage does not)"
    )]
    NoConditionalWrites { url: String, why: String },
    #[error("workspace {workspace} on the hub is at {}, not at {} as expected", show(.actual), show(.expected))]
    RefConflict {
        workspace: String,
        expected: Option<ObjectId>,
        actual: Option<ObjectId>,
    },
    #[error("invalid storage URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    /// What a client sent is not acceptable (a bad pack, id or name).
    #[error("{0}")]
    Refused(String),
    /// An object in the bucket is not what a hub wrote.
    #[error("{0}")]
    Corrupt(String),
    /// A runner or task port the request needs cannot be reached (the
    /// relay answers 502).
    #[error("{0}")]
    Unreachable(String),
    /// Hub gc condemned packs after answers a request relied on: start
    /// over (ABORTED).
    #[error("{0}")]
    Stale(String),
    /// Another hub gc holds the lease, or the gc state moved under this one.
    #[error("{0}")]
    GcBusy(String),
    /// A bug or a failed task in the hub.
    #[error("{0}")]
    Internal(String),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The hub refused or failed a request; its message says why.
    #[error("{}", .0.message())]
    Rpc(Box<tonic::Status>),
}

impl From<tonic::Status> for HubError {
    fn from(s: tonic::Status) -> Self {
        HubError::Rpc(Box::new(s))
    }
}

fn show(id: &Option<ObjectId>) -> String {
    match id {
        Some(i) => i.short(),
        None => "nothing (no such workspace)".into(),
    }
}

pub type Result<T, E = HubError> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| HubError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
