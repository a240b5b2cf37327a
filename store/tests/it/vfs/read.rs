//! Reading a snapshot through the VFS: lazy, chunk-sized fetches, no changes
//! allowed on a read-only mount, and bytes served straight from a mapped pack
//! where they lie in one, gathered into a buffer where they do not.

use ds_store::format::config::Compression;
use ds_store::vfs::{Ino, Kind, Vfs, VfsOptions};

use super::{cold, noise, read_all, reader, resolve_path, sample, setup};
use crate::*;

#[test]
fn read_only_mount_lists_and_reads_lazily() {
    let tmp = tempfile::tempdir().unwrap();
    let files = sample();
    let (root, src) = setup(tmp.path(), &files);
    let id = cold(&root, &src, "w");
    let mut v = Vfs::open_snapshot(reader(&root), id, VfsOptions::default()).unwrap();
    let names: Vec<_> = v
        .readdir(Ino::ROOT)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    assert_eq!(names, ["big.bin", "deep", "empty", "text"]);
    // Reading 10 bytes of the big file fetches about one chunk, not the file.
    let ino = resolve_path(&mut v, "big.bin");
    let fh = v.open(ino, false, false).unwrap();
    assert_eq!(
        v.read(fh, 150_000, 10).unwrap(),
        files["big.bin"].0[150_000..150_010]
    );
    assert!(
        v.cache().cached_bytes() <= 3 * 4096,
        "{}",
        v.cache().cached_bytes()
    );
    v.release(fh);
    for (p, (data, mode)) in &files {
        assert_eq!(&read_all(&mut v, p), data, "{p}");
        let i = resolve_path(&mut v, p);
        let a = v.getattr(i).unwrap();
        assert_eq!(a.perm, *mode);
        assert_eq!(a.kind, Kind::File);
    }
    // Nothing can be changed.
    assert_eq!(
        v.mkdir(Ino::ROOT, b"x", 0o755, 0, 0).unwrap_err().errno,
        libc::EROFS
    );
    assert_eq!(v.open(ino, true, false).unwrap_err().errno, libc::EROFS);
}

#[test]
fn raw_chunks_are_served_straight_from_the_pack_map_and_others_gathered() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, compression, data) in [
        ("raw", Compression::None, noise(300_000, 5)),
        (
            "zstd",
            Compression::Zstd { level: 1 },
            (0..300_000u32)
                .flat_map(|i| (i / 7).to_le_bytes())
                .take(300_000)
                .collect(),
        ),
    ] {
        let root = tmp.path().join(name).join("store");
        drop(small_store(&root, compression));
        let src = tmp.path().join(name).join("src");
        let mut files = Files::new();
        files.insert("f.bin".into(), (data.clone(), 0o644));
        write_files(&src, &files);
        let id = cold(&root, &src, "w");
        let mut v = Vfs::open_snapshot(reader(&root), id, VfsOptions::default()).unwrap();
        let ino = resolve_path(&mut v, "f.bin");
        let fh = v.open(ino, false, false).unwrap();
        let (mut direct, mut gathered, mut out) = (0, 0, Vec::new());
        // 8 KiB reads over 64 KiB packs of ~1 KiB chunks: most lie inside one
        // pack, some straddle two.
        for off in (0..data.len()).step_by(8192) {
            let plan = v.read_plan(fh, off as u64, 8192).unwrap();
            let got = plan.execute_with(&mut out, |b| b.to_vec()).unwrap();
            assert_eq!(
                got,
                data[off..(off + 8192).min(data.len())],
                "{name} at {off}"
            );
            if out.is_empty() {
                direct += 1
            } else {
                gathered += 1
            }
        }
        if name == "raw" {
            assert!(
                direct > 3 * gathered && gathered > 0,
                "{direct} direct, {gathered} gathered"
            );
        } else {
            assert_eq!(direct, 0, "compressed chunks are decoded into buffers");
        }
    }
}
