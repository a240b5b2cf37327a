use thiserror::Error;

/// Everything that can be wrong with bytes handed to a decoder.
#[derive(Debug, Error)]
pub enum FormatError {
    /// The input ended before the value did.
    #[error("truncated {what}: needed {needed} more bytes")]
    Truncated { what: &'static str, needed: usize },
    /// The bytes are well-formed up to a point, then violate the format.
    #[error("corrupt {what}: {why}")]
    Corrupt { what: &'static str, why: String },
    /// A format version this build does not understand.
    #[error("unsupported {what} version {version} (this ds understands {supported})")]
    Version {
        what: &'static str,
        version: u32,
        supported: u32,
    },
    /// A name that may not appear in a tree (`..`, `/`, NUL, empty, too long).
    #[error("invalid entry name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    /// Bad configuration values.
    #[error("invalid store config: {0}")]
    Config(String),
}

impl FormatError {
    pub(crate) fn corrupt(what: &'static str, why: impl Into<String>) -> Self {
        FormatError::Corrupt {
            what,
            why: why.into(),
        }
    }
}
