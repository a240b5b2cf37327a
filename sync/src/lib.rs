//! The client end of ds sync: push, pull and clone between a local
//! `ds-store` store and a hub, over the gRPC protocol of `ds-proto`.
//!
//! Why a crate of its own: the CLI and runners sync workspaces; neither
//! may link the hub's server (object storage, S3 clients, token files).
//! This crate depends on the store and the protocol only.
//!
//! Both directions first compare root hashes, then descend the object
//! graph one level per round trip ([`descent`]), asking only about
//! children of objects the receiving side lacks. Objects are written
//! children-first, so an interrupted transfer leaves both sides holding
//! only complete subtrees, and a retry skips everything that landed.
//!
//! Every store call (RocksDB lookups, pack reads and writes, ref files)
//! runs off the async executor ([`blocking`]), so a daemon that syncs
//! keeps its heartbeats and other connections alive meanwhile.
#![forbid(unsafe_code)]

pub mod descent;
mod error;
pub mod pull;
pub mod push;
pub mod remote;
pub mod tasks;

use ds_format::ObjectId;
pub use error::{Result, Side, SyncError};
pub use pull::{fetch_objects, fetch_trees, pull};
pub use push::push;
pub use remote::{Bearer, Remote, channel};
use serde::Serialize;

/// What a push or pull did (the `--json` output of the CLI).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub workspace: String,
    /// The snapshot the workspace is at afterwards, on both sides.
    pub snapshot: ObjectId,
    /// What the receiving side's ref pointed at before (null: nothing).
    pub previous: Option<ObjectId>,
    pub up_to_date: bool,
    pub forced: bool,
    /// Bytes on the wire for objects (packs on push, stored objects on pull).
    pub bytes_sent: u64,
    pub objects_sent: u64,
    pub chunks_sent: u64,
    /// Chunks the descent found the receiving side already held.
    pub chunks_skipped: u64,
    pub packs_sent: u64,
    pub round_trips: u64,
}

/// What the client says it is doing, for progress bars.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// Asked the other side about `asked` objects at depth `level`.
    Level { level: usize, asked: usize },
    /// About to transfer `objects` objects, `chunks` of them chunks.
    Transfer { objects: u64, chunks: u64 },
    /// Moved `bytes` more bytes and `chunks` more chunks.
    Moved { bytes: u64, chunks: u64 },
}

/// A progress callback.
pub type Progress<'a> = &'a (dyn Fn(Event) + Sync);

/// Selects rustls's process-wide crypto provider (ring), which tonic's TLS
/// uses; a process that also links another provider (the hub's S3 client
/// brings aws-lc-rs) must choose, and rustls will not guess. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where workspace `ws` of the local store points, read off the executor.
pub(crate) async fn local_head(
    store: &std::sync::Arc<ds_store::Store>,
    ws: &ds_store::refs::WorkspaceName,
) -> Result<Option<ObjectId>> {
    let (st, ws) = (store.clone(), ws.clone());
    blocking(move || Ok(st.refs().get(&ws)?)).await
}

/// Runs store work on tokio's blocking pool, off the executor.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}
