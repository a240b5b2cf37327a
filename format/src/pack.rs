//! Pack files: many objects appended back to back, with their index in a
//! trailer so that any index can be rebuilt from the packs alone.
//!
//! ```text
//! header   "DSPACK" 0x00 0x01                      8 bytes
//! objects  stored bytes of each object, in order
//! entries  count × 50 bytes: id:32 kind:u8 compression:u8 offset:u64le
//!          stored_len:u32le raw_len:u32le
//! footer   count:u32le entries_hash:32 "DSPKEND1"  44 bytes
//! ```
//!
//! `entries_hash` is the derive-key BLAKE3 of the entries and is also the
//! pack's id, so a pack is named by the objects it holds: a retried upload of
//! the same objects produces the same name. Objects themselves are verified by
//! rehashing their plaintext against their id.

use crate::{FormatError, ObjectId, ObjectKind, PackId, Result};

pub const HEADER: [u8; 8] = *b"DSPACK\x00\x01";
pub const FOOTER_MAGIC: [u8; 8] = *b"DSPKEND1";
pub const ENTRY_SIZE: usize = 50;
pub const FOOTER_SIZE: usize = 44;
/// No object's plaintext or stored form may exceed this.
pub const MAX_OBJECT: u32 = 64 << 20;
/// A trailer describing more objects than this is corrupt.
pub const MAX_ENTRIES: u32 = 4 << 20;

/// How an object's bytes are stored in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stored {
    Raw = 0,
    Zstd = 1,
}

/// Where an object sits inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ObjectId,
    pub kind: ObjectKind,
    pub stored: Stored,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

impl PackEntry {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.push(self.kind as u8);
        out.push(self.stored as u8);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != ENTRY_SIZE {
            return Err(FormatError::Truncated {
                what: "pack entry",
                needed: ENTRY_SIZE.saturating_sub(b.len()),
            });
        }
        let kind = ObjectKind::from_u8(b[32])
            .ok_or_else(|| FormatError::corrupt("pack entry", format!("unknown kind {}", b[32])))?;
        let stored = match b[33] {
            0 => Stored::Raw,
            1 => Stored::Zstd,
            c => {
                return Err(FormatError::corrupt(
                    "pack entry",
                    format!("unknown compression {c}"),
                ));
            }
        };
        let e = PackEntry {
            id: ObjectId::from_slice(&b[..32]).expect("32 bytes"),
            kind,
            stored,
            offset: u64::from_le_bytes(b[34..42].try_into().expect("8")),
            stored_len: u32::from_le_bytes(b[42..46].try_into().expect("4")),
            raw_len: u32::from_le_bytes(b[46..50].try_into().expect("4")),
        };
        if e.stored_len > MAX_OBJECT || e.raw_len > MAX_OBJECT {
            return Err(FormatError::corrupt(
                "pack entry",
                "object larger than the format allows",
            ));
        }
        if e.stored == Stored::Raw && e.stored_len != e.raw_len {
            return Err(FormatError::corrupt(
                "pack entry",
                "raw object with two lengths",
            ));
        }
        Ok(e)
    }
}

fn entries_hash(entries: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("ds 2026-11 pack v1");
    h.update(entries);
    *h.finalize().as_bytes()
}

/// Lays out one pack as it is written: the header, then objects back to
/// back, then the trailer. The one place that decides where each object
/// lies, used by the store's pack writer, gc's repacking and push (which
/// builds packs from stored bytes without recompressing).
#[derive(Debug, Clone)]
pub struct Framing {
    entries: Vec<PackEntry>,
    len: u64,
}

impl Default for Framing {
    fn default() -> Self {
        Framing::new()
    }
}

impl Framing {
    /// A pack whose [`HEADER`] the caller writes first.
    pub fn new() -> Framing {
        Framing {
            entries: Vec::new(),
            len: HEADER.len() as u64,
        }
    }

    /// Bytes of the pack so far (header and objects).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// No object yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Objects so far, in write order.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// Records an object whose `stored_len` stored bytes the caller writes
    /// next, right after everything before it.
    pub fn push(
        &mut self,
        id: ObjectId,
        kind: ObjectKind,
        stored: Stored,
        stored_len: u32,
        raw_len: u32,
    ) {
        self.entries.push(PackEntry {
            id,
            kind,
            stored,
            offset: self.len,
            stored_len,
            raw_len,
        });
        self.len += u64::from(stored_len);
    }

