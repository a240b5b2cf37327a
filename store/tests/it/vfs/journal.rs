//! Appending commits (a mount snapshotting without the writer lock): readers
//! see them through the journal until the next writer (or gc) folds it into
//! the index.

use std::fs;

use ds_store::progress::Progress;
use ds_store::vfs::{CommitOptions, Ino, Target, Vfs, VfsOptions};
use ds_store::{Access, Store};

use super::{cold, listing, noise, read_all, reader, resolve_path, setup};
use crate::*;

#[test]
fn an_appending_mount_is_seen_through_the_journal_until_a_writer_folds_it_in() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Files::new();
    files.insert("a.txt".into(), (b"old".to_vec(), 0o644));
    let (root, src) = setup(tmp.path(), &files);
    let base = cold(&root, &src, "w");
    let store = reader(&root);
    let mut v = Vfs::open_workspace(store.clone(), "w", VfsOptions::default(), false).unwrap();
    // A reader opened before the append, which must find the new objects.
    let early = Store::open(&root, Access::Read, true).unwrap();
    let big = noise(3 << 20, 5);
    let (_, fh) = v.create(Ino::ROOT, b"big.bin", 0o644, 0, 0).unwrap();
    v.write(fh, 0, &big).unwrap();
    v.release(fh);

    // While another writer holds the store, the append waits for it.
    let writer = Store::open(&root, Access::Write, true).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let r = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = v
                .commit(
                    Target::Append(store.append().unwrap()),
                    &CommitOptions::default(),
                )
                .unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "appended under a writer"
        );
        drop(writer);
        h.join().unwrap()
    });
    assert_eq!(r.parent, Some(base));
    let journal = root.join("journal");
    let marked = fs::read_dir(&journal).unwrap().count();
    assert!(marked >= 1, "no pack journaled");

    // Readers see the snapshot, old and new alike; verify counts nothing
    // unindexed; the mount reads its own new content.
    assert_eq!(read_all(&mut v, "big.bin"), big);
    fs::write(src.join("big.bin"), &big).unwrap();
    for s in [&early, &Store::open(&root, Access::Read, true).unwrap()] {
        assert_eq!(s.refs().get("w").unwrap(), Some(r.id));
        let out = tmp.path().join(format!(
            "restore-{}",
            fs::read_dir(tmp.path()).unwrap().count()
        ));
        let root = s.load_snapshot(&r.id).unwrap().root;
        ds_store::restore::restore(s, &root, &out, Default::default(), &Progress::default())
            .unwrap();
        assert_eq!(fs::read(out.join("big.bin")).unwrap(), big);
        let report = ds_store::verify::verify(s, &Progress::default()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.unindexed_packs, 0);
    }
    drop(early);

    // The next writer folds the journal into the index and empties it; a
    // cold snapshot of the same tree is the same snapshot.
    let expect = cold(&root, &src, "cold");
    assert_eq!(fs::read_dir(&journal).unwrap().count(), 0);
    let s = Store::open(&root, Access::Read, true).unwrap();
    assert_eq!(listing(&s, r.id), listing(&s, expect));
    assert!(
        s.index().get(&r.id).unwrap().is_some(),
        "snapshot not indexed"
    );
    drop(s);

    // A second append after the fold still works (and dedups against it).
    let a = resolve_path(&mut v, "a.txt");
    let fh = v.open(a, true, false).unwrap();
    v.write(fh, 0, b"new").unwrap();
    v.release(fh);
    let r2 = v
        .commit(
            Target::Append(store.append().unwrap()),
            &CommitOptions::default(),
        )
        .unwrap();
    assert!(r2.written.raw_bytes < 64 * 1024, "{:?}", r2.written);
    // gc (once the mount is gone) folds the journal first, so it keeps
    // everything the appended snapshots reach.
    drop(v);
    drop(store);
    assert!(fs::read_dir(&journal).unwrap().count() >= 1);
    let s = Store::open(&root, Access::Exclusive, true).unwrap();
    assert_eq!(fs::read_dir(&journal).unwrap().count(), 0);
    ds_store::gc::gc(&s, Default::default()).unwrap();
    assert_eq!(s.refs().get("w").unwrap(), Some(r2.id));
    let report = ds_store::verify::verify(&s, &Progress::default()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let out = tmp.path().join("after-gc");
    let root2 = s.load_snapshot(&r2.id).unwrap().root;
    ds_store::restore::restore(&s, &root2, &out, Default::default(), &Progress::default()).unwrap();
    assert_eq!(fs::read(out.join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"new");
}
