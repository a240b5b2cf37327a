//! The checks behind every fuzz target, one function per target. Each takes
//! arbitrary bytes and panics only if a `ds-format` decoder misbehaves:
//!
//! - a decoder panics (index out of bounds, arithmetic overflow, `expect`...);
//! - a decoder accepts bytes that are not canonical: whenever `decode(x)`
//!   succeeds, `encode(decode(x))` must be exactly `x` (for the JSON store
//!   config, which is not byte-canonical: `decode(encode(c)) == c`);
//! - a decoded value breaks an invariant its decoder promises (sorted and
//!   valid names, objects inside the pack, ...).
//!
//! `format/tests/fuzz_corpus.rs` compiles this very file (via `#[path]`) to
//! replay the committed corpora and regressions under plain `cargo test`, so
//! it must depend on nothing but `ds-format` and std.

use ds_format::check;
use ds_format::codec::{Reader, Writer};
use ds_format::config::StoreConfig;
use ds_format::manifest::{self, FileNode};
use ds_format::pack::{self, PackEntry};
use ds_format::snapshot::Snapshot;
use ds_format::tree::{self, DirNode, EntryData};
use ds_format::{FormatError, ObjectKind, PackId};

/// Lowercase hex, for assertion messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn assert_canonical(what: &str, input: &[u8], reencoded: &[u8]) {
    assert!(
        input == reencoded,
        "{what}: decoded, but re-encodes differently (non-canonical)\n input: {}\n again: {}",
        hex(input),
        hex(reencoded)
    );
}

/// `DirNode::decode`.
pub fn dir_node(data: &[u8]) {
    let Ok(node) = DirNode::decode(data) else {
        return;
    };
    let enc = node.encode();
    // Format 1 is still read but written as the current format: what it
    // decodes to must survive that; a current node must be canonical.
    if data.get(1) == Some(&1) {
        assert_eq!(
            DirNode::decode(&enc).ok().as_ref(),
            Some(&node),
            "dir node: format 1 node changes when written as the current format"
        );
    } else {
        assert_canonical("dir node", data, &enc);
    }
    match DirNode::decode(&enc) {
        Ok(again) => assert_eq!(again, node, "dir node: decode(encode(n)) != n"),
        Err(e) => panic!("dir node: re-encoding does not decode: {e}"),
    }
    assert!(node.level() < tree::MAX_LEVEL);
    match &node {
        DirNode::Leaf(entries) => {
            assert_eq!(node.level(), 0);
            for (i, e) in entries.iter().enumerate() {
                if let Err(err) = tree::validate_name(&e.name) {
                    panic!("dir node: accepted invalid name: {err}");
                }
                if i > 0 {
                    assert!(entries[i - 1].name < e.name, "dir node: entries not sorted");
                }
                assert!(e.mode <= 0o7777, "dir node: mode {:o}", e.mode);
                match &e.data {
                    EntryData::File(f) => {
                        assert!(f.height <= manifest::MAX_HEIGHT);
                        assert!(f.size > 0 || (f.height == 0 && f.root.0 == [0; 32]));
                        let _ = f.root_object();
                    }
                    EntryData::Dir(d) => assert!(d.height < tree::MAX_LEVEL),
                    EntryData::Symlink(t) => {
                        assert!(
                            !t.is_empty() && !t.contains(&0) && t.len() <= tree::MAX_SYMLINK_TARGET
                        )
                    }
                    EntryData::Fifo | EntryData::Socket | EntryData::Device { .. } => {}
                }
                assert!(
                    !(matches!(e.data, EntryData::Dir(_)) && e.link.is_some()),
                    "dir node: a linked directory"
                );
                for w in e.xattrs.windows(2) {
                    assert!(w[0].name < w[1].name, "dir node: attributes not sorted");
                }
                let _ = (e.size(), e.data.kind_name());
            }
        }
        DirNode::Index { level, children } => {
            assert!(*level >= 1);
            assert!(!children.is_empty(), "dir node: index without children");
            for (i, c) in children.iter().enumerate() {
                if let Err(err) = tree::validate_name(&c.first_name) {
                    panic!("dir node: accepted invalid first name: {err}");
                }
                assert!(c.entries > 0, "dir node: empty subtree accepted");
                if i > 0 {
                    assert!(
                        children[i - 1].first_name < c.first_name,
                        "dir node: children not sorted"
                    );
                }
            }
        }
    }
}

