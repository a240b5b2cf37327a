//! Writes the seed corpora: a few small, valid encodings per target, each
//! checked by the target's own function before it is written.
//!
//! `cargo run --bin seed [-- OUT_DIR]` (default: `corpus/` next to this
//! crate's Cargo.toml). Files are named `seed-<what>`; rerunning overwrites
//! them with identical bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ds_format::codec::Writer;
use ds_format::config::{Compression, StoreConfig};
use ds_format::manifest::{Child, FileNode, FileRef, ManifestBuilder};
use ds_format::pack::{self, PackEntry, Stored};
use ds_format::snapshot::{Snapshot, SnapshotStats};
use ds_format::tree::{DirBuilder, DirNode, DirRef, Entry, EntryData, IndexChild};
use ds_format::{ObjectId, ObjectKind};

struct Out {
    root: PathBuf,
    count: usize,
}

impl Out {
    /// Checks `bytes` with the target's function, requires `valid` to hold,
    /// and writes it.
    fn put(&mut self, target: &str, name: &str, bytes: &[u8], valid: bool) {
        assert!(valid, "seed {target}/{name} does not decode");
        assert!(
            bytes.len() < 64 * 1024,
            "seed {target}/{name} is {} bytes",
            bytes.len()
        );
        match target {
            "dir_node" => ds_fuzz::dir_node(bytes),
            "file_node" => ds_fuzz::file_node(bytes),
            "snapshot" => ds_fuzz::snapshot(bytes),
            "run" => ds_fuzz::run(bytes),
            "pack_trailer" => ds_fuzz::pack_trailer(bytes),
            "store_config" => ds_fuzz::store_config(bytes),
            "codec" => ds_fuzz::codec(bytes),
            "pack_verify" => ds_fuzz::pack_verify(bytes),
            _ => unreachable!(),
        }
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        self.count += 1;
    }
}

fn id(n: u64) -> ObjectId {
    ObjectKind::Chunk.hash(&n.to_le_bytes())
}

fn file(name: &[u8], n: u64) -> Entry {
    Entry {
        name: name.to_vec(),
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000 + n as i64,
        owner: None,
        xattrs: Vec::new(),
        link: None,
        data: EntryData::File(FileRef {
            size: n + 1,
            height: 0,
            root: id(n),
        }),
    }
}

fn dir_nodes(o: &mut Out) {
    let mut put = |name: &str, node: &DirNode| {
        let b = node.encode();
        o.put("dir_node", name, &b, DirNode::decode(&b).is_ok());
    };
    put("empty-leaf", &DirNode::Leaf(vec![]));
    put("one-file", &DirNode::Leaf(vec![file(b"a", 1)]));
    put(
        "all-kinds",
        &DirNode::Leaf(vec![
            Entry {
                name: b"a\xffnon-utf8".to_vec(),
                mode: 0o755,
                mtime_ns: i64::MIN,
                owner: None,
                xattrs: Vec::new(),
                link: None,
                data: EntryData::Dir(DirRef {
                    height: 15,
                    root: id(7),
                }),
            },
            Entry {
                name: b"big".to_vec(),
                mode: 0o7777,
                mtime_ns: -1,
                owner: None,
                xattrs: Vec::new(),
                link: None,
                data: EntryData::File(FileRef {
                    size: u64::MAX,
                    height: 16,
                    root: id(8),
                }),
            },
            Entry {
                name: b"empty".to_vec(),
                mode: 0,
                mtime_ns: 0,
                owner: None,
                xattrs: Vec::new(),
                link: None,
                data: EntryData::File(FileRef::EMPTY),
            },
            Entry {
                name: b"link".to_vec(),
                mode: 0o777,
                mtime_ns: i64::MAX,
                owner: None,
                xattrs: Vec::new(),
                link: None,
                data: EntryData::Symlink(b"../x".to_vec()),
            },
            Entry {
                name: vec![b'n'; 1024],
                mode: 0o644,
                mtime_ns: 1,
                owner: None,
                xattrs: Vec::new(),
                link: None,
                data: EntryData::Symlink(vec![b'/'; 300]),
            },
        ]),
    );
    put(
        "index",
        &DirNode::Index {
            level: 1,
            children: vec![
                IndexChild {
                    id: id(1),
                    first_name: b"a".to_vec(),
                    entries: 1,
                },
                IndexChild {
                    id: id(2),
                    first_name: b"m".to_vec(),
                    entries: 300,
                },
                IndexChild {
                    id: id(3),
                    first_name: b"z\x80".to_vec(),
                    entries: u64::MAX,
                },
            ],
        },
    );
    put(
        "index-deepest",
        &DirNode::Index {
            level: 15,
            children: vec![IndexChild {
                id: id(4),
                first_name: b"x".to_vec(),
                entries: 2,
            }],
        },
    );
    // A real multi-node tree from the builder: keep its root and smallest leaf.
    let mut nodes: Vec<Vec<u8>> = Vec::new();
    let mut b = DirBuilder::default();
    for i in 0..700u64 {
        b.push(file(format!("f{i:04}").as_bytes(), i), &mut |_, n| {
            nodes.push(n)
        })
        .unwrap();
    }
    let root = b.finish(&mut |_, n| nodes.push(n));
    assert!(root.height >= 1);
    let last = nodes.pop().unwrap();
    put("builder-root", &DirNode::decode(&last).unwrap());
    nodes.sort_by_key(Vec::len);
    put("builder-leaf", &DirNode::decode(&nodes[0]).unwrap());
}

