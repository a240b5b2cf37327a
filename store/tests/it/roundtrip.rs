//! Property: any file set snapshots and restores byte-equal, before and
//! after edits, with and without compression.

use ds_store::format::config::Compression;
use ds_store::ingest::{SnapshotOptions, snapshot};
use ds_store::progress::Progress;
use ds_store::resolve::resolve;
use ds_store::restore::{RestoreOptions, restore};
use proptest::prelude::*;

use crate::*;

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // empty, tiny, around the chunk sizes, several chunks, compressible
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 1..300),
        proptest::collection::vec(any::<u8>(), 200..9000),
        (1usize..40_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        (1usize..60_000, any::<u64>()).prop_map(|(n, s)| {
            let mut x = s | 1;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }),
    ]
}

fn files() -> impl Strategy<Value = Files> {
    let name = "[a-z]{1,3}";
    let path = proptest::collection::vec(name, 1..4).prop_map(|v| v.join("/"));
    proptest::collection::btree_map(
        path,
        (
            content(),
            prop_oneof![Just(0o644u32), Just(0o755), Just(0o600)],
        ),
        0..25,
    )
    .prop_filter("a path cannot be both a file and a directory", |m| {
        m.keys()
            .all(|k| !m.keys().any(|o| o.starts_with(&format!("{k}/"))))
    })
}

fn snap(store: &ds_store::Store, dir: &std::path::Path) -> ds_store::format::ObjectId {
    let opts = SnapshotOptions {
        workspace: "w".into(),
        ..Default::default()
    };
    snapshot(store, dir, &opts, &Progress::default())
        .unwrap()
        .id
}

fn restored(store: &ds_store::Store, spec: &str, dest: &std::path::Path) -> Files {
    let id = resolve(store, spec).unwrap();
    let s = store.load_snapshot(&id).unwrap();
    let r = restore(
        store,
        &s.root,
        dest,
        RestoreOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    read_files(dest)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_file_set_round_trips(a in files(), b in files(), zstd: bool) {
        let t = tempfile::tempdir().unwrap();
        let comp = if zstd { Compression::Zstd { level: 1 } } else { Compression::None };
        let store = small_store(&t.path().join("store"), comp);
        let work = t.path().join("work");
        write_files(&work, &a);
        snap(&store, &work);
        // replace the content with b (files of a not in b removed)
        std::fs::remove_dir_all(&work).unwrap();
        write_files(&work, &b);
        snap(&store, &work);
        prop_assert_eq!(&restored(&store, "w~1", &t.path().join("r1")), &a);
        prop_assert_eq!(&restored(&store, "w", &t.path().join("r2")), &b);
        let v = ds_store::verify::verify(&store, &Progress::default()).unwrap();
        prop_assert!(v.problems.is_empty(), "{:?}", v.problems);
    }
}

#[test]
fn insertion_in_a_big_file_stores_little() {
    let t = tempfile::tempdir().unwrap();
    let store = small_store(&t.path().join("store"), Compression::None);
    let work = t.path().join("work");
    let mut x = 7u64;
    let big: Vec<u8> = (0..2_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    write_files(&work, &[("big".to_string(), (big.clone(), 0o644))].into());
    snap(&store, &work);
    let mut edited = big[..1_000_000].to_vec();
    edited.extend_from_slice(b"inserted bytes");
    edited.extend_from_slice(&big[1_000_000..]);
    std::fs::write(work.join("big"), &edited).unwrap();
    let opts = SnapshotOptions {
        workspace: "w".into(),
        ..Default::default()
    };
    let r = snapshot(&store, &work, &opts, &Progress::default()).unwrap();
    // chunks around the edit (max 4 KiB each) plus O(log n) manifest nodes
    assert!(r.written.raw_bytes < 40_000, "{:?}", r.written);
    assert_eq!(restored(&store, "w", &t.path().join("r"))["big"].0, edited);
}

/// A sparse file comes back sparse: its holes (and any page-sized run of
/// zeros) are not written, and the bytes read back the same.
#[test]
fn a_sparse_file_restores_sparse() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let t = tempfile::tempdir().unwrap();
    let store = small_store(&t.path().join("store"), Compression::Zstd { level: 1 });
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"middle", 32 << 20).unwrap();
    drop(f);
    let f = std::fs::File::create(src.join("ends-in-a-hole")).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    snap(&store, &src);
    let out = t.path().join("out");
    let id = resolve(&store, "w").unwrap();
    let root = store.load_snapshot(&id).unwrap().root;
    restore(
        &store,
        &root,
        &out,
        RestoreOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    for name in ["sparse", "ends-in-a-hole"] {
        let (a, b) = (src.join(name), out.join(name));
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{name}"
        );
        let m = std::fs::metadata(&b).unwrap();
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{name}: {} bytes allocated",
            m.blocks() * 512
        );
    }
}
