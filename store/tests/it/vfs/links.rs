//! What a home directory holds besides files: hard links, FIFOs, sockets,
//! device nodes, owners and extended attributes — recorded by a cold
//! snapshot, shown by a mount, created and changed through a read-write
//! mount, carried by its snapshot and its dirty layer, and restored.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use ds_store::format::tree::{Entry, EntryData, Owner};
use ds_store::progress::Progress;
use ds_store::restore::{RestoreOptions, restore};
use ds_store::vfs::{Kind, SetAttr, Vfs, VfsOptions};
use ds_store::{Access, Store};

use super::{cold, commit, read_all, reader, resolve_path, setup};
use crate::Files;

fn files() -> Files {
    let mut f = Files::new();
    f.insert("d1/a".into(), (b"linked content".to_vec(), 0o644));
    f.insert("d2/other".into(), (b"x".to_vec(), 0o600));
    f.insert("plain".into(), (b"plain".to_vec(), 0o644));
    f
}

/// Adds what `files()` cannot: a second name of d1/a, specials, owners and
/// attributes. Device nodes and owners other than our own need root.
fn decorate(src: &Path) {
    fs::hard_link(src.join("d1/a"), src.join("d2/b")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    let sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    drop(sock);
    xattr(
        &src.join("plain"),
        "user.origin",
        b"https://example.invalid/x",
    );
    xattr(&src.join("d1"), "user.dir", b"\0\x01");
    if ds_store::meta::is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        ds_store::meta::chown(
            &src.join("plain"),
            Owner {
                uid: 1000,
                gid: 1001,
            },
        )
        .unwrap();
    }
}

fn xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// A snapshot's entries by path with hard-link groups replaced by the
/// group's first path (labels differ between a mount and a directory).
fn entries(store: &Store, snap: ds_store::format::ObjectId) -> BTreeMap<String, Entry> {
    fn walk(
        store: &Store,
        d: &ds_store::format::tree::DirRef,
        pre: &str,
        out: &mut Vec<(String, Entry)>,
    ) {
        for e in store.dir_entries(d).unwrap() {
            let p = format!("{pre}/{}", String::from_utf8_lossy(&e.name));
            if let EntryData::Dir(sub) = &e.data {
                walk(store, sub, &p, out);
            }
            out.push((p, e));
        }
    }
    let s = store.load_snapshot(&snap).unwrap();
    let mut list = Vec::new();
    walk(store, &s.root, "", &mut list);
    list.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, mut e) in list {
        if let Some(l) = &mut e.link {
            let n = first.len() as u64 + 1;
            l.group = *first.entry(l.group).or_insert(n);
        }
        e.mtime_ns = 0;
        if let EntryData::Dir(_) = e.data {
            e.data = EntryData::Fifo; // trees differ by their entries' mtimes
        }
        out.insert(p, e);
    }
    out
}

