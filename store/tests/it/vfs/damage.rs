//! Damaged packs read through the VFS: a flipped byte or a pack cut short is
//! EIO naming the file, never wrong bytes and never a crash (SIGBUS).

use std::fs;
use std::path::Path;

use ds_store::format::config::Compression;
use ds_store::vfs::{Fh, Vfs, VfsOptions};

use super::{cold, noise, reader, resolve_path};
use crate::*;

#[test]
fn a_damaged_chunk_is_eio_naming_the_file_never_wrong_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = noise(40_000, 3);
    // Flip a byte that belongs to the file's data inside the pack.
    let (mut v, fh) = victim_in_raw_packs(tmp.path(), &data, |pack, p| {
        let mut b = fs::read(pack).unwrap();
        b[p + 10] ^= 0xff;
        fs::write(pack, b).unwrap();
    });
    // The first bytes live in other chunks and still read fine.
    assert_eq!(v.read(fh, 0, 100).unwrap(), data[..100]);
    let why = eio_at_20_000(&mut v, fh);
    assert!(why.contains("damaged"), "{why}");
    // Every later try fails the same way (bad bytes are never cached).
    assert_eq!(v.read(fh, 20_000, 100).unwrap_err().errno, libc::EIO);
}

#[test]
fn a_pack_cut_short_is_eio_naming_the_file_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    // Big enough that the bytes cut lie in an earlier pack than the file's
    // manifest and the directory (64 KiB packs).
    let data = noise(200_000, 4);
    // Cut the pack holding these bytes just before them: the map is shorter
    // than the index says, and touching past its end would be SIGBUS.
    let (mut v, fh) = victim_in_raw_packs(tmp.path(), &data, |pack, p| {
        let f = fs::OpenOptions::new().write(true).open(pack).unwrap();
        f.set_len(p as u64).unwrap();
    });
    let why = eio_at_20_000(&mut v, fh);
    assert!(why.contains("truncated"), "{why}");
}

/// A store without compression holding `victim.bin` = `data`, snapshotted;
/// `edit` is called with the pack holding `data[20_000..20_064]` and that
/// run's position in it; then the snapshot is mounted and the file opened.
fn victim_in_raw_packs(tmp: &Path, data: &[u8], edit: impl Fn(&Path, usize)) -> (Vfs, Fh) {
    let root = tmp.join("store");
    // No compression: the chunk bytes sit in the pack as they are.
    drop(small_store(&root, Compression::None));
    let src = tmp.join("src");
    let mut files = Files::new();
    files.insert("victim.bin".into(), (data.to_vec(), 0o644));
    write_files(&src, &files);
    let id = cold(&root, &src, "w");
    let needle = &data[20_000..20_064];
    let mut hit = false;
    for e in walk_files(&root.join("packs")) {
        let b = fs::read(&e).unwrap();
        if let Some(p) = b.windows(needle.len()).position(|w| w == needle) {
            edit(&e, p);
            hit = true;
        }
    }
    assert!(hit, "file data not found in any pack");
    let mut v = Vfs::open_snapshot(reader(&root), id, VfsOptions::default()).unwrap();
    let ino = resolve_path(&mut v, "victim.bin");
    let fh = v.open(ino, false, false).unwrap();
    (v, fh)
}

/// The read at offset 20 000 fails with EIO; its message, which names the file.
fn eio_at_20_000(v: &mut Vfs, fh: Fh) -> String {
    let e = v.read(fh, 20_000, 100).unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    let why = e.detail.unwrap();
    assert!(why.contains("/victim.bin"), "{why}");
    why
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
