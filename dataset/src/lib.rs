//! Datasets: S3 buckets mirrored as versioned, deduplicated snapshots.
//!
//! Why a crate of its own: a mirror is a client of object storage (as the
//! hub is) and a writer of the local store (as a snapshot is), and neither
//! the store nor the sync client should know S3. A dataset is a workspace
//! whose snapshots carry `ds.kind=dataset`: log, diff, mount, push, pull,
//! clone and gc treat it as any workspace. See `mirror.rs` for the
//! algorithm, `keymap.rs` for how keys become paths, and `tree.rs` for
//! what a dataset tree records.
#![forbid(unsafe_code)]

pub mod big;
mod error;
pub mod export;
pub mod fetch;
pub mod journal;
pub mod keymap;
pub mod mirror;
pub mod s3;
pub mod source;
pub mod tree;

pub use error::{DatasetError, Result};
pub use mirror::{MirrorOptions, MirrorReport, mirror};
pub use source::SourceUrl;
