//! FUSE adapter for ds: serves a [`ds_store::vfs::Vfs`] through the kernel,
//! and runs a mount's life as a library ([`daemon`], [`control`]) for the
//! `ds` binary and runners alike.
//!
//! Why so thin: every filesystem decision (what a name resolves to, which
//! bytes a read returns, what the dirty layer records, how a snapshot is
//! taken) lives in the store-level VFS, which tests drive without a kernel.
//! This crate only translates kernel requests into VFS calls and errnos
//! back, and keeps per-open directory listings so that a large directory is
//! listed once per `opendir`, not once per `readdir` batch.
//!
//! Concurrency: the VFS sits behind one mutex. A read holds it only to plan
//! which chunks and overlay ranges it needs; fetching and verifying chunks
//! happens outside it, so the session's worker threads read in parallel.
//! Read-only mounts let the kernel keep file pages cached across opens
//! (snapshot content never changes).
#![forbid(unsafe_code)]

pub mod control;
pub mod daemon;
mod error;
mod fs;
mod kernel;

pub use daemon::{Config, MountHandle, Mounted, Source};
pub use error::MountError;
pub use fs::{DsFs, MountOptions};
pub use fuser::SessionUnmounter;
pub use kernel::{is_ds_mount, mount, mount_device, mount_source, set_readahead};