#[test]
fn a_cold_snapshot_records_links_specials_owners_and_xattrs_and_a_mount_shows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, src) = setup(tmp.path(), &files());
    decorate(&src);
    let id = cold(&root, &src, "w");
    let s = Store::open(&root, Access::Read, true).unwrap();
    let es = entries(&s, id);
    let (a, b) = (&es["/d1/a"], &es["/d2/b"]);
    assert_eq!(a.link, b.link);
    assert_eq!(a.link.unwrap().nlink, 2);
    assert_eq!(a.data, b.data);
    assert_eq!(es["/fifo"].data, EntryData::Fifo);
    assert_eq!(es["/fifo"].mode, 0o640);
    assert_eq!(es["/sock"].data, EntryData::Socket);
    assert_eq!(es["/plain"].xattrs[0].name, b"user.origin");
    assert_eq!(es["/d1"].xattrs[0].value, b"\0\x01");
    let me = fs::metadata(&src).unwrap();
    assert_eq!(
        es["/d2/other"].owner,
        Some(Owner {
            uid: me.uid(),
            gid: me.gid()
        })
    );
    if ds_store::meta::is_root() {
        assert_eq!(
            es["/plain"].owner,
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            es["/null"].data,
            EntryData::Device {
                block: false,
                rdev: rustix::fs::makedev(1, 3)
            }
        );
    }

    // A read-only mount: one inode for both names, with the recorded link
    // count before the second directory is even listed.
    let mut v = Vfs::open_snapshot(reader(&root), id, VfsOptions::default()).unwrap();
    let ia = resolve_path(&mut v, "d1/a");
    assert_eq!(v.getattr(ia).unwrap().nlink, 2);
    let ib = resolve_path(&mut v, "d2/b");
    assert_eq!(ia, ib);
    let fifo = resolve_path(&mut v, "fifo");
    assert_eq!(v.getattr(fifo).unwrap().kind, Kind::Fifo);
    let sock = resolve_path(&mut v, "sock");
    assert_eq!(v.getattr(sock).unwrap().kind, Kind::Socket);
    let plain = resolve_path(&mut v, "plain");
    assert_eq!(
        v.getxattr(plain, b"user.origin").unwrap(),
        b"https://example.invalid/x"
    );
    assert_eq!(
        v.getxattr(plain, b"user.none").unwrap_err().errno,
        libc::ENODATA
    );
    assert_eq!(v.listxattr(plain).unwrap(), b"user.origin\0");
    if ds_store::meta::is_root() {
        let a = v.getattr(plain).unwrap();
        assert_eq!((a.uid, a.gid), (1000, 1001));
        let null = resolve_path(&mut v, "null");
        let a = v.getattr(null).unwrap();
        assert_eq!(
            (a.kind, a.rdev),
            (Kind::CharDevice, rustix::fs::makedev(1, 3))
        );
    }
    // Owners forced (ds mount --uid, a container's user).
    let opts = VfsOptions {
        force_owner: Some((7, 8)),
        ..VfsOptions::default()
    };
    let mut v = Vfs::open_snapshot(reader(&root), id, opts).unwrap();
    let plain = resolve_path(&mut v, "plain");
    let a = v.getattr(plain).unwrap();
    assert_eq!((a.uid, a.gid), (7, 8));
}

