//! Replays the fuzz corpora (`fuzz/corpus/<target>/*`) and saved findings
//! (`fuzz/regressions/<target>/*`, if any) through the decoders under plain
//! `cargo test`, with the same checks as the fuzz targets in `fuzz/src/lib.rs`:
//! no decoder panics, and whenever a decode succeeds the value re-encodes to
//! exactly the input bytes (for the JSON store config: `decode(encode(c)) == c`).
//!
//! Nothing is shared with `fuzz/` but the files, so this builds without
//! libFuzzer; keep the checks, and the input layouts of `pack_trailer` and
//! `codec`, in step with `fuzz/src/lib.rs`. A missing or empty corpus fails
//! the test, so CI cannot pass by running nothing.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ds_format::codec::{Reader, Writer};
use ds_format::config::StoreConfig;
use ds_format::manifest::{self, FileNode};
use ds_format::pack::{self, PackEntry};
use ds_format::snapshot::{self, Snapshot};
use ds_format::tree::{self, DirNode, EntryData};
use ds_format::{FormatError, ObjectKind};

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 6] = [
    ("dir_node", dir_node),
    ("file_node", file_node),
    ("snapshot", snapshot),
    ("pack_trailer", pack_trailer),
    ("store_config", store_config),
    ("codec", codec),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn check_for(target: &str) -> Check {
    match TARGETS.iter().find(|(t, _)| *t == target) {
        Some((_, c)) => *c,
        None => panic!(
            "unknown fuzz target directory {target:?}; known: {:?}",
            TARGETS.map(|(t, _)| t)
        ),
    }
}

/// Input files of `dir` (hidden files, which libFuzzer leaves, are skipped).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

/// Subdirectories of `root`, each named after a target.
fn target_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    dirs.sort();
    dirs
}

/// Runs every file through its target's check; returns how many ran and
/// the failures (file and panic message).
fn replay(target: &str, dir: &Path) -> (usize, Vec<String>) {
    let check = check_for(target);
    let files = inputs(dir);
    let mut failures = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            failures.push(format!("{}: {msg}\n  input: {}", f.display(), hex(&data)));
        }
    }
    (files.len(), failures)
}