/// `FileNode::decode`.
pub fn file_node(data: &[u8]) {
    let Ok(node) = FileNode::decode(data) else {
        return;
    };
    let enc = node.encode();
    assert_canonical("file node", data, &enc);
    match FileNode::decode(&enc) {
        Ok(again) => assert_eq!(again, node, "file node: decode(encode(n)) != n"),
        Err(e) => panic!("file node: re-encoding does not decode: {e}"),
    }
    assert!(node.level < manifest::MAX_HEIGHT);
    assert!(!node.children.is_empty() && node.children.len() <= manifest::MAX_CHILDREN);
    let mut total: u64 = 0;
    for c in &node.children {
        assert!(c.len > 0, "file node: zero-length child accepted");
        total = total
            .checked_add(c.len)
            .expect("file node: accepted children whose lengths overflow u64");
    }
    assert_eq!(node.total_len(), total);
    assert!(manifest::check_child(&node, node.level, total).is_ok());
}

/// `Snapshot::decode`.
pub fn snapshot(data: &[u8]) {
    let Ok(s) = Snapshot::decode(data) else {
        return;
    };
    let enc = s.encode();
    assert_canonical("snapshot", data, &enc);
    match Snapshot::decode(&enc) {
        Ok(again) => assert_eq!(again, s, "snapshot: decode(encode(s)) != s"),
        Err(e) => panic!("snapshot: re-encoding does not decode: {e}"),
    }
    assert_eq!(s.id(), ObjectKind::Snapshot.hash(data));
    assert!(s.root.height < tree::MAX_LEVEL);
    assert!(s.parents.len() as u64 <= ds_format::snapshot::MAX_PARENTS);
    assert!(s.metadata.len() as u64 <= ds_format::snapshot::MAX_METADATA);
}

/// `Run::decode`, and `Run::from_workload` (what a workload prints) on the
/// same bytes.
pub fn run(data: &[u8]) {
    let _ = ds_format::run::Run::from_workload("fuzz", ds_format::run::Origin::Ds, data);
    let Ok(r) = ds_format::run::Run::decode(data) else {
        return;
    };
    let enc = r.encode();
    assert_canonical("run", data, &enc);
    assert_eq!(r.id(), ObjectKind::Run.hash(data));
}

