//! The ds object model as bytes: identifiers, the chunker, and the canonical
//! encodings of file manifests, directory trees, snapshots, packs and the store
//! config.
//!
//! This crate exists so that everything that *decodes untrusted bytes* lives in
//! one place with no I/O, no RocksDB and no threads: it is what the fuzzers link
//! against, and what the hub (later) uses to check what clients send. The
//! storage engine (`ds-store`) builds on it.
//!
//! Invariants:
//! - Every encoding is canonical: one logical value has exactly one byte form,
//!   and decoders reject anything else (trailing bytes, unsorted entries,
//!   non-minimal varints), so an id names exactly one value.
//! - Every hashed encoding starts with a type tag and a format version, and node
//!   ids are BLAKE3 in derive-key mode with a per-kind context, so a chunk can
//!   never be confused with a tree node.
//! - Decoders never allocate more than the input justifies and never panic.
#![forbid(unsafe_code)]

pub mod check;
pub mod chunker;
pub mod codec;
pub mod config;
mod error;
pub mod htree;
pub mod id;
pub mod manifest;
pub mod name;
pub mod pack;
pub mod run;
pub mod snapshot;
pub mod time;
pub mod tree;

pub use error::FormatError;
pub use id::{ObjectId, ObjectKind, PackId};

/// Result alias for this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
