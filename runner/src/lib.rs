//! The ds runner (not built yet).
//!
//! What goes here: an outbound connection to the hub with a per-runner
//! token; pulling only missing chunks; mounting the workspace; running the
//! workload in a container (bollard, or a plain process where no engine
//! exists); recording runs and pushing their snapshots with provenance.
//! Empty until that work lands: it holds no placeholder behaviour. It
//! builds on `ds-sync` (pull and push) and `ds-fuse` (mounts as a
//! library), never on the hub's server crate; `scripts/test.sh` checks.
#![forbid(unsafe_code)]
