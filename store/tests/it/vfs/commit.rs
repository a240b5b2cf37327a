//! Snapshotting a mount (the O(changed) commit): its result equals a cold
//! snapshot of the same tree, after random edits (writes, truncates,
//! renames, unlinks, chmod, hard links, xattrs, chown), after a small overwrite of
//! a big file (which rechunks only around it), and from a workspace with no
//! snapshot yet.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ds_store::format::config::Compression;
use ds_store::vfs::{Ino, RenameFlags, SetAttr, Vfs, VfsOptions};
use ds_store::{Access, Store};

use super::{cold, commit, listing, noise, read_all, reader, resolve_path, sample, setup};
use crate::*;

/// A deterministic random edit, applied to both the mount and a real copy.
fn edit(v: &mut Vfs, real: &Path, step: u64, seed: u64) {
    let r = noise(16, seed * 1000 + step);
    let pick =
        |i: usize| u64::from(r[i]) | (u64::from(r[i + 1]) << 8) | (u64::from(r[i + 2]) << 16);
    let targets = ["big.bin", "text/a.txt", "deep/er/x.bin", "new.bin"];
    let t = targets[(r[0] % 4) as usize];
    let path = real.join(t);
    let exists = path.exists();
    match r[1] % 10 {
        // overwrite a range (maybe past the end: a sparse write)
        0..=2 => {
            let len = (pick(2) % 9000 + 1) as usize;
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let off = pick(5) % (size + 5000);
            let data = noise(len, pick(8));
            let ino = if exists {
                resolve_path(v, t)
            } else {
                let parent = resolve_path(v, Path::new(t).parent().unwrap().to_str().unwrap());
                let name = Path::new(t).file_name().unwrap().to_str().unwrap();
                let (a, fh) = v.create(parent, name.as_bytes(), 0o644, 0, 0).unwrap();
                v.release(fh);
                a.ino
            };
            let fh = v.open(ino, true, false).unwrap();
            assert_eq!(v.write(fh, off, &data).unwrap() as usize, len);
            v.release(fh);
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            f.write_all_at(&data, off).unwrap();
            fs::set_permissions(
                &path,
                fs::Permissions::from_mode(if exists {
                    fs::metadata(&path).unwrap().permissions().mode() & 0o7777
                } else {
                    0o644
                }),
            )
            .unwrap();
        }
        // truncate shorter or longer
        3 if exists => {
            let size = fs::metadata(&path).unwrap().len();
            let new = pick(2) % (size + 10_000);
            let ino = resolve_path(v, t);
            v.setattr(
                ino,
                SetAttr {
                    size: Some(new),
                    ..Default::default()
                },
            )
            .unwrap();
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(new)
                .unwrap();
        }
        // rename over another file, then recreate nothing
        4 if exists && t != "new.bin" => {
            let to = real.join("renamed.bin");
            let from_parent = resolve_path(v, Path::new(t).parent().unwrap().to_str().unwrap());
            let name = Path::new(t).file_name().unwrap().to_str().unwrap();
            v.rename(
                from_parent,
                name.as_bytes(),
                Ino::ROOT,
                b"renamed.bin",
                RenameFlags::default(),
            )
            .unwrap();
            fs::rename(&path, to).unwrap();
        }
        // unlink
        5 if exists => {
            let parent = resolve_path(v, Path::new(t).parent().unwrap().to_str().unwrap());
            let name = Path::new(t).file_name().unwrap().to_str().unwrap();
            v.unlink(parent, name.as_bytes()).unwrap();
            fs::remove_file(&path).unwrap();
        }
        // a hard link in the root (later edits of either name change both)
        7 if exists => {
            let name = format!("link-{step}");
            let ino = resolve_path(v, t);
            let a = v.link(ino, Ino::ROOT, name.as_bytes()).unwrap();
            fs::hard_link(&path, real.join(&name)).unwrap();
            assert_eq!(u64::from(a.nlink), fs::metadata(&path).unwrap().nlink());
        }
        // an extended attribute
        8 if exists => {
            let ino = resolve_path(v, t);
            let (k, val) = (
                format!("user.k{}", r[3] % 3),
                noise(usize::from(r[4]), pick(5)),
            );
            v.setxattr(ino, k.as_bytes(), &val, false, false).unwrap();
            rustix::fs::lsetxattr(&path, k.as_str(), &val, rustix::fs::XattrFlags::empty())
                .unwrap();
        }
        // chown (only root may give files away)
        9 if exists && ds_store::meta::is_root() => {
            let ino = resolve_path(v, t);
            let (uid, gid) = (1000 + u32::from(r[3]), 2000 + u32::from(r[4]));
            v.setattr(
                ino,
                SetAttr {
                    uid: Some(uid),
                    gid: Some(gid),
                    ..Default::default()
                },
            )
            .unwrap();
            ds_store::meta::chown(&path, ds_store::format::tree::Owner { uid, gid }).unwrap();
        }
        // chmod
        _ if exists => {
            let ino = resolve_path(v, t);
            let mode = 0o600 | u32::from(r[3] & 0o77);
            v.setattr(
                ino,
                SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                },
            )
            .unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        _ => {}
    }
}

