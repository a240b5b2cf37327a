//! The ds hub (not built yet; see the hub and sync issue).
//!
//! What goes here: the central server — gRPC sync and task dispatch, packs
//! and refs in object storage through `object_store` (local directory by
//! default, S3-compatible by URL) with conditional writes for refs, a REST
//! API and web UI, and an HTTP relay to tasks on runners. Stateless over its
//! bucket. Empty until that work lands: it holds no placeholder behaviour.
#![forbid(unsafe_code)]
