//! Snapshots crafted by a hostile peer: names that climb out of the target,
//! and symlinks that point outside it. Restore must refuse them, say why, and
//! never write outside DEST.

use std::fs;
use std::path::Path;

use ds_store::format::config::Compression;
use ds_store::format::manifest::FileRef;
use ds_store::format::snapshot::Snapshot;
use ds_store::format::tree::{DirNode, DirRef, Entry, EntryData};
use ds_store::format::{ObjectId, ObjectKind};
use ds_store::writer::{self, Payload};
use ds_store::{Access, Store};

use crate::*;

/// Writes a snapshot whose root directory holds exactly `entries` (encoded
/// as-is, bypassing every check a builder would make) into workspace `ws`.
fn craft(store: &Path, ws: &str, entries: Vec<Entry>) -> ObjectId {
    let s = Store::open(store, Access::Write, true).unwrap();
    let session = writer::start(
        s.packs().clone(),
        s.index().clone(),
        Compression::None,
        1 << 20,
    );
    let w = session.writer();
    let data = b"payload".to_vec();
    w.put(
        ObjectKind::Chunk,
        ObjectKind::Chunk.hash(&data),
        Payload::Owned(data),
    )
    .unwrap();
    let node = DirNode::Leaf(entries).encode();
    let nid = ObjectKind::DirNode.hash(&node);
    w.put(ObjectKind::DirNode, nid, Payload::Owned(node))
        .unwrap();
    let snap = Snapshot {
        root: DirRef {
            height: 0,
            root: nid,
        },
        parents: vec![],
        time_ns: 0,
        workspace: ws.into(),
        source: b"/crafted".to_vec(),
        hostname: "evil".into(),
        message: String::new(),
        metadata: Default::default(),
        stats: Default::default(),
        runs: Vec::new(),
    };
    let sb = snap.encode();
    let sid = ObjectKind::Snapshot.hash(&sb);
    w.put(ObjectKind::Snapshot, sid, Payload::Owned(sb))
        .unwrap();
    session.finish().unwrap();
    s.index().sync().unwrap();
    s.refs().swap(ws, None, sid).unwrap();
    sid
}

fn file(name: &[u8]) -> Entry {
    Entry {
        name: name.to_vec(),
        mode: 0o644,
        mtime_ns: 0,
        owner: None,
        xattrs: Vec::new(),
        link: None,
        data: EntryData::File(FileRef {
            size: 7,
            height: 0,
            root: ObjectKind::Chunk.hash(b"payload"),
        }),
    }
}

fn link(name: &str, target: &str) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        mode: 0o777,
        mtime_ns: 0,
        owner: None,
        xattrs: Vec::new(),
        link: None,
        data: EntryData::Symlink(target.as_bytes().to_vec()),
    }
}

#[test]
fn names_that_escape_are_refused() {
    for bad in [&b".."[..], b"../../escaped", b"/etc/escaped", b"a\0b", b"."] {
        let t = tempfile::tempdir().unwrap();
        let store = t.path().join("store");
        ok(ds(&store).arg("init"));
        craft(&store, "evil", vec![file(bad)]);
        let dest = t.path().join("sub/dest");
        fs::create_dir_all(t.path().join("sub")).unwrap();
        let out = ds(&store)
            .args(["restore", "evil"])
            .arg(&dest)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid entry name"), "{err}");
        assert!(!t.path().join("escaped").exists() && !t.path().join("sub/escaped").exists());
        // verify names the damage too
        let out = ds(&store).arg("verify").output().unwrap();
        assert_eq!(out.status.code(), Some(1));
    }
}

#[test]
fn symlinks_that_escape_are_refused_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    ok(ds(&store).arg("init"));
    craft(
        &store,
        "evil",
        vec![
            link("abs", "/etc/passwd"),
            file(b"good"),
            link("inside", "good"),
            link("up", "../outside"),
        ],
    );
    let dest = t.path().join("dest");
    let out = ds(&store)
        .args(["restore", "evil"])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("abs: refused") && err.contains("up: refused"),
        "{err}"
    );
    assert_eq!(fs::read(dest.join("good")).unwrap(), b"payload");
    assert_eq!(
        fs::read_link(dest.join("inside")).unwrap(),
        Path::new("good")
    );
    assert!(fs::symlink_metadata(dest.join("abs")).is_err());
    assert!(fs::symlink_metadata(dest.join("up")).is_err());

    let dest2 = t.path().join("dest2");
    ok(ds(&store)
        .args(["restore", "--allow-escaping-symlinks", "evil"])
        .arg(&dest2));
    assert_eq!(
        fs::read_link(dest2.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
}
