//! The hub never trusts a client: before a pack is acknowledged, every
//! object in it is decompressed and rehashed against its id, and every tree
//! node's children must already be on the hub or earlier in the same pack —
//! which keeps the sync invariant (holding an object means holding its
//! whole subtree) true whatever a client sends. The checks themselves are
//! [`ds_format::check::verify_pack`], where the fuzzers reach them.
//!
//! "Already on the hub" means in a pack hub gc lets the hub rely on (see
//! `gc`); the packs leaned on are returned so that the upload can check
//! them again, afresh, just before it commits.

use std::collections::HashSet;

use ds_format::PackId;
use ds_format::check;
use ds_format::pack::PackEntry;
use ds_store::index::Index;

use crate::cache::PackMemo;
use crate::error::{HubError, Result};
use crate::gc::Sight;

/// A pack that passed every check.
#[derive(Debug)]
pub struct Verified {
    pub entries: Vec<PackEntry>,
    pub trailer: Vec<u8>,
    /// The packs holding the children it references outside itself.
    pub leaned_on: HashSet<PackId>,
}

/// Checks `data` is the pack `claimed` against what `index` says the hub
/// holds and `sight` lets it rely on. An index read error counts as "not
/// held", so it refuses the pack rather than accept a dangling reference.
pub fn verify_pack(
    claimed: &PackId,
    data: &[u8],
    index: &Index,
    sight: &Sight,
) -> Result<Verified> {
    let mut leaned_on = HashSet::new();
    let mut packs = PackMemo::default();
    // A child the hub held until gc took its pack away: the client's
    // answers are stale, not its pack bad.
    let mut hidden_by_gc = false;
    let mut held = |c: &ds_format::ObjectId| {
        let Ok(Some(loc)) = index.get(c) else {
            return false;
        };
        let ok = packs.held_at(index, sight, &loc).unwrap_or(false);
        if ok {
            leaned_on.insert(loc.pack);
        } else {
            hidden_by_gc = true;
        }
        ok
    };
    let checked = check::verify_pack(claimed, data, &mut held);
    let (entries, tstart) = checked.map_err(|e| {
        if hidden_by_gc {
            HubError::Stale(format!(
                "pack {} refers to objects whose packs hub gc condemned since this push asked \
                 ({e}); push again",
                claimed.short()
            ))
        } else {
            HubError::Refused(format!("pack {} refused: {e}", claimed.short()))
        }
    })?;
    Ok(Verified {
        entries,
        trailer: data[tstart..].to_vec(),
        leaned_on,
    })
}