/// Input layout of the `pack_trailer` target:
/// `flags:u8 x:u64le trailer...` (missing header bytes read as zero).
/// - `flags & 1 == 0`: `pack_len = 8 + trailer.len() + (x & 0xffff_ffff)`
///   (a pack whose trailer is exactly `trailer`, with `x` bytes of slack);
///   `flags & 1 == 1`: `pack_len = x` (anything, including too small).
/// - `flags & 2`: if the entries part (everything before the last 44 bytes)
///   is whole entries that each decode, replace the footer by a correct one
///   (count and entries hash, from `pack::encode_trailer`), so the checks
///   behind the hash are reachable. The hash is no defence against a
///   malicious pack: its writer computes it.
pub fn pack_trailer(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let mut x = [0u8; 8];
    let hdr = data.len().min(9);
    x[..hdr.saturating_sub(1)].copy_from_slice(&data[1.min(hdr)..hdr]);
    let x = u64::from_le_bytes(x);
    let mut trailer = data[hdr..].to_vec();
    let pack_len = if flags & 1 == 0 {
        8 + trailer.len() as u64 + (x & 0xffff_ffff)
    } else {
        x
    };

    // Every whole 50-byte slice of the entries part through PackEntry::decode.
    let split = trailer.len().saturating_sub(pack::FOOTER_SIZE);
    let mut decoded = Vec::new();
    let mut all_ok = split.is_multiple_of(pack::ENTRY_SIZE);
    for b in trailer[..split].chunks(pack::ENTRY_SIZE) {
        match PackEntry::decode(b) {
            Ok(e) => {
                assert_eq!(
                    b.len(),
                    pack::ENTRY_SIZE,
                    "pack entry: decoded a short slice"
                );
                let mut out = Vec::new();
                e.encode_into(&mut out);
                assert_canonical("pack entry", b, &out);
                assert!(e.stored_len <= pack::MAX_OBJECT && e.raw_len <= pack::MAX_OBJECT);
                assert!(e.stored != pack::Stored::Raw || e.stored_len == e.raw_len);
                decoded.push(e);
            }
            Err(_) => all_ok = false,
        }
    }
    // Any length other than 50 must be refused.
    if trailer.len() != pack::ENTRY_SIZE {
        assert!(
            PackEntry::decode(&trailer).is_err(),
            "pack entry: accepted {} bytes",
            trailer.len()
        );
    }

    if flags & 2 != 0 && all_ok && trailer.len() >= pack::FOOTER_SIZE {
        let (_, fixed) = pack::encode_trailer(&decoded);
        assert_canonical("pack entries", &trailer[..split], &fixed[..split]);
        trailer = fixed;
    }

    // The footer alone (and, if it is not 44 bytes, the whole input as one).
    let footer = &trailer[trailer.len().saturating_sub(pack::FOOTER_SIZE)..];
    if let Ok(len) = pack::decode_footer(footer, pack_len) {
        let count = u32::from_le_bytes(footer[..4].try_into().unwrap());
        assert!(count <= pack::MAX_ENTRIES);
        assert_eq!(
            len,
            u64::from(count) * pack::ENTRY_SIZE as u64 + pack::FOOTER_SIZE as u64
        );
        assert!(
            len + pack::HEADER.len() as u64 <= pack_len,
            "pack footer: trailer longer than the pack"
        );
    }
    if trailer.len() != pack::FOOTER_SIZE {
        assert!(pack::decode_footer(&trailer, pack_len).is_err());
    }

    let Ok((id, entries)) = pack::decode_trailer(&trailer, pack_len) else {
        return;
    };
    let (id2, enc) = pack::encode_trailer(&entries);
    assert_canonical("pack trailer", &trailer, &enc);
    assert_eq!(id, id2, "pack trailer: id differs from encode_trailer's");
    // Objects lie in order, without overlap, between the header and the trailer.
    let data_end = pack_len
        .checked_sub(trailer.len() as u64)
        .expect("pack trailer: accepted a trailer longer than the pack");
    let mut next = pack::HEADER.len() as u64;
    for e in &entries {
        assert!(
            e.offset >= next,
            "pack trailer: objects overlap or are out of order"
        );
        next = e
            .offset
            .checked_add(u64::from(e.stored_len))
            .expect("pack trailer: object end overflows u64");
        assert!(
            next <= data_end,
            "pack trailer: object {e:?} extends past the data ({data_end})"
        );
    }
}

/// `StoreConfig::decode` (JSON, so canonical means `decode(encode(c)) == c`).
pub fn store_config(data: &[u8]) {
    let Ok(c) = StoreConfig::decode(data) else {
        return;
    };
    assert!(
        c.validate().is_ok(),
        "store config: decode accepted an invalid config"
    );
    let enc = c.encode();
    match StoreConfig::decode(&enc) {
        Ok(again) => {
            assert_eq!(again, c, "store config: decode(encode(c)) != c");
            assert_eq!(again.encode(), enc, "store config: encode is not stable");
        }
        Err(e) => panic!(
            "store config: encode(c) does not decode: {e}\n{}",
            String::from_utf8_lossy(&enc)
        ),
    }
}

/// Limits the `codec` target passes to `bounded` and `bytes`.
pub const CODEC_LIMITS: [u64; 8] = [0, 1, 127, 128, 0o7777, 1 << 20, u32::MAX as u64, u64::MAX];

