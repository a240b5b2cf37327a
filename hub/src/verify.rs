//! The hub never trusts a client: before a pack is acknowledged, every
//! object in it is decompressed and rehashed against its id, and every tree
//! node's children must already be on the hub or earlier in the same pack —
//! which keeps the sync invariant (holding an object means holding its
//! whole subtree) true whatever a client sends. The checks themselves are
//! [`ds_format::check::verify_pack`], where the fuzzers reach them.

use ds_format::PackId;
use ds_format::check;
use ds_format::pack::PackEntry;
use ds_store::index::Index;

use crate::error::{HubError, Result};

/// A pack that passed every check.
#[derive(Debug)]
pub struct Verified {
    pub entries: Vec<PackEntry>,
    pub trailer: Vec<u8>,
}

/// Checks `data` is the pack `claimed` against what `index` says the hub
/// holds. An index read error counts as "not held", so it refuses the pack
/// rather than accept a dangling reference.
pub fn verify_pack(claimed: &PackId, data: &[u8], index: &Index) -> Result<Verified> {
    let mut held = |c: &ds_format::ObjectId| index.contains(c).unwrap_or(false);
    let (entries, tstart) = check::verify_pack(claimed, data, &mut held)
        .map_err(|e| HubError::Refused(format!("pack {} refused: {e}", claimed.short())))?;
    Ok(Verified {
        entries,
        trailer: data[tstart..].to_vec(),
    })
}
