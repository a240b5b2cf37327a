//! The dataset crate's one error type.
//!
//! Rules: what the user asked for that cannot be done (a bad URL, missing
//! credentials, a workspace that is not a dataset) is [`DatasetError::BadInput`];
//! what the object store answered is [`DatasetError::S3`], with the
//! operation, the target and the store's own code and message, so that
//! wrong credentials or a missing bucket read as such; transport failures
//! that outlived every retry are [`DatasetError::Http`]. The store's errors
//! keep their variants.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    #[error("{0}")]
    BadInput(String),
    #[error("S3 {op} {target}: HTTP {status} {code}: {message}")]
    S3 {
        op: &'static str,
        target: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("S3 {op} {target}: {source}")]
    Http {
        op: &'static str,
        target: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("S3 {op} {target}: unexpected reply: {why}")]
    Protocol {
        op: &'static str,
        target: String,
        why: String,
    },
    #[error("{0}")]
    Store(#[from] ds_store::StoreError),
    #[error("{0}")]
    Format(#[from] ds_format::FormatError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl DatasetError {
    /// The store's error code (`NoSuchBucket`, `AccessDenied`, …), if the
    /// store answered with one.
    pub fn s3_code(&self) -> Option<&str> {
        match self {
            DatasetError::S3 { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth trying again: a transport failure, a throttle or a server error.
    pub fn is_transient(&self) -> bool {
        match self {
            DatasetError::Http { .. } => true,
            DatasetError::S3 { status, code, .. } => {
                *status >= 500 || *status == 429 || code == "SlowDown" || code == "RequestTimeout"
            }
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
