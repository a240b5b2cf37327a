//! Checks of objects and packs that arrive from outside (a hub receiving a
//! push, a client receiving a pull): what lies directly below an object, how
//! stored bytes turn back into plaintext, and whether a pack is exactly what
//! it claims. They live here, beside the decoders, so the fuzzers reach them.

use std::collections::HashSet;

use crate::manifest::FileNode;
use crate::pack::{
    FOOTER_SIZE, HEADER, MAX_OBJECT, PackEntry, Stored, decode_footer, decode_trailer,
};
use crate::snapshot::Snapshot;
use crate::tree::{DirNode, EntryData};
use crate::{FormatError, ObjectId, ObjectKind, PackId, Result};

/// Appends the objects directly below an object, given its plaintext:
/// a snapshot's root directory and parents, a directory node's children or
/// its entries' file roots and subdirectories, a file node's children.
pub fn children(kind: ObjectKind, raw: &[u8], out: &mut Vec<(ObjectId, ObjectKind)>) -> Result<()> {
    match kind {
        ObjectKind::Chunk => {}
        ObjectKind::FileNode => {
            let n = FileNode::decode(raw)?;
            let k = if n.level == 0 {
                ObjectKind::Chunk
            } else {
                ObjectKind::FileNode
            };
            out.extend(n.children.iter().map(|c| (c.id, k)));
        }
        ObjectKind::DirNode => match DirNode::decode(raw)? {
            DirNode::Leaf(entries) => {
                for e in entries {
                    match e.data {
                        EntryData::File(f) if f.size == 0 => {}
                        EntryData::File(f) if f.height == 0 => {
                            out.push((f.root, ObjectKind::Chunk))
                        }
                        EntryData::File(f) => out.push((f.root, ObjectKind::FileNode)),
                        EntryData::Dir(d) => out.push((d.root, ObjectKind::DirNode)),
                        EntryData::Symlink(_)
                        | EntryData::Fifo
                        | EntryData::Socket
                        | EntryData::Device { .. } => {}
                    }
                }
            }
            DirNode::Index { children, .. } => {
                out.extend(children.iter().map(|c| (c.id, ObjectKind::DirNode)));
            }
        },
        ObjectKind::Snapshot => {
            let s = Snapshot::decode(raw)?;
            out.push((s.root.root, ObjectKind::DirNode));
            out.extend(s.parents.iter().map(|p| (*p, ObjectKind::Snapshot)));
            out.extend(s.runs.iter().map(|r| (*r, ObjectKind::Run)));
        }
        ObjectKind::Run => {
            crate::run::Run::decode(raw)?;
        }
    }
    Ok(())
}

/// Turns an object's stored bytes back into its plaintext of `raw_len`
/// bytes, never allocating more than [`MAX_OBJECT`].
pub fn decode_stored(stored: Stored, bytes: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    if raw_len > MAX_OBJECT {
        return Err(FormatError::corrupt(
            "stored object",
            format!("{raw_len} bytes"),
        ));
    }
    match stored {
        Stored::Raw if bytes.len() == raw_len as usize => Ok(bytes.to_vec()),
        Stored::Raw => Err(FormatError::corrupt("stored object", "length mismatch")),
        Stored::Zstd => {
            // Through the thread's reused context: creating one per object
            // cost more than decompressing a small one (a third of a
            // listing of 100,000 runs went to ZSTD_createDCtx).
            let mut out = vec![0u8; raw_len as usize];
            decode_stored_into(stored, bytes, &mut out)?;
            Ok(out)
        }
    }
}

thread_local! {
    /// One zstd decompression context per thread, reused: creating one
    /// costs more than decompressing a small chunk.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Like [`decode_stored`], into `out`, which must be exactly the plaintext's
/// length (a recycled buffer: nothing is allocated).
pub fn decode_stored_into(stored: Stored, bytes: &[u8], out: &mut [u8]) -> Result<()> {
    let n = match stored {
        Stored::Raw if bytes.len() == out.len() => {
            out.copy_from_slice(bytes);
            out.len()
        }
        Stored::Raw => bytes.len(),
        Stored::Zstd => DCTX
            .with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new()?);
                }
                d.as_mut()
                    .expect("just set")
                    .decompress_to_buffer(bytes, out)
            })
            .map_err(|e| FormatError::corrupt("stored object", format!("zstd: {e}")))?,
    };
    if n != out.len() {
        return Err(FormatError::corrupt("stored object", "length mismatch"));
    }
    Ok(())
}

