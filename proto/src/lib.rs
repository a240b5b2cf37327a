//! The ds sync protocol (not built yet; see the hub and sync issue).
//!
//! What goes here: versioned gRPC messages and services (tonic + prost, with
//! a pure-Rust proto compiler) for exchanging root hashes, descending Merkle
//! trees one batched level per request, streaming size-capped pack uploads,
//! chunk and pack-range downloads, and compare-and-swap ref updates. Empty
//! until that work lands: it holds no placeholder behaviour.
#![forbid(unsafe_code)]
