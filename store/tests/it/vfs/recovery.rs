//! The dirty layer across a process's death: every checkpointed change comes
//! back on reopening, and a dirty layer over a workspace that moved meanwhile
//! is refused unless discarded.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use ds_store::vfs::{Ino, RenameFlags, Vfs, VfsOptions};
use ds_store::{Access, Store};

use super::{cold, commit, listing, read_all, reader, resolve_path, sample, setup};

#[test]
fn recovery_after_drop_restores_every_checkpointed_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, src) = setup(tmp.path(), &sample());
    cold(&root, &src, "w");
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
    let d = v.mkdir(Ino::ROOT, b"newdir", 0o750, 0, 0).unwrap();
    let (_, fh) = v.create(d.ino, b"f.txt", 0o640, 0, 0).unwrap();
    v.write(fh, 0, b"durable").unwrap();
    let big = resolve_path(&mut v, "big.bin");
    let fh2 = v.open(big, true, false).unwrap();
    v.write(fh2, 100_000, b"PATCH").unwrap();
    v.unlink(Ino::ROOT, b"empty").unwrap();
    v.symlink(Ino::ROOT, b"ln", b"text/a.txt", 0, 0).unwrap();
    v.rename(
        Ino::ROOT,
        b"text",
        Ino::ROOT,
        b"texts",
        RenameFlags::default(),
    )
    .unwrap();
    v.fsync(big).unwrap();
    drop(v);
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
    assert_eq!(read_all(&mut v, "newdir/f.txt"), b"durable");
    let mut expect = sample()["big.bin"].0.clone();
    expect[100_000..100_005].copy_from_slice(b"PATCH");
    assert_eq!(read_all(&mut v, "big.bin"), expect);
    assert_eq!(
        v.lookup(Ino::ROOT, b"empty").unwrap_err().errno,
        libc::ENOENT
    );
    let ln = resolve_path(&mut v, "ln");
    assert_eq!(v.readlink(ln).unwrap(), b"text/a.txt");
    assert_eq!(read_all(&mut v, "texts/b.txt"), b"b");
    let nd = resolve_path(&mut v, "newdir");
    assert_eq!(v.getattr(nd).unwrap().perm, 0o750);
    // And it snapshots to what a cold snapshot of the same tree gives.
    let r = commit(&root, &mut v);
    fs::create_dir(src.join("newdir")).unwrap();
    fs::write(src.join("newdir/f.txt"), b"durable").unwrap();
    fs::set_permissions(src.join("newdir"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(src.join("newdir/f.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(src.join("big.bin"), &expect).unwrap();
    fs::remove_file(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("text/a.txt", src.join("ln")).unwrap();
    fs::rename(src.join("text"), src.join("texts")).unwrap();
    let cold_id = cold(&root, &src, "cold");
    let s = Store::open(&root, Access::Read, true).unwrap();
    assert_eq!(listing(&s, r.id), listing(&s, cold_id));
    assert_eq!(
        s.load_snapshot(&r.id).unwrap().stats,
        s.load_snapshot(&cold_id).unwrap().stats
    );
    drop(v);
    // After a snapshot the dirty layer is empty: nothing left to recover.
    let overlays = fs::read_dir(root.join("mounts/w/overlay")).unwrap().count();
    assert_eq!(overlays, 0);
}

#[test]
fn a_dirty_layer_over_a_moved_workspace_is_refused_unless_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, src) = setup(tmp.path(), &sample());
    cold(&root, &src, "w");
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
    let (a, fh) = v.create(Ino::ROOT, b"unsaved", 0o644, 0, 0).unwrap();
    v.write(fh, 0, b"x").unwrap();
    v.fsync(a.ino).unwrap();
    drop(v);
    // Someone else moves the workspace meanwhile.
    fs::write(src.join("other"), b"y").unwrap();
    cold(&root, &src, "w");
    let e = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap_err();
    assert!(e.to_string().contains("--discard-dirty"), "{e}");
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), true).unwrap();
    assert_eq!(
        v.lookup(Ino::ROOT, b"unsaved").unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(read_all(&mut v, "other"), b"y");
}