#[test]
fn snapshot_of_a_mount_equals_a_cold_snapshot() {
    let mut rechunked = 0;
    let (mut linked, mut with_xattrs) = (0, 0);
    for seed in 0..12u64 {
        let tmp = tempfile::tempdir().unwrap();
        let (root, src) = setup(tmp.path(), &sample());
        let id = cold(&root, &src, "w");
        let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
        for round in 0..3 {
            for step in 0..6 {
                edit(&mut v, &src, round * 100 + step, seed);
            }
            let r = commit(&root, &mut v);
            rechunked += r.files_rechunked;
            let expect = cold(&root, &src, "cold");
            let s = Store::open(&root, Access::Read, true).unwrap();
            let got = listing(&s, r.id);
            assert_eq!(got, listing(&s, expect), "seed {seed} round {round}");
            linked += got.values().filter(|e| e.4.is_some()).count();
            with_xattrs += got.values().filter(|e| !e.3.is_empty()).count();
            let a = s.load_snapshot(&r.id).unwrap().stats;
            let b = s.load_snapshot(&expect).unwrap().stats;
            assert_eq!(a, b, "stats, seed {seed} round {round}");
            assert_eq!(s.refs().get("w").unwrap(), Some(r.id));
            // The mount carries on over the new snapshot with the same content.
            for (p, (data, _)) in read_files(&src) {
                assert_eq!(read_all(&mut v, &p), data, "{p} seed {seed}");
            }
        }
        let _ = id;
    }
    assert!(rechunked > 20, "the edits changed only {rechunked} files");
    assert!(
        linked > 10 && with_xattrs > 10,
        "links {linked}, attributes {with_xattrs}"
    );
}

#[test]
fn a_small_overwrite_rechunks_only_around_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Files::new();
    let big = noise(4 << 20, 9);
    files.insert("model.bin".into(), (big.clone(), 0o644));
    let (root, src) = setup(tmp.path(), &files);
    cold(&root, &src, "w");
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
    let ino = resolve_path(&mut v, "model.bin");
    let fh = v.open(ino, true, false).unwrap();
    v.write(fh, 2 << 20, &[7u8; 1000]).unwrap();
    v.release(fh);
    let r = commit(&root, &mut v);
    assert_eq!(r.files_rechunked, 1);
    // The dirty kilobyte plus a window around it, never the 4 MiB file.
    assert!(r.bytes_read <= 1 << 20, "read {} bytes", r.bytes_read);
    assert!(r.written.raw_bytes < 64 * 1024, "wrote {:?}", r.written);
    let mut edited = big;
    edited[2 << 20..(2 << 20) + 1000].fill(7);
    fs::write(src.join("model.bin"), &edited).unwrap();
    let expect = cold(&root, &src, "cold");
    let s = Store::open(&root, Access::Read, true).unwrap();
    assert_eq!(listing(&s, r.id), listing(&s, expect));
    // A snapshot with nothing dirty reads nothing.
    let r2 = commit(&root, &mut v);
    assert_eq!((r2.files_rechunked, r2.bytes_read), (0, 0));
}

#[test]
fn a_workspace_without_snapshots_mounts_empty_and_snapshots_like_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(small_store(&root, Compression::Zstd { level: 1 }));
    let mut v = Vfs::open_workspace(reader(&root), "fresh", VfsOptions::default(), false).unwrap();
    assert!(v.readdir(Ino::ROOT).unwrap().is_empty());
    let d = v.mkdir(Ino::ROOT, b"d", 0o755, 0, 0).unwrap();
    let (_, fh) = v.create(d.ino, b"f", 0o644, 0, 0).unwrap();
    v.write(fh, 0, &noise(50_000, 4)).unwrap();
    v.release(fh);
    let r = commit(&root, &mut v);
    assert_eq!(r.parent, None);
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), noise(50_000, 4)).unwrap();
    fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o644)).unwrap();
    let c = cold(&root, &src, "cold");
    let s = Store::open(&root, Access::Read, true).unwrap();
    assert_eq!(listing(&s, r.id), listing(&s, c));
    assert_eq!(
        s.load_snapshot(&r.id).unwrap().stats,
        s.load_snapshot(&c).unwrap().stats
    );
}