fn file_nodes(o: &mut Out) {
    let mut put = |name: &str, node: &FileNode| {
        let b = node.encode();
        o.put("file_node", name, &b, FileNode::decode(&b).is_ok());
    };
    put(
        "one-child",
        &FileNode {
            level: 0,
            children: vec![Child { id: id(1), len: 1 }],
        },
    );
    put(
        "sum-is-max",
        &FileNode {
            level: 15,
            children: vec![
                Child {
                    id: id(1),
                    len: u64::MAX - 1,
                },
                Child { id: id(2), len: 1 },
            ],
        },
    );
    put(
        "varint-widths",
        &FileNode {
            level: 3,
            children: [127u64, 128, 16383, 16384, 1 << 35]
                .iter()
                .enumerate()
                .map(|(i, &len)| Child {
                    id: id(i as u64),
                    len,
                })
                .collect(),
        },
    );
    // Builder output: a leaf node and the level-1 root above it.
    let mut nodes: Vec<Vec<u8>> = Vec::new();
    let mut b = ManifestBuilder::default();
    for i in 0..150u64 {
        b.push(id(i), 65536 + i, &mut |_, n| nodes.push(n));
    }
    let r = b.finish(&mut |_, n| nodes.push(n));
    assert!(r.height >= 2);
    let root = nodes.pop().unwrap();
    put("builder-root", &FileNode::decode(&root).unwrap());
    nodes.sort_by_key(Vec::len);
    put("builder-leaf", &FileNode::decode(&nodes[0]).unwrap());
}

fn snapshots(o: &mut Out) {
    let mut put = |name: &str, s: &Snapshot| {
        let b = s.encode();
        o.put("snapshot", name, &b, Snapshot::decode(&b).is_ok());
    };
    let minimal = Snapshot {
        root: DirRef {
            height: 0,
            root: id(0),
        },
        parents: vec![],
        time_ns: 0,
        workspace: String::new(),
        source: vec![],
        hostname: String::new(),
        message: String::new(),
        metadata: BTreeMap::new(),
        stats: SnapshotStats::default(),
        runs: vec![],
    };
    put("minimal", &minimal);
    put(
        "full",
        &Snapshot {
            root: DirRef {
                height: 15,
                root: id(1),
            },
            parents: vec![id(2), id(3), id(2)],
            time_ns: i64::MIN,
            workspace: "main".into(),
            source: b"/home/\xffx".to_vec(),
            hostname: "host".into(),
            message: "train run ✓\nsecond line".into(),
            metadata: [
                ("".to_string(), "".to_string()),
                ("lr".into(), "0.001".into()),
                ("épochs".into(), "10".into()),
            ]
            .into(),
            stats: SnapshotStats {
                files: u64::MAX,
                dirs: 1,
                symlinks: 128,
                bytes: 1 << 40,
            },
            runs: vec![id(6), id(7)],
        },
    );
    put(
        "typical",
        &Snapshot {
            root: DirRef {
                height: 1,
                root: id(4),
            },
            parents: vec![id(5)],
            time_ns: 1_763_000_000_123_456_789,
            workspace: "exp/42".into(),
            source: b"/data/project".to_vec(),
            hostname: "gpu-01".into(),
            message: "after epoch 3".into(),
            metadata: [("commit".to_string(), "abc123".to_string())].into(),
            stats: SnapshotStats {
                files: 1200,
                dirs: 40,
                symlinks: 2,
                bytes: 123_456_789,
            },
            runs: vec![],
        },
    );
}

/// `flags x:u64le trailer` as the `pack_trailer` target reads it.
fn pack_input(flags: u8, x: u64, trailer: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&x.to_le_bytes());
    v.extend_from_slice(trailer);
    v
}

