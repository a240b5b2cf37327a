//! The store-level VFS driven directly (no kernel): lazy reads, the dirty
//! layer, its recovery after the process dies, and the O(changed) snapshot,
//! whose result must equal a cold snapshot of the same content.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use ds_store::format::ObjectId;
use ds_store::format::config::Compression;
use ds_store::format::tree::{Entry, EntryData};
use ds_store::ingest::{SnapshotOptions, snapshot};
use ds_store::progress::Progress;
use ds_store::vfs::{CommitOptions, Fh, Ino, Kind, RenameFlags, SetAttr, Target, Vfs, VfsOptions};
use ds_store::{Access, Store};

use crate::*;

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn cold(root: &Path, dir: &Path, ws: &str) -> ObjectId {
    let s = Store::open(root, Access::Write, true).unwrap();
    let opts = SnapshotOptions {
        workspace: ws.into(),
        no_cache: true,
        ..Default::default()
    };
    snapshot(&s, dir, &opts, &Progress::default()).unwrap().id
}

fn reader(root: &Path) -> Arc<Store> {
    Arc::new(Store::open(root, Access::Read, true).unwrap())
}

fn commit(root: &Path, v: &mut Vfs) -> ds_store::vfs::CommitReport {
    let w = Store::open(root, Access::Write, true).unwrap();
    v.commit(Target::Open(Box::new(w)), &CommitOptions::default())
        .unwrap()
}

fn setup(tmp: &Path, files: &Files) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = tmp.join("store");
    drop(small_store(&root, Compression::Zstd { level: 1 }));
    let src = tmp.join("src");
    write_files(&src, files);
    (root, src)
}

/// Every entry of a snapshot by path, mtimes left out (a mount and a real
/// directory never agree on them).
fn listing(store: &Store, snap: ObjectId) -> BTreeMap<String, (u32, EntryData)> {
    fn walk(
        store: &Store,
        d: &ds_store::format::tree::DirRef,
        pre: &str,
        out: &mut BTreeMap<String, (u32, EntryData)>,
    ) {
        for Entry {
            name, mode, data, ..
        } in store.dir_entries(d).unwrap()
        {
            let p = format!("{pre}/{}", String::from_utf8_lossy(&name));
            if let EntryData::Dir(sub) = &data {
                walk(store, sub, &p, out);
            }
            let data = match data {
                EntryData::Dir(_) => EntryData::Symlink(b"<dir>".to_vec()),
                d => d,
            };
            out.insert(p, (mode, data));
        }
    }
    let s = store.load_snapshot(&snap).unwrap();
    let mut out = BTreeMap::new();
    walk(store, &s.root, "", &mut out);
    out
}

fn resolve_path(v: &mut Vfs, path: &str) -> Ino {
    let mut ino = Ino::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = v.lookup(ino, part.as_bytes()).unwrap().ino;
    }
    ino
}

fn read_all(v: &mut Vfs, path: &str) -> Vec<u8> {
    let ino = resolve_path(v, path);
    let size = v.getattr(ino).unwrap().size;
    let fh = v.open(ino, false, false).unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let got = v.read(fh, out.len() as u64, 7000).unwrap();
        assert!(!got.is_empty());
        out.extend(got);
    }
    v.release(fh);
    out
}

fn sample() -> Files {
    let mut f = Files::new();
    f.insert("big.bin".into(), (noise(300_000, 1), 0o644));
    f.insert("text/a.txt".into(), (b"hello\n".repeat(3000), 0o600));
    f.insert("text/b.txt".into(), (b"b".to_vec(), 0o644));
    f.insert("deep/er/x.bin".into(), (noise(20_000, 2), 0o755));
    f.insert("empty".into(), (Vec::new(), 0o644));
    f
}

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

/// A deterministic random edit, applied to both the mount and a real copy.
fn edit(v: &mut Vfs, real: &Path, step: u64, seed: u64) {
    let r = noise(16, seed * 1000 + step);
    let pick =
        |i: usize| u64::from(r[i]) | (u64::from(r[i + 1]) << 8) | (u64::from(r[i + 2]) << 16);
    let targets = ["big.bin", "text/a.txt", "deep/er/x.bin", "new.bin"];
    let t = targets[(r[0] % 4) as usize];
    let path = real.join(t);
    let exists = path.exists();
    match r[1] % 7 {
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
            assert_eq!(
                listing(&s, r.id),
                listing(&s, expect),
                "seed {seed} round {round}"
            );
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
    let long = vec![b'x'; ds_store::format::tree::MAX_NAME + 1];
    for e in [
        v.lookup(text, &long).map(|_| ()),
        v.unlink(text, &long),
        v.rmdir(text, &long),
        v.rename(text, &long, text, b"c", RenameFlags::default()),
        v.create(text, &long, 0o644, 0, 0).map(|_| ()),
    ] {
        assert_eq!(e.unwrap_err().errno, libc::ENAMETOOLONG);
    }
    // Hard links: unsupported (EPERM), but a taken name is EEXIST first.
    let b = resolve_path(&mut v, "text/b.txt");
    assert_eq!(v.link(b, text, b"b.txt").unwrap_err().errno, libc::EEXIST);
    assert_eq!(v.link(b, text, b"b2.txt").unwrap_err().errno, libc::EPERM);
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
