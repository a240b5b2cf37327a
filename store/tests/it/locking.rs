//! Readers and writers side by side: a long-lived reader (a mount, a hub
//! serving downloads) neither blocks snapshots nor misses what they write,
//! and only gc waits for readers to leave.

use ds_store::format::config::Compression;
use ds_store::ingest::{SnapshotOptions, snapshot};
use ds_store::progress::Progress;
use ds_store::{Access, Store, StoreError};

use crate::*;

#[test]
fn reader_sees_later_snapshots_and_only_gc_waits_for_it() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let opts = |w: &str| SnapshotOptions {
        workspace: w.into(),
        ..Default::default()
    };
    let mut files = Files::new();
    files.insert("a.txt".into(), (b"first".repeat(3000), 0o644));
    write_files(&t.path().join("one"), &files);
    {
        let s = small_store(&root, Compression::None);
        snapshot(
            &s,
            &t.path().join("one"),
            &opts("one"),
            &Progress::default(),
        )
        .unwrap();
    }

    let reader = Store::open(&root, Access::Read, false).unwrap();

    // A writer opens without waiting while the reader is open.
    let writer = Store::open(&root, Access::Write, false).unwrap();
    // ...and a second writer is turned away.
    assert!(matches!(
        Store::open(&root, Access::Write, false),
        Err(StoreError::Locked(_))
    ));
    files.insert(
        "b.bin".into(),
        (
            (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect(),
            0o600,
        ),
    );
    write_files(&t.path().join("two"), &files);
    let r = snapshot(
        &writer,
        &t.path().join("two"),
        &opts("two"),
        &Progress::default(),
    )
    .unwrap();
    drop(writer);

    // The reader, opened before, finds the new snapshot and all its data.
    let snap = reader.load_snapshot(&r.id).unwrap();
    let e = reader.lookup(&snap.root, b"b.bin").unwrap().unwrap();
    let ds_store::format::tree::EntryData::File(f) = e.data else {
        panic!("b.bin is not a file")
    };
    let mut out = Vec::new();
    reader.read_file(&f, &mut out).unwrap();
    assert_eq!(out, files["b.bin"].0);

    // gc needs everyone gone.
    assert!(matches!(
        Store::open(&root, Access::Exclusive, false),
        Err(StoreError::Locked(_))
    ));
    // A gc waiting for the reader does not hold the writer lock meanwhile:
    // writers (a mount's snapshot among them) keep going.
    let gc_done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let gc = sc.spawn(|| {
            let s = Store::open(&root, Access::Exclusive, true).unwrap();
            gc_done.store(true, std::sync::atomic::Ordering::SeqCst);
            s
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        for _ in 0..3 {
            let w = Store::open(&root, Access::Write, true).unwrap();
            drop(w);
        }
        assert!(!gc_done.load(std::sync::atomic::Ordering::SeqCst));
        drop(reader);
        drop(gc.join().unwrap());
    });
    Store::open(&root, Access::Exclusive, false).unwrap();
}
