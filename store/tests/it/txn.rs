//! The one write transaction: its barriers and its refusals.

use ds_store::format::ObjectKind;
use ds_store::format::snapshot::SnapshotStats;
use ds_store::format::tree::DirBuilder;
use ds_store::txn::{NewSnapshot, Target, Transaction};
use ds_store::writer::Payload;
use ds_store::{Access, InitOptions, Store, StoreError};

fn empty_snapshot(parent: Option<ds_store::format::ObjectId>) -> NewSnapshot {
    let root = DirBuilder::default().finish(&mut |_, _| {});
    NewSnapshot {
        root,
        parent,
        workspace: "w".into(),
        source: b"/src".to_vec(),
        message: "m".into(),
        metadata: Default::default(),
        stats: SnapshotStats {
            dirs: 1,
            ..Default::default()
        },
        time_ns: None,
        runs: Vec::new(),
    }
}

#[test]
fn a_transaction_makes_objects_durable_before_the_ref_moves() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::init(dir.path(), &InitOptions::default()).unwrap();
    let chunk = b"some bytes".to_vec();
    let cid = ObjectKind::Chunk.hash(&chunk);

    // Dropped before finish: nothing is referenced, the ref is untouched.
    {
        let txn = Transaction::begin(Target::Borrowed(&st)).unwrap();
        txn.writer()
            .put(ObjectKind::Chunk, cid, Payload::Owned(chunk.clone()))
            .unwrap();
    }
    assert_eq!(st.refs().get("w").unwrap(), None);

    let txn = Transaction::begin(Target::Borrowed(&st)).unwrap();
    let root = DirBuilder::default().finish(&mut |id, b| {
        txn.writer()
            .put(ObjectKind::DirNode, id, Payload::Owned(b))
            .unwrap()
    });
    let (id, snap) = txn
        .put_snapshot(NewSnapshot {
            root,
            ..empty_snapshot(None)
        })
        .unwrap();
    assert_eq!(snap.parents, []);
    assert!(snap.time_ns > 0, "the time defaults to now");
    let done = txn.finish().unwrap();
    // Durable and findable before the ref moves.
    assert!(done.store().locate(&id).unwrap().is_some());
    assert_eq!(done.store().refs().get("w").unwrap(), None);
    let stats = done.swap_ref("w", None, id).unwrap();
    assert!(stats.objects >= 2);
    assert_eq!(st.refs().get("w").unwrap(), Some(id));
    assert_eq!(st.load_snapshot(&id).unwrap().message, "m");

    // A stale expected head is refused, and the ref stays where it was.
    let txn = Transaction::begin(Target::Borrowed(&st)).unwrap();
    let (id2, _) = txn.put_snapshot(empty_snapshot(Some(id))).unwrap();
    let e = txn.commit("w", None, id2).unwrap_err();
    assert!(matches!(e, StoreError::RefConflict { .. }), "{e}");
    assert_eq!(st.refs().get("w").unwrap(), Some(id));
}

#[test]
fn a_transaction_needs_write_access() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::init(dir.path(), &InitOptions::default()).unwrap());
    let st = Store::open(dir.path(), Access::Read, true).unwrap();
    let e = Transaction::begin(Target::Borrowed(&st)).unwrap_err();
    assert!(matches!(e, StoreError::WrongAccess(_)), "{e}");
}
