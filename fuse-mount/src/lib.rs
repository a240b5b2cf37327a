//! FUSE adapter for ds (not built yet; see the FUSE issue).
//!
//! What goes here: a store-level VFS (lookup, getattr, readdir, read, write,
//! setattr, rename, …) over `ds-store` that tests drive directly, and a thin
//! `fuser` adapter over it. Snapshots mount read-only and lazily (a read
//! fetches only the chunks it touches); a workspace mounts read-write with a
//! dirty layer at chunk granularity, so the next snapshot re-chunks only the
//! changed byte ranges. This crate is empty until that work lands: it holds
//! no placeholder behaviour.
#![forbid(unsafe_code)]
