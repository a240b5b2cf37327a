//! Micro-benchmarks of the hot paths, each beside the in-process limits it
//! cannot beat: BLAKE3 alone and FastCDC alone over the same buffer.
//!
//! Run: `cargo bench -p ds-benches --profile dev` (the one build profile;
//! dependencies are fully optimised in it). Under `cargo test` each bench
//! runs once, which keeps them compiling and working.

use std::hint::black_box;
use std::sync::OnceLock;

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, bench};
use ds_format::ObjectKind;
use ds_format::chunker::{Chunker, ChunkerParams};
use ds_format::config::Compression;
use ds_format::manifest::FileRef;
use ds_format::tree::{DirBuilder, DirNode, Entry, EntryData};
use ds_store::writer::{self, Payload};
use ds_store::{Access, InitOptions, Store};

const BUF: usize = 32 << 20;

fn data() -> &'static [u8] {
    static D: OnceLock<Vec<u8>> = OnceLock::new();
    D.get_or_init(|| {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..BUF)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

fn chunker() -> Chunker {
    Chunker::new(ChunkerParams::default()).unwrap()
}

fn main() {
    divan::main();
}

/// Limit: BLAKE3 on one thread.
#[bench]
fn limit_blake3_1_thread(b: Bencher) {
    let d = data();
    b.counter(BytesCount::of_slice(d))
        .bench(|| black_box(blake3::hash(d)));
}

/// Limit: FastCDC alone (cut points only).
#[bench]
fn limit_fastcdc(b: Bencher) {
    let (d, c) = (data(), chunker());
    b.counter(BytesCount::of_slice(d)).bench(|| {
        let mut v = Vec::with_capacity(1024);
        black_box(c.split(d, true, &mut v));
        v
    });
}

/// What ingest does per byte on one thread: cut, then hash each chunk.
#[bench]
fn chunk_and_hash_1_thread(b: Bencher) {
    let (d, c) = (data(), chunker());
    b.counter(BytesCount::of_slice(d)).bench(|| {
        let mut lens = Vec::with_capacity(1024);
        c.split(d, true, &mut lens);
        let mut off = 0;
        for l in lens {
            black_box(ObjectKind::Chunk.hash(&d[off..off + l]));
            off += l;
        }
    });
}

fn dir_entries(n: usize) -> Vec<Entry> {
    let mut v: Vec<Entry> = (0..n)
        .map(|i| Entry {
            name: format!("file-{i:08}.csv").into_bytes(),
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            owner: None,
            xattrs: Vec::new(),
            link: None,
            data: EntryData::File(FileRef {
                size: i as u64 * 1000 + 1,
                height: 0,
                root: ObjectKind::Chunk.hash(&i.to_le_bytes()),
            }),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Directory tree encoding (content-defined split, hashing of nodes).
#[bench(args = [1_000, 100_000])]
fn tree_encode(b: Bencher, n: usize) {
    let entries = dir_entries(n);
    b.counter(ItemsCount::new(n)).bench(|| {
        let mut d = DirBuilder::default();
        let mut sink = |_, bytes: Vec<u8>| drop(black_box(bytes));
        for e in entries.iter().cloned() {
            d.push(e, &mut sink).unwrap();
        }
        d.finish(&mut sink)
    });
}

/// Decoding (and validating) a leaf of 4096 entries.
#[bench]
fn tree_decode(b: Bencher) {
    let node = DirNode::Leaf(dir_entries(4096)).encode();
    b.counter(ItemsCount::new(4096usize))
        .bench(|| DirNode::decode(black_box(&node)).unwrap());
}

/// A store in RAM when /dev/shm exists, so pack write and read measure ds,
/// not the disk (the end-to-end harness measures the disk).
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn store(dir: &std::path::Path) -> Store {
    Store::init(
        &dir.join("s"),
        &InitOptions {
            compression: Some(Compression::None),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Pack writer pipeline: 32 MiB of new 64 KiB objects to committed,
/// indexed packs (fsync included; on tmpfs it costs nothing).
#[bench(sample_count = 10)]
fn pack_write(b: Bencher) {
    let d = data();
    let fresh = || {
        let t = scratch();
        let s = store(t.path());
        (t, s)
    };
    b.counter(BytesCount::of_slice(d))
        .with_inputs(fresh)
        .bench_refs(|(_, s)| {
            let session = writer::start(
                s.packs().clone(),
                s.index().clone(),
                Compression::None,
                32 << 20,
            );
            for c in d.chunks(64 << 10) {
                let id = ObjectKind::Chunk.hash(c);
                session
                    .writer()
                    .put(ObjectKind::Chunk, id, Payload::Owned(c.to_vec()))
                    .unwrap();
            }
            session.finish().unwrap()
        });
}

struct Filled {
    _dir: tempfile::TempDir,
    store: Store,
    ids: Vec<ds_format::ObjectId>,
}

fn filled() -> &'static Filled {
    static F: OnceLock<Filled> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch();
        let s = store(dir.path());
        let session = writer::start(
            s.packs().clone(),
            s.index().clone(),
            Compression::None,
            32 << 20,
        );
        let mut ids = Vec::new();
        for c in data().chunks(64 << 10) {
            let id = ObjectKind::Chunk.hash(c);
            session
                .writer()
                .put(ObjectKind::Chunk, id, Payload::Owned(c.to_vec()))
                .unwrap();
            ids.push(id);
        }
        session.finish().unwrap();
        drop(s);
        let store = Store::open(&dir.path().join("s"), Access::Read, false).unwrap();
        Filled {
            _dir: dir,
            store,
            ids,
        }
    })
}

/// Reading objects back: index lookup, pread, rehash against the id.
#[bench]
fn pack_read_verified(b: Bencher) {
    let f = filled();
    b.counter(BytesCount::new(f.ids.len() * (64 << 10)))
        .bench(|| {
            for id in &f.ids {
                black_box(f.store.read_object(id, ObjectKind::Chunk).unwrap());
            }
        });
}

/// Index point lookups (RocksDB, bloom filter, block cache).
#[bench]
fn index_lookup(b: Bencher) {
    let f = filled();
    b.counter(ItemsCount::new(f.ids.len())).bench(|| {
        for id in &f.ids {
            black_box(f.store.index().get(id).unwrap());
        }
    });
}
