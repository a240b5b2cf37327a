//! A store written by an earlier build opens, reads and takes new writes.
//!
//! The fixture `tests/fixtures/store-2026-12.tar` was made by
//! `tests/fixtures/make-store-fixture.sh` with the `ds` of commit 1f1e9e6
//! (before the reshape of issue 11): two snapshots of a directory and one
//! of a live read-write mount, which still sits in the journal. Any change
//! to an on-disk format that breaks it fails here.

use std::path::Path;
use std::process::Command;

use crate::*;

fn unpack(dir: &Path) {
    let tar = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-2026-12.tar");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "unpacking {}", tar.display());
}

#[test]
fn a_store_written_before_the_reshape_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path());
    let store = dir.path().join("store");
    let expected = dir.path().join("expected");

    let log = json(&ok(ds(&store).args(["log", "proj", "--json"])));
    let msgs: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["message"].as_str().unwrap())
        .collect();
    assert_eq!(msgs, ["live", "second", "first"]);

    for (spec, want) in [("proj~2", "v1"), ("proj~1", "v2")] {
        let out = dir.path().join(format!("restored-{want}"));
        ok(ds(&store).arg("restore").arg(spec).arg(&out));
        assert_same_tree(&out, &expected.join(want));
    }
    let live = ok(ds(&store).args(["cat", "proj", "added.txt"]));
    assert_eq!(live.stdout, b"live\n");
    // The journaled snapshot resolves by id prefix too.
    let id = log[0]["id"].as_str().unwrap();
    let ls = ok(ds(&store).args(["ls", &id[..10]]));
    assert!(String::from_utf8_lossy(&ls.stdout).contains("added.txt"));

    ok(ds(&store).args(["verify"]));
    // New writes go on top: a snapshot, a mount-free gc, and verify again.
    ok(ds(&store)
        .args(["snapshot", "--workspace", "again"])
        .arg(expected.join("v2")));
    ok(ds(&store).args(["gc"]));
    ok(ds(&store).args(["verify"]));
    let out = dir.path().join("restored-again");
    ok(ds(&store).args(["restore", "again"]).arg(&out));
    assert_same_tree(&out, &expected.join("v2"));

    // A read-write mount over format-1 trees: the directories it changes
    // are written in today's format, the rest stays as it was, and both
    // read back (a hard link and a FIFO made there survive a restore).
    if !crate::mount::fuse_available() {
        return;
    }
    let mp = dir.path().join("mnt");
    let m = crate::mount::Mount::start(&store, &["--rw", "proj"], &mp);
    crate::mount::sh(&mp, "ln data.csv data-link.csv && mkfifo pipe");
    ok(ds(&store)
        .args(["snapshot", "--workspace", "proj"])
        .arg(&mp));
    m.umount();
    ok(ds(&store).args(["verify"]));
    let out = dir.path().join("restored-mixed");
    ok(ds(&store).args(["restore", "proj"]).arg(&out));
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (a, b) = (
        std::fs::metadata(out.join("data.csv")).unwrap(),
        std::fs::metadata(out.join("data-link.csv")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert!(
        std::fs::symlink_metadata(out.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_same_tree(&out.join("src"), &expected.join("v2/src"));
}
