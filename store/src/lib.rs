//! The ds storage engine: turns directories into snapshots and back.
//!
//! Why this crate exists: everything above it (the CLI, FUSE mounts, the hub
//! and runners) needs one durable, deduplicating object store with a small
//! synchronous API. It owns the on-disk layout, the chunking pipeline, pack
//! files, the RocksDB index and stat cache, refs, and the operations built on
//! them (snapshot, restore, diff, verify, gc). It is sync and uses threads
//! (rayon plus a pack-writer thread), never an async runtime.
//!
//! Durability contract (see ARCHITECTURE.md): a pack is written under a
//! temporary name, fsynced, renamed into place and its directory fsynced;
//! only then are its objects added to the index (or, for a read-write
//! mount appending without the index, to the journal); only after the index
//! is synced (the journal fsynced) does a ref move. A crash at any point
//! leaves only unreferenced data, which `gc` removes. Every object read is
//! rehashed against its id.
// One `unsafe` call, and only that: mapping a committed pack read-only
// (`packs::LocalPacks::map_file`, with its safety argument).
#![deny(unsafe_code)]

pub mod dag;
pub mod deep;
pub mod diff;
mod error;
pub mod gc;
pub mod index;
pub mod ingest;
pub mod journal;
pub mod layout;
pub mod meta;
pub mod pack_conformance;
pub mod packs;
pub mod progress;
pub mod refs;
pub mod resolve;
pub mod restore;
pub mod runs;
mod store;
pub mod stream;
pub mod txn;
pub mod verify;
pub mod vfs;
pub mod writer;

pub use ds_format as format;
pub use error::{IoContext, StoreError};
pub use store::{Access, Appender, InitOptions, Lazy, Store, decode_stored};

/// Result alias for this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