/// Input layout of the `codec` target: `n:u8 ops:[u8; n] buf...` (ops cut
/// short if the input is). `buf` is read by one `Reader`; each op byte
/// `% 12` picks a call, some take the next op bytes as arguments (0 when the
/// ops run out):
/// 0 `u8` · 1 `varint` · 2 `ivarint` · 3 `bounded(CODEC_LIMITS[a % 8])` ·
/// 4 `id` · 5 `bytes(CODEC_LIMITS[a % 8])` · 6 `take(a)` ·
/// 7 `header(a, b)` · 8 `remaining`/`is_empty` · 9 `corrupt` ·
/// 10 Writer→Reader round trip of the u64 in the next 8 op bytes ·
/// 11 stop. Then `finish`, which must succeed iff nothing remains.
/// Every successful read must consume exactly the bytes its `Writer`
/// counterpart produces for the value read.
pub fn codec(data: &[u8]) {
    let n = data.first().map_or(0, |&b| usize::from(b));
    let ops_end = (1 + n).min(data.len());
    let ops = &data[1.min(data.len())..ops_end];
    let buf = &data[ops_end..];
    let mut r = Reader::new(buf, "fuzz");
    let mut pc = 0;
    let next = |pc: &mut usize| -> u8 {
        let a = ops.get(*pc).copied().unwrap_or(0);
        *pc += 1;
        a
    };
    while pc < ops.len() {
        let op = next(&mut pc) % 12;
        let before = r.remaining();
        let start = buf.len() - before;
        let mut w = Writer::new();
        // Ok(()) = read succeeded and `w` holds its canonical encoding.
        let res: Result<(), FormatError> = match op {
            0 => r.u8().map(|v| w.u8(v)),
            1 => r.varint().map(|v| w.varint(v)),
            2 => r.ivarint().map(|v| w.ivarint(v)),
            3 => {
                let max = CODEC_LIMITS[usize::from(next(&mut pc) % 8)];
                r.bounded(max, "fuzz").map(|v| {
                    assert!(v as u64 <= max, "codec: bounded({max}) returned {v}");
                    w.varint(v as u64)
                })
            }
            4 => r.id().map(|v| w.id(&v)),
            5 => {
                let max = CODEC_LIMITS[usize::from(next(&mut pc) % 8)] as usize;
                r.bytes(max).map(|v| {
                    assert!(
                        v.len() <= max,
                        "codec: bytes({max}) returned {} bytes",
                        v.len()
                    );
                    w.bytes(v)
                })
            }
            6 => {
                let k = usize::from(next(&mut pc));
                let res = r.take(k);
                match &res {
                    Ok(v) => assert_eq!(v.len(), k, "codec: take({k}) returned {} bytes", v.len()),
                    Err(FormatError::Truncated { needed, .. }) => {
                        assert!(
                            k > before && *needed == k - before,
                            "codec: take({k}) of {before}: needed {needed}"
                        );
                        assert_eq!(r.remaining(), before, "codec: failed take consumed bytes");
                    }
                    Err(e) => panic!("codec: take failed with {e}"),
                }
                res.map(|v| w.buf.extend_from_slice(v))
            }
            7 => {
                let (tag, version) = (next(&mut pc), next(&mut pc));
                r.header(tag, version).map(|()| {
                    w.u8(tag);
                    w.u8(version)
                })
            }
            8 => {
                assert_eq!(r.is_empty(), r.remaining() == 0);
                Err(r.corrupt("not a read"))
            }
            9 => {
                let e = r.corrupt("why");
                assert!(
                    matches!(e, FormatError::Corrupt { .. }),
                    "codec: corrupt() gave {e:?}"
                );
                Err(e)
            }
            10 => {
                let mut v = [0u8; 8];
                for b in &mut v {
                    *b = next(&mut pc);
                }
                round_trip(u64::from_le_bytes(v));
                Err(r.corrupt("not a read"))
            }
            _ => break,
        };
        let after = r.remaining();
        assert!(
            after <= before,
            "codec: remaining grew from {before} to {after}"
        );
        match res {
            Ok(()) => {
                let consumed = &buf[start..start + (before - after)];
                assert!(
                    consumed == w.buf.as_slice(),
                    "codec: op {op} consumed {} but the value encodes as {}",
                    hex(consumed),
                    hex(&w.buf)
                );
            }
            Err(_) if matches!(op, 0 | 4) => {
                assert_eq!(after, before, "codec: failed op {op} consumed bytes");
                assert!(
                    before < if op == 0 { 1 } else { 32 },
                    "codec: op {op} failed with {before} bytes left"
                );
            }
            Err(_) => {}
        }
    }
    let rem = r.remaining();
    assert_eq!(
        r.finish().is_ok(),
        rem == 0,
        "codec: finish() with {rem} bytes left"
    );
}