#[test]
fn a_read_write_mount_makes_links_specials_and_xattrs_that_snapshot_like_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, src) = setup(tmp.path(), &files());
    decorate(&src);
    cold(&root, &src, "w");
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
    let (uid, gid) = (0, 0);
    // Change a linked file through the name whose directory is listed; the
    // other name's directory is never looked at before the snapshot.
    let ia = resolve_path(&mut v, "d1/a");
    let fh = v.open(ia, true, false).unwrap();
    v.write(fh, 0, b"LINKED").unwrap();
    v.release(fh);
    // New links, specials and attributes.
    let plain = resolve_path(&mut v, "plain");
    let d1 = resolve_path(&mut v, "d1");
    let l = v.link(plain, d1, b"plain-link").unwrap();
    assert_eq!((l.ino, l.nlink), (plain, 2));
    v.mknod_special(d1, b"pipe", libc::S_IFIFO | 0o600, 0, uid, gid)
        .unwrap();
    v.mknod_special(d1, b"s", libc::S_IFSOCK | 0o755, 0, uid, gid)
        .unwrap();
    v.setxattr(plain, b"user.new", b"v", true, false).unwrap();
    assert_eq!(
        v.setxattr(plain, b"user.new", b"w", true, false)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    assert_eq!(
        v.setxattr(plain, b"user.nope", b"w", false, true)
            .unwrap_err()
            .errno,
        libc::ENODATA
    );
    v.removexattr(plain, b"user.origin").unwrap();
    v.setattr(
        plain,
        SetAttr {
            uid: Some(uid),
            gid: Some(gid),
            ..Default::default()
        },
    )
    .unwrap();
    // The dirty layer keeps all of it across a crash (checkpoint, reopen).
    v.checkpoint().unwrap();
    drop(v);
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
    let plain = resolve_path(&mut v, "plain");
    let pl = resolve_path(&mut v, "d1/plain-link");
    assert_eq!(plain, pl);
    assert_eq!(v.getattr(plain).unwrap().nlink, 2);
    assert_eq!(v.getxattr(plain, b"user.new").unwrap(), b"v");
    assert_eq!(read_all(&mut v, "d2/b"), b"LINKED content");
    let pipe = resolve_path(&mut v, "d1/pipe");
    assert_eq!(v.getattr(pipe).unwrap().kind, Kind::Fifo);
    let r = commit(&root, &mut v);

    // The same changes on disk, snapshotted cold.
    fs::write(src.join("d1/a"), b"LINKED content").unwrap();
    fs::hard_link(src.join("plain"), src.join("d1/plain-link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("d1/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("d1/s"),
        rustix::fs::FileType::Socket,
        rustix::fs::Mode::from_raw_mode(0o755),
        0,
    )
    .unwrap();
    xattr(&src.join("plain"), "user.new", b"v");
    rustix::fs::lremovexattr(src.join("plain"), "user.origin").unwrap();
    ds_store::meta::chown(&src.join("plain"), Owner { uid, gid }).unwrap_or(());
    let cold_id = cold(&root, &src, "cold");
    let s = Store::open(&root, Access::Read, true).unwrap();
    let (mut got, mut want) = (entries(&s, r.id), entries(&s, cold_id));
    // Owners of what the test made on disk are the test's; the mount's
    // new nodes were made as uid 0.
    for m in [&mut got, &mut want] {
        for (p, e) in m.iter_mut() {
            if p.starts_with("/d1/pipe") || p.starts_with("/d1/s") || !ds_store::meta::is_root() {
                e.owner = None;
            }
        }
    }
    assert_eq!(got, want);

    // And restored: one inode per group, specials, attributes.
    let out = tmp.path().join("out");
    let snap = s.load_snapshot(&r.id).unwrap();
    let rep = restore(
        &s,
        &snap.root,
        &out,
        RestoreOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.hardlinks, 2);
    let (ma, mb) = (
        fs::metadata(out.join("d1/a")).unwrap(),
        fs::metadata(out.join("d2/b")).unwrap(),
    );
    assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2));
    assert_eq!(fs::read(out.join("d2/b")).unwrap(), b"LINKED content");
    assert!(
        fs::symlink_metadata(out.join("d1/pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(out.join("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    let mut buf = [0u8; 16];
    let n = rustix::fs::lgetxattr(out.join("plain"), "user.new", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"v");
    if ds_store::meta::is_root() {
        assert!(
            fs::symlink_metadata(out.join("null"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
    // Without attributes when asked.
    let out2 = tmp.path().join("out2");
    let opts = RestoreOptions {
        no_xattrs: true,
        ..Default::default()
    };
    restore(&s, &snap.root, &out2, opts, &Progress::default()).unwrap();
    assert!(rustix::fs::lgetxattr(out2.join("plain"), "user.new", &mut buf[..]).is_err());
}

/// A linked file changed through one name while the directory of its other
/// name was never listed: the snapshot must still give both names the new
/// content (the commit finds and lists that directory).
#[test]
fn changing_a_linked_file_rewrites_its_names_in_directories_never_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, src) = setup(tmp.path(), &files());
    decorate(&src);
    cold(&root, &src, "w");
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
    let ia = resolve_path(&mut v, "d1/a");
    let fh = v.open(ia, true, false).unwrap();
    v.write(fh, 0, b"CHANGED").unwrap();
    v.release(fh);
    let r = commit(&root, &mut v);
    let s = Store::open(&root, Access::Read, true).unwrap();
    let es = entries(&s, r.id);
    assert_eq!(es["/d1/a"].data, es["/d2/b"].data);
    assert_eq!(es["/d1/a"].link, es["/d2/b"].link);
    let out = tmp.path().join("out");
    let snap = s.load_snapshot(&r.id).unwrap();
    restore(
        &s,
        &snap.root,
        &out,
        RestoreOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(fs::read(out.join("d2/b")).unwrap(), b"CHANGEDcontent");
}