/// The largest plaintext of any object a store can make: a chunk of the
/// largest maximum size the chunker accepts (tree nodes and run records
/// are far smaller). A pack announcing a larger one is refused before
/// anything in it is decompressed.
pub const MAX_PLAIN_OBJECT: u32 = fastcdc::v2020::MAXIMUM_MAX as u32;
/// The most plaintext one pack may decompress to, in total.
pub const MAX_PACK_PLAIN: u64 = 1 << 30;
/// The most plaintext per byte of a pack (plus one largest object): far
/// above what real data reaches after dedup (a run of zeros is one
/// chunk), far below a decompression bomb's 10,000 : 1.
pub const MAX_RATIO: u64 = 1024;

/// Checks that `data` is the pack `claimed`: header, trailer and name agree,
/// every object decodes to plaintext that hashes to its id, and every tree
/// node's children are either `held` already or earlier in this pack — so a
/// receiver that stores it keeps "holding an object means holding everything
/// below it". Returns the entries and where the trailer starts.
pub fn verify_pack(
    claimed: &PackId,
    data: &[u8],
    held: &mut dyn FnMut(&ObjectId) -> bool,
) -> Result<(Vec<PackEntry>, usize)> {
    let bad = |why: String| FormatError::Corrupt { what: "pack", why };
    if data.len() < HEADER.len() + FOOTER_SIZE || data[..HEADER.len()] != HEADER {
        return Err(bad("not a ds pack (bad header or too short)".into()));
    }
    let len = data.len() as u64;
    let tlen = decode_footer(&data[data.len() - FOOTER_SIZE..], len)?;
    let tstart = data.len() - tlen as usize;
    let (id, entries) = decode_trailer(&data[tstart..], len)?;
    if id != *claimed {
        return Err(bad(format!("its trailer hashes to {id}, not {claimed}")));
    }
    // Bounded work per byte received: sizes are checked from the trailer,
    // before any object is decompressed.
    let mut plain: u64 = 0;
    for e in &entries {
        if e.raw_len > MAX_PLAIN_OBJECT {
            return Err(bad(format!(
                "object {} claims {} bytes of plaintext; no store makes objects over {MAX_PLAIN_OBJECT}",
                e.id, e.raw_len
            )));
        }
        plain += u64::from(e.raw_len);
    }
    let budget = (len * MAX_RATIO + u64::from(MAX_PLAIN_OBJECT)).min(MAX_PACK_PLAIN);
    if plain > budget {
        return Err(bad(format!(
            "{plain} bytes of plaintext in a pack of {len}: over the limit of {budget} \
             ({MAX_RATIO} per byte, at most {MAX_PACK_PLAIN})"
        )));
    }
    let mut here: HashSet<ObjectId> = HashSet::with_capacity(entries.len());
    let mut kids = Vec::new();
    for e in &entries {
        // decode_trailer checked every object lies inside the data.
        let start = e.offset as usize;
        let stored = &data[start..start + e.stored_len as usize];
        // Raw objects are checked in place: no copy on the bulk path.
        let decoded;
        let raw: &[u8] = if e.stored == Stored::Raw && stored.len() == e.raw_len as usize {
            stored
        } else {
            decoded = decode_stored(e.stored, stored, e.raw_len)
                .map_err(|x| bad(format!("object {} cannot be decoded: {x}", e.id)))?;
            &decoded
        };
        if e.kind.hash(raw) != e.id {
            return Err(bad(format!(
                "object {} ({}) does not match its hash",
                e.id,
                e.kind.name()
            )));
        }
        kids.clear();
        children(e.kind, raw, &mut kids)
            .map_err(|x| bad(format!("{} {} does not decode: {x}", e.kind.name(), e.id)))?;
        for (c, _) in &kids {
            if !here.contains(c) && !held(c) {
                return Err(bad(format!(
                    "{} {} refers to {c}, which the receiver does not hold and which is not \
                     earlier in the pack (send children first)",
                    e.kind.name(),
                    e.id
                )));
            }
        }
        here.insert(e.id);
    }
    Ok((entries, tstart))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Child;
    use crate::pack::encode_trailer;

    fn pack(objs: &[(ObjectKind, Vec<u8>)]) -> (PackId, Vec<u8>) {
        let mut data = HEADER.to_vec();
        let mut es = Vec::new();
        for (k, raw) in objs {
            es.push(PackEntry {
                id: k.hash(raw),
                kind: *k,
                stored: Stored::Raw,
                offset: data.len() as u64,
                stored_len: raw.len() as u32,
                raw_len: raw.len() as u32,
            });
            data.extend_from_slice(raw);
        }
        let (id, t) = encode_trailer(&es);
        data.extend_from_slice(&t);
        (id, data)
    }

    #[test]
    fn children_first_packs_pass_and_orphans_and_lies_do_not() {
        let chunk = b"chunk bytes".to_vec();
        let node = FileNode {
            level: 0,
            children: vec![Child {
                id: ObjectKind::Chunk.hash(&chunk),
                len: chunk.len() as u64,
            }],
        }
        .encode();
        let mut never = |_: &ObjectId| false;
        let (id, data) = pack(&[
            (ObjectKind::Chunk, chunk.clone()),
            (ObjectKind::FileNode, node.clone()),
        ]);
        let (entries, t) = verify_pack(&id, &data, &mut never).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(t, data.len() - 2 * 50 - FOOTER_SIZE);
        // Parent before child: refused unless the receiver holds the child.
        let (id, data) = pack(&[
            (ObjectKind::FileNode, node.clone()),
            (ObjectKind::Chunk, chunk),
        ]);
        let e = verify_pack(&id, &data, &mut never).unwrap_err().to_string();
        assert!(e.contains("send children first"), "{e}");
        verify_pack(&id, &data, &mut |_| true).unwrap();
        // A flipped byte, and a wrong name.
        let mut bad = data.clone();
        bad[HEADER.len()] ^= 1;
        let e = verify_pack(&id, &bad, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match its hash"), "{e}");
        let e = verify_pack(&PackId([1; 32]), &data, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hashes to"), "{e}");
    }

    /// A pack of zstd-compressed zero chunks: each tiny, each claiming a
    /// huge plaintext (the hub spent 5.5 s of CPU on a 199 KiB one).
    fn bomb(n: usize, raw_len: usize) -> (PackId, Vec<u8>) {
        let mut data = HEADER.to_vec();
        let mut es = Vec::new();
        for i in 0..n {
            let mut raw = vec![0u8; raw_len];
            raw[0] = i as u8;
            let z = zstd::bulk::compress(&raw, 1).unwrap();
            es.push(PackEntry {
                id: ObjectKind::Chunk.hash(&raw),
                kind: ObjectKind::Chunk,
                stored: Stored::Zstd,
                offset: data.len() as u64,
                stored_len: z.len() as u32,
                raw_len: raw_len as u32,
            });
            data.extend_from_slice(&z);
        }
        es.sort_by_key(|e| e.offset);
        let (id, t) = encode_trailer(&es);
        data.extend_from_slice(&t);
        (id, data)
    }

    #[test]
    fn decompression_bombs_are_refused_before_anything_is_decompressed() {
        let (id, data) = bomb(2, MAX_PLAIN_OBJECT as usize + 2);
        let e = verify_pack(&id, &data, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no store makes objects over"), "{e}");
        // Many 8 MiB zero chunks in a few KiB: over the ratio.
        let (id, data) = bomb(40, 8 << 20);
        let e = verify_pack(&id, &data, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("per byte"), "{e}");
        // A compressible but honest pack passes.
        let (id, data) = bomb(1, 1 << 20);
        verify_pack(&id, &data, &mut |_| true).unwrap();
    }
}
