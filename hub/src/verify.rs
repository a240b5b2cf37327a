//! The hub never trusts a client: before a pack is acknowledged, every
//! object in it is decompressed and rehashed against its id, and every tree
//! node's children must already be on the hub or earlier in the same pack —
//! which keeps the sync invariant (holding an object means holding its
//! whole subtree) true whatever a client sends.

use std::collections::HashSet;

use ds_format::pack::{FOOTER_SIZE, HEADER, PackEntry, decode_footer, decode_trailer};
use ds_format::{ObjectId, ObjectKind, PackId};
use ds_store::dag;

use crate::error::{HubError, Result};

/// A pack that passed every check.
#[derive(Debug)]
pub struct Verified {
    pub entries: Vec<PackEntry>,
    pub trailer: Vec<u8>,
}

/// Checks `data` is the pack `claimed`, every object matches its id, and no
/// tree node points at something missing (`held` answers for the hub).
pub fn verify_pack(
    claimed: &PackId,
    data: &[u8],
    held: &dyn Fn(&ObjectId) -> Result<bool>,
) -> Result<Verified> {
    let bad = |why: String| HubError::Invalid(format!("pack {} refused: {why}", claimed.short()));
    let len = data.len() as u64;
    if data.len() < HEADER.len() + FOOTER_SIZE || data[..HEADER.len()] != HEADER {
        return Err(bad("not a ds pack (bad header or too short)".into()));
    }
    let tlen = decode_footer(&data[data.len() - FOOTER_SIZE..], len)
        .map_err(|e| bad(e.to_string()))?;
    let trailer = &data[data.len() - tlen as usize..];
    let (id, entries) = decode_trailer(trailer, len).map_err(|e| bad(e.to_string()))?;
    if id != *claimed {
        return Err(bad(format!("its trailer hashes to {id}")));
    }
    let mut here: HashSet<ObjectId> = HashSet::with_capacity(entries.len());
    let mut kids = Vec::new();
    for e in &entries {
        let start = e.offset as usize;
        let stored = data[start..start + e.stored_len as usize].to_vec();
        let raw = ds_store::decode_stored(e.stored, stored, e.raw_len)
            .map_err(|why| bad(format!("object {} cannot be decoded: {why}", e.id)))?;
        if e.kind.hash(&raw) != e.id {
            return Err(bad(format!(
                "object {} ({}) does not match its hash",
                e.id,
                e.kind.name()
            )));
        }
        if e.kind != ObjectKind::Chunk {
            kids.clear();
            dag::children(&e.id, e.kind, &raw, &mut kids).map_err(|x| bad(x.to_string()))?;
            for (c, _) in &kids {
                if !here.contains(c) && !held(c)? {
                    return Err(bad(format!(
                        "{} {} refers to {c}, which the hub does not hold and which is not \
                         earlier in the pack (upload children first)",
                        e.kind.name(),
                        e.id
                    )));
                }
            }
        }
        here.insert(e.id);
    }
    Ok(Verified {
        entries,
        trailer: trailer.to_vec(),
    })
}
