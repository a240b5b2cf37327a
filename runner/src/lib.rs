//! The ds runner (not built yet).
//!
//! What goes here: an outbound connection to the hub with a per-runner
//! token; pulling only missing chunks; mounting the workspace; running the
//! workload in a container (bollard, or a plain process where no engine
//! exists); recording runs and pushing their snapshots with provenance.
//! Empty until that work lands: it holds no placeholder behaviour.
#![forbid(unsafe_code)]
