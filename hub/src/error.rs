//! The hub crate's one error type.

use ds_format::ObjectId;

#[derive(Debug, thiserror::Error)]
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
    #[error("{0}")]
    Invalid(String),
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