fn round_trip(v: u64) {
    let s = v as i64;
    let mut w = Writer::new();
    w.varint(v);
    let vlen = w.buf.len();
    assert_eq!(
        vlen,
        (64 - v.leading_zeros() as usize).div_ceil(7).max(1),
        "codec: varint({v}) not minimal"
    );
    w.ivarint(s);
    w.bytes(&v.to_le_bytes());
    let b = w.into_bytes();
    let mut r = Reader::new(&b, "fuzz");
    assert_eq!(
        r.varint().ok(),
        Some(v),
        "codec: varint {v} does not round-trip"
    );
    assert_eq!(
        r.ivarint().ok(),
        Some(s),
        "codec: ivarint {s} does not round-trip"
    );
    assert_eq!(r.bytes(8).ok(), Some(&v.to_le_bytes()[..]));
    assert!(r.finish().is_ok());
}

/// `check::verify_pack`: a whole pack as a hub receives it, claimed under
/// the name its footer gives (so the checks behind the name are reachable),
/// once with a receiver that holds nothing and once with one that holds all.
pub fn pack_verify(data: &[u8]) {
    let claimed = data
        .len()
        .checked_sub(40)
        .and_then(|s| PackId::from_slice(&data[s..s + 32]))
        .unwrap_or(PackId::ZERO);
    verified_pack(&claimed, data);
}

/// `check::verify_pack` of `data` claimed as pack `claimed`, with and
/// without its children held: whatever it accepts must lie before the
/// trailer and decode to its id. Shared with the `upload` target.
pub fn verified_pack(claimed: &PackId, data: &[u8]) {
    for holds_all in [false, true] {
        let Ok((entries, tstart)) = check::verify_pack(claimed, data, &mut |_| holds_all) else {
            continue;
        };
        assert!(tstart >= pack::HEADER.len() && tstart <= data.len());
        for e in &entries {
            let end = e.offset as usize + e.stored_len as usize;
            assert!(
                end <= tstart,
                "pack verify: object {} runs into the trailer",
                e.id
            );
            let raw = check::decode_stored(e.stored, &data[e.offset as usize..end], e.raw_len)
                .expect("pack verify: accepted an object that does not decode");
            assert_eq!(
                e.kind.hash(&raw),
                e.id,
                "pack verify: accepted a wrong hash"
            );
        }
    }
}

/// `decode_stored_into` (the mount's zero-allocation path) against
/// `decode_stored`: input = stored kind (1 byte), plaintext length (2 bytes,
/// little-endian), then the stored bytes. Both must accept exactly the same
/// inputs and produce the same plaintext; a recycled buffer's old bytes must
/// never survive into the output.
pub fn stored(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let kind = if data[0] & 1 == 0 {
        pack::Stored::Raw
    } else {
        pack::Stored::Zstd
    };
    let raw_len = u32::from(u16::from_le_bytes([data[1], data[2]]));
    let bytes = &data[3..];
    let want = check::decode_stored(kind, bytes, raw_len);
    let mut out = vec![0xA5u8; raw_len as usize];
    let got = check::decode_stored_into(kind, bytes, &mut out);
    match (want, got) {
        (Ok(w), Ok(())) => assert!(w == out, "decode_stored_into: plaintext differs"),
        (Err(_), Err(_)) => {}
        (w, g) => panic!(
            "decode_stored_into disagrees: decode_stored {:?}, into {:?}",
            w.map(|v| v.len()),
            g
        ),
    }
}