fn report(what: &str, ran: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {ran} {what} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_replays_cleanly() {
    let root = fuzz_dir().join("corpus");
    assert!(
        root.is_dir(),
        "fuzz corpus {} is missing: the seeds are committed with the repo",
        root.display()
    );
    let dirs = target_dirs(&root);
    for (target, _) in TARGETS {
        assert!(
            dirs.iter().any(|(d, _)| d == target),
            "no corpus for fuzz target {target} under {}",
            root.display()
        );
    }
    let (mut ran, mut failures) = (0, Vec::new());
    for (target, dir) in &dirs {
        let (n, f) = replay(target, dir);
        assert!(n > 0, "corpus {} is empty", dir.display());
        ran += n;
        failures.extend(f);
    }
    report("corpus", ran, &failures);
}

#[test]
fn regressions_replay_cleanly() {
    let root = fuzz_dir().join("regressions");
    if !root.exists() {
        return;
    }
    let (mut ran, mut failures) = (0, Vec::new());
    for (target, dir) in target_dirs(&root) {
        let (n, f) = replay(&target, &dir);
        ran += n;
        failures.extend(f);
    }
    report("regression", ran, &failures);
}

// ---- the checks (mirror fuzz/src/lib.rs) ----

fn hex(b: &[u8]) -> String {
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

fn dir_node(data: &[u8]) {
    let Ok(node) = DirNode::decode(data) else {
        return;
    };
    let enc = node.encode();
    assert_canonical("dir node", data, &enc);
    assert_eq!(DirNode::decode(&enc).expect("re-decode"), node);
    assert!(node.level() < tree::MAX_LEVEL);
    match &node {
        DirNode::Leaf(entries) => {
            for (i, e) in entries.iter().enumerate() {
                tree::validate_name(&e.name).expect("dir node: accepted invalid name");
                assert!(i == 0 || entries[i - 1].name < e.name, "dir node: unsorted");
                assert!(e.mode <= 0o7777);
                match &e.data {
                    EntryData::File(f) => {
                        assert!(f.height <= manifest::MAX_HEIGHT);
                        assert!(f.size > 0 || (f.height == 0 && f.root.0 == [0; 32]));
                    }
                    EntryData::Dir(d) => assert!(d.height < tree::MAX_LEVEL),
                    EntryData::Symlink(t) => assert!(
                        !t.is_empty() && !t.contains(&0) && t.len() <= tree::MAX_SYMLINK_TARGET
                    ),
                }
            }
        }
        DirNode::Index { level, children } => {
            assert!(*level >= 1 && !children.is_empty());
            for (i, c) in children.iter().enumerate() {
                tree::validate_name(&c.first_name).expect("dir node: accepted invalid name");
                assert!(c.entries > 0, "dir node: empty subtree accepted");
                assert!(
                    i == 0 || children[i - 1].first_name < c.first_name,
                    "dir node: children unsorted"
                );
            }
        }
    }
}

fn file_node(data: &[u8]) {
    let Ok(node) = FileNode::decode(data) else {
        return;
    };
    let enc = node.encode();
    assert_canonical("file node", data, &enc);
    assert_eq!(FileNode::decode(&enc).expect("re-decode"), node);
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

fn snapshot(data: &[u8]) {
    let Ok(s) = Snapshot::decode(data) else {
        return;
    };
    let enc = s.encode();
    assert_canonical("snapshot", data, &enc);
    assert_eq!(Snapshot::decode(&enc).expect("re-decode"), s);
    assert_eq!(s.id(), ObjectKind::Snapshot.hash(data));
    assert!(s.root.height < tree::MAX_LEVEL);
    assert!(s.parents.len() as u64 <= snapshot::MAX_PARENTS);
    assert!(s.metadata.len() as u64 <= snapshot::MAX_METADATA);
}

/// Input: `flags:u8 x:u64le trailer...`; see `ds_fuzz::pack_trailer`.
fn pack_trailer(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let hdr = data.len().min(9);
    let mut x = [0u8; 8];
    x[..hdr.saturating_sub(1)].copy_from_slice(&data[1.min(hdr)..hdr]);
    let x = u64::from_le_bytes(x);
    let mut trailer = data[hdr..].to_vec();
    let pack_len = if flags & 1 == 0 {
        8 + trailer.len() as u64 + (x & 0xffff_ffff)
    } else {
        x
    };

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
    if trailer.len() != pack::ENTRY_SIZE {
        assert!(PackEntry::decode(&trailer).is_err());
    }
    if flags & 2 != 0 && all_ok && trailer.len() >= pack::FOOTER_SIZE {
        let (_, fixed) = pack::encode_trailer(&decoded);
        assert_canonical("pack entries", &trailer[..split], &fixed[..split]);
        trailer = fixed;
    }

    let footer = &trailer[trailer.len().saturating_sub(pack::FOOTER_SIZE)..];
    if let Ok(len) = pack::decode_footer(footer, pack_len) {
        let count = u32::from_le_bytes(footer[..4].try_into().unwrap());
        assert!(count <= pack::MAX_ENTRIES);
        assert_eq!(
            len,
            u64::from(count) * pack::ENTRY_SIZE as u64 + pack::FOOTER_SIZE as u64
        );
        assert!(len + pack::HEADER.len() as u64 <= pack_len);
    }
    if trailer.len() != pack::FOOTER_SIZE {
        assert!(pack::decode_footer(&trailer, pack_len).is_err());
    }

    let Ok((id, entries)) = pack::decode_trailer(&trailer, pack_len) else {
        return;
    };
    let (id2, enc) = pack::encode_trailer(&entries);
    assert_canonical("pack trailer", &trailer, &enc);
    assert_eq!(id, id2);
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
            "pack trailer: object extends past the data"
        );
    }
}

fn store_config(data: &[u8]) {
    let Ok(c) = StoreConfig::decode(data) else {
        return;
    };
    assert!(c.validate().is_ok());
    let enc = c.encode();
    let again = StoreConfig::decode(&enc).expect("store config: encode(c) does not decode");
    assert_eq!(again, c, "store config: decode(encode(c)) != c");
    assert_eq!(again.encode(), enc, "store config: encode is not stable");
}

const CODEC_LIMITS: [u64; 8] = [0, 1, 127, 128, 0o7777, 1 << 20, u32::MAX as u64, u64::MAX];

/// Input: `n:u8 ops:[u8; n] buf...`; see `ds_fuzz::codec` for the ops.
fn codec(data: &[u8]) {
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
        let res: Result<(), FormatError> = match op {
            0 => r.u8().map(|v| w.u8(v)),
            1 => r.varint().map(|v| w.varint(v)),
            2 => r.ivarint().map(|v| w.ivarint(v)),
            3 => {
                let max = CODEC_LIMITS[usize::from(next(&mut pc) % 8)];
                r.bounded(max, "fuzz").map(|v| {
                    assert!(v as u64 <= max);
                    w.varint(v as u64)
                })
            }
            4 => r.id().map(|v| w.id(&v)),
            5 => {
                let max = CODEC_LIMITS[usize::from(next(&mut pc) % 8)] as usize;
                r.bytes(max).map(|v| {
                    assert!(v.len() <= max);
                    w.bytes(v)
                })
            }
            6 => {
                let k = usize::from(next(&mut pc));
                let res = r.take(k);
                match &res {
                    Ok(v) => assert_eq!(v.len(), k),
                    Err(FormatError::Truncated { needed, .. }) => {
                        assert!(k > before && *needed == k - before);
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
                assert!(matches!(e, FormatError::Corrupt { .. }));
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
        assert!(after <= before, "codec: remaining grew");
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
                assert!(before < if op == 0 { 1 } else { 32 });
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
    let bits = 64 - v.leading_zeros() as usize;
    assert_eq!(
        w.buf.len(),
        bits.div_ceil(7).max(1),
        "codec: varint({v}) not minimal"
    );
    w.ivarint(s);
    w.bytes(&v.to_le_bytes());
    let b = w.into_bytes();
    let mut r = Reader::new(&b, "fuzz");
    assert_eq!(r.varint().ok(), Some(v));
    assert_eq!(r.ivarint().ok(), Some(s));
    assert_eq!(r.bytes(8).ok(), Some(&v.to_le_bytes()[..]));
    assert!(r.finish().is_ok());
}
