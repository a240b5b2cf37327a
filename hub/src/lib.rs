//! The ds hub: the server end of sync, and of the task protocol.
//!
//! A hub keeps everything in object storage ([`storage`]: packs with their
//! index objects, refs moved by conditional PUT, token grants), so several
//! hubs can serve one bucket; its local disk holds only a rebuildable
//! [`cache`] of object locations and its admin token. The gRPC [`service`]
//! answers the protocol in `ds-proto`; [`verify`] rehashes every uploaded
//! object before a pack is acknowledged. [`tasks`] queues tasks, hands
//! them to runners under leases and stores their output, all in the
//! bucket. [`web`] serves HTTP on the same listener: the REST API, the web
//! UI, the relay to task ports and `/metrics`; [`rates`] holds every
//! caller to a budget. The client end (push, pull, clone) is the `ds-sync`
//! crate, which does not link this one.
#![forbid(unsafe_code)]

pub mod auth;
mod browse;
pub mod cache;
pub mod conformance;
pub mod docs;
pub mod error;
pub mod gc;
mod history;
pub mod limits;
pub mod metrics;
pub mod rates;
mod runs;
pub mod server;
pub mod service;
pub mod storage;
pub mod tasks;
pub mod verify;
pub mod web;

pub use error::{HubError, Result};

/// Selects rustls's process-wide crypto provider (ring). Both ring (tonic)
/// and aws-lc-rs (object_store's S3 client) are linked, and rustls will not
/// choose between them by itself. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
