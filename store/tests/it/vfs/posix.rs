//! POSIX corner cases of the writable VFS: unlinking an open file, names
//! too long, hard links, rename over and into, sparse writes and truncation,
//! all of which must still snapshot like the same tree on disk.

use std::fs;

use ds_store::vfs::{Ino, RenameFlags, SetAttr, Vfs, VfsOptions};
use ds_store::{Access, Store};

use super::{cold, commit, listing, read_all, reader, resolve_path, sample, setup};

#[test]
fn posix_corners_unlink_open_rename_over_sparse_truncate() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, src) = setup(tmp.path(), &sample());
    cold(&root, &src, "w");
    let mut v = Vfs::open_workspace(reader(&root), "w", VfsOptions::default(), false).unwrap();
    // unlink of an open file: still readable and writable through the handle
    let ino = resolve_path(&mut v, "text/a.txt");
    let fh = v.open(ino, true, false).unwrap();
    let text = resolve_path(&mut v, "text");
    v.unlink(text, b"a.txt").unwrap();
    assert_eq!(v.read(fh, 0, 6).unwrap(), b"hello\n");
    v.write(fh, 0, b"HELLO").unwrap();
    assert_eq!(v.read(fh, 0, 6).unwrap(), b"HELLO\n");
    v.release(fh);
    v.forget(ino, 1);
    assert_eq!(v.lookup(text, b"a.txt").unwrap_err().errno, libc::ENOENT);
    // A name longer than any ds stores is ENAMETOOLONG wherever it is
    // resolved, not ENOENT (found by pjdfstest).
    // Longer than 255 bytes: what restore could not write back.
    let long = vec![b'x'; ds_store::vfs::NAME_MAX + 1];
    for e in [
        v.lookup(text, &long).map(|_| ()),
        v.unlink(text, &long),
        v.rmdir(text, &long),
        v.rename(text, &long, text, b"c", RenameFlags::default()),
        v.create(text, &long, 0o644, 0, 0).map(|_| ()),
    ] {
        assert_eq!(e.unwrap_err().errno, libc::ENAMETOOLONG);
    }
    let longest = vec![b'y'; ds_store::vfs::NAME_MAX];
    let (_, fh) = v.create(text, &longest, 0o644, 0, 0).unwrap();
    v.release(fh);
    v.unlink(text, &longest).unwrap();
    // Hard links: a taken name is EEXIST, a directory EPERM; a new name
    // is the same inode, and unlinking it leaves one name again.
    let b = resolve_path(&mut v, "text/b.txt");
    assert_eq!(v.link(b, text, b"b.txt").unwrap_err().errno, libc::EEXIST);
    assert_eq!(v.link(text, text, b"d2").unwrap_err().errno, libc::EPERM);
    let a = v.link(b, text, b"b2.txt").unwrap();
    assert_eq!((a.ino, a.nlink), (b, 2));
    v.unlink(text, b"b2.txt").unwrap();
    assert_eq!(v.getattr(b).unwrap().nlink, 1);
    // rename over an existing file replaces it
    let (_, fh) = v.create(text, b"tmp", 0o644, 0, 0).unwrap();
    v.write(fh, 0, b"new content").unwrap();
    v.release(fh);
    v.rename(text, b"tmp", text, b"b.txt", RenameFlags::default())
        .unwrap();
    assert_eq!(read_all(&mut v, "text/b.txt"), b"new content");
    assert_eq!(
        v.rename(
            text,
            b"b.txt",
            Ino::ROOT,
            b"big.bin",
            RenameFlags {
                noreplace: true,
                exchange: false
            }
        )
        .unwrap_err()
        .errno,
        libc::EEXIST
    );
    // directories: not into themselves, not over non-empty ones
    let deep = resolve_path(&mut v, "deep");
    assert_eq!(
        v.rename(Ino::ROOT, b"deep", deep, b"x", RenameFlags::default())
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    assert_eq!(
        v.rmdir(Ino::ROOT, b"deep").unwrap_err().errno,
        libc::ENOTEMPTY
    );
    // sparse write far past the end reads back zeros in the hole
    let (a, fh) = v.create(Ino::ROOT, b"sparse", 0o644, 0, 0).unwrap();
    v.write(fh, 1 << 20, b"end").unwrap();
    assert_eq!(v.getattr(a.ino).unwrap().size, (1 << 20) + 3);
    assert_eq!(v.read(fh, 5000, 4).unwrap(), [0, 0, 0, 0]);
    v.release(fh);
    // truncate down then up: the cut-off bytes come back as zeros
    let big = resolve_path(&mut v, "big.bin");
    for size in [1000, 5000] {
        v.setattr(
            big,
            SetAttr {
                size: Some(size),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let got = read_all(&mut v, "big.bin");
    assert_eq!(&got[..1000], &sample()["big.bin"].0[..1000]);
    assert!(got[1000..].iter().all(|b| *b == 0));
    assert_eq!(got.len(), 5000);
    // and all of it snapshots like the same tree on disk
    let r = commit(&root, &mut v);
    fs::remove_file(src.join("text/a.txt")).unwrap();
    fs::write(src.join("text/b.txt"), b"new content").unwrap();
    let mut sparse = vec![0u8; 1 << 20];
    sparse.extend_from_slice(b"end");
    fs::write(src.join("sparse"), sparse).unwrap();
    fs::write(src.join("big.bin"), &got).unwrap();
    let cold_id = cold(&root, &src, "cold");
    let s = Store::open(&root, Access::Read, true).unwrap();
    assert_eq!(listing(&s, r.id), listing(&s, cold_id));
}