    /// The trailer to write last, the pack's id, and its entries.
    pub fn seal(self) -> (PackId, Vec<u8>, Vec<PackEntry>) {
        let (id, trailer) = encode_trailer(&self.entries);
        (id, trailer, self.entries)
    }
}

/// Encodes the trailer (entries + footer) for objects in write order, and
/// returns it with the pack's id.
pub fn encode_trailer(entries: &[PackEntry]) -> (PackId, Vec<u8>) {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_SIZE + FOOTER_SIZE);
    for e in entries {
        e.encode_into(&mut out);
    }
    let hash = entries_hash(&out);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(&FOOTER_MAGIC);
    (PackId(hash), out)
}

/// Parses the fixed footer; returns the trailer's total length (entries + footer).
pub fn decode_footer(footer: &[u8], pack_len: u64) -> Result<u64> {
    if footer.len() != FOOTER_SIZE {
        return Err(FormatError::Truncated {
            what: "pack footer",
            needed: FOOTER_SIZE.saturating_sub(footer.len()),
        });
    }
    if footer[36..44] != FOOTER_MAGIC {
        return Err(FormatError::corrupt(
            "pack footer",
            "bad magic (truncated or not a pack)",
        ));
    }
    let count = u32::from_le_bytes(footer[..4].try_into().expect("4"));
    if count > MAX_ENTRIES {
        return Err(FormatError::corrupt(
            "pack footer",
            format!("{count} entries"),
        ));
    }
    let len = u64::from(count) * ENTRY_SIZE as u64 + FOOTER_SIZE as u64;
    if len + HEADER.len() as u64 > pack_len {
        return Err(FormatError::corrupt(
            "pack footer",
            "trailer longer than the pack",
        ));
    }
    Ok(len)
}

/// Parses and checks a whole trailer (as located by [`decode_footer`]) of a
/// pack of `pack_len` bytes: hash, bounds, and that objects are in order and
/// do not overlap.
pub fn decode_trailer(trailer: &[u8], pack_len: u64) -> Result<(PackId, Vec<PackEntry>)> {
    if trailer.len() < FOOTER_SIZE {
        return Err(FormatError::Truncated {
            what: "pack trailer",
            needed: FOOTER_SIZE - trailer.len(),
        });
    }
    let split = trailer.len() - FOOTER_SIZE;
    let (entries, footer) = trailer.split_at(split);
    let tlen = decode_footer(footer, pack_len)?;
    if tlen != trailer.len() as u64 {
        return Err(FormatError::corrupt(
            "pack trailer",
            "length disagrees with footer",
        ));
    }
    let hash = entries_hash(entries);
    if footer[4..36] != hash {
        return Err(FormatError::corrupt(
            "pack trailer",
            "entries hash mismatch",
        ));
    }
    let data_end = pack_len - tlen;
    let mut next = HEADER.len() as u64;
    let mut out = Vec::with_capacity(entries.len() / ENTRY_SIZE);
    for b in entries.chunks(ENTRY_SIZE) {
        let e = PackEntry::decode(b)?;
        if e.offset < next {
            return Err(FormatError::corrupt(
                "pack trailer",
                "objects overlap or are out of order",
            ));
        }
        next = e
            .offset
            .checked_add(u64::from(e.stored_len))
            .filter(|end| *end <= data_end)
            .ok_or_else(|| FormatError::corrupt("pack trailer", "object extends past the data"))?;
        out.push(e);
    }
    Ok((PackId(hash), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trip_and_damage() {
        let entries: Vec<_> = (0..5u32)
            .map(|i| PackEntry {
                id: ObjectKind::Chunk.hash(&i.to_le_bytes()),
                kind: ObjectKind::Chunk,
                stored: Stored::Raw,
                offset: 8 + u64::from(i) * 10,
                stored_len: 10,
                raw_len: 10,
            })
            .collect();
        let (id, t) = encode_trailer(&entries);
        let pack_len = 8 + 50 + t.len() as u64;
        let (id2, e2) = decode_trailer(&t, pack_len).unwrap();
        assert_eq!((id, &entries), (id2, &e2));
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert!(
                decode_trailer(&bad, pack_len).is_err(),
                "flip at {i} accepted"
            );
        }
        assert!(decode_trailer(&t, 20).is_err());
    }
}