fn pack_trailers(o: &mut Out) {
    let entry = |i: u64, kind, stored, offset, stored_len, raw_len| PackEntry {
        id: id(i),
        kind,
        stored,
        offset,
        stored_len,
        raw_len,
    };
    let sets: Vec<(&str, Vec<PackEntry>)> = vec![
        ("empty", vec![]),
        (
            "one-raw",
            vec![entry(1, ObjectKind::Chunk, Stored::Raw, 8, 100, 100)],
        ),
        (
            "mixed",
            vec![
                entry(1, ObjectKind::Chunk, Stored::Zstd, 8, 40, 4000),
                entry(2, ObjectKind::FileNode, Stored::Raw, 48, 70, 70),
                entry(3, ObjectKind::DirNode, Stored::Raw, 200, 0, 0),
                entry(
                    4,
                    ObjectKind::Snapshot,
                    Stored::Zstd,
                    200,
                    10,
                    pack::MAX_OBJECT,
                ),
            ],
        ),
    ];
    for (name, entries) in &sets {
        let (_, t) = pack::encode_trailer(entries);
        let data_len: u64 = entries
            .iter()
            .map(|e| e.offset + u64::from(e.stored_len))
            .max()
            .unwrap_or(8)
            - 8;
        let pack_len = 8 + data_len + t.len() as u64;
        let ok = pack::decode_trailer(&t, pack_len).is_ok();
        // Exact pack length (slack 0), some slack, and the raw length form.
        o.put(
            "pack_trailer",
            &format!("{name}-exact"),
            &pack_input(0, data_len, &t),
            ok,
        );
        o.put(
            "pack_trailer",
            &format!("{name}-slack"),
            &pack_input(0, data_len + 1000, &t),
            ok,
        );
        o.put(
            "pack_trailer",
            &format!("{name}-raw-len"),
            &pack_input(1, pack_len, &t),
            ok,
        );
        // Fix-up mode: the footer is recomputed, so a zeroed one works too.
        let mut zeroed = t.clone();
        let n = zeroed.len();
        zeroed[n - pack::FOOTER_SIZE..].fill(0);
        o.put(
            "pack_trailer",
            &format!("{name}-fixup"),
            &pack_input(2, data_len, &zeroed),
            ok,
        );
    }
}

fn store_configs(o: &mut Out) {
    let mut put = |name: &str, bytes: &[u8]| {
        o.put(
            "store_config",
            name,
            bytes,
            StoreConfig::decode(bytes).is_ok(),
        );
    };
    let c = StoreConfig::new("0123456789abcdef0123456789abcdef".into());
    put("default", &c.encode());
    let mut none = c.clone();
    none.compression = Compression::None;
    none.pack_size = 64 * 1024;
    none.chunker.min = 2048;
    none.chunker.avg = 8192;
    none.chunker.max = 65536;
    put("none-small", &none.encode());
    let mut max = c.clone();
    max.compression = Compression::Zstd { level: 19 };
    max.pack_size = 1 << 30;
    max.store_id = "\u{e9}\"\\\n\u{1F600}".into();
    put("zstd19-max", &max.encode());
    let mut fast = c.clone();
    fast.compression = Compression::Zstd { level: -7 };
    put("zstd-fast", &fast.encode());
    // Same values, written compactly and with fields reordered.
    put(
        "compact-reordered",
        br#"{"pack_size":33554432,"compression":{"level":3,"algorithm":"zstd"},"chunker":{"max":262144,"avg":65536,"min":16384},"store_id":"ab","version":1,"format":"ds-store"}"#,
    );
}

/// `n ops buf` as the `codec` target reads it.
fn codec_input(ops: &[u8], buf: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::try_from(ops.len()).unwrap()];
    v.extend_from_slice(ops);
    v.extend_from_slice(buf);
    v
}

fn codecs(o: &mut Out) {
    let mut put = |name: &str, ops: &[u8], buf: &[u8]| {
        o.put("codec", name, &codec_input(ops, buf), true);
    };
    put("empty", &[], &[]);
    // header, u8, varint, ivarint, bounded(0o7777), id, bytes(1<<20), take(3)
    let mut w = Writer::new();
    w.u8(b'D');
    w.u8(1);
    w.u8(7);
    w.varint(300);
    w.ivarint(-5);
    w.varint(0o644);
    w.id(&id(9));
    w.bytes(b"hello");
    w.buf.extend_from_slice(b"xyz");
    put(
        "every-read",
        &[7, b'D', 1, 0, 1, 2, 3, 4, 4, 5, 5, 6, 3],
        &w.buf,
    );
    let mut w = Writer::new();
    w.varint(u64::MAX);
    w.ivarint(i64::MIN);
    w.varint(127);
    w.varint(128);
    put("extremes", &[1, 2, 3, 2, 3, 3, 8], &w.buf);
    put(
        "round-trip",
        &[
            10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 10, 0x80, 0, 0, 0, 0, 0, 0, 0,
        ],
        &[],
    );
    put("truncated", &[4, 6, 200, 9, 11, 1], &[0x80, 0x80]);
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut o = Out { root, count: 0 };
    dir_nodes(&mut o);
    file_nodes(&mut o);
    snapshots(&mut o);
    pack_trailers(&mut o);
    store_configs(&mut o);
    codecs(&mut o);
    println!("wrote {} seeds under {}", o.count, o.root.display());
}
