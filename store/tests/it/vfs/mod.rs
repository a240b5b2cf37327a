//! The store-level VFS driven directly (no kernel): lazy reads, the dirty
//! layer, its recovery after the process dies, and the O(changed) snapshot,
//! whose result must equal a cold snapshot of the same content. This module
//! holds the helpers the topic files below share.

mod commit;
mod damage;
mod journal;
mod links;
mod posix;
mod read;
mod recovery;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ds_store::format::ObjectId;
use ds_store::format::config::Compression;
use ds_store::format::tree::{Entry, EntryData};
use ds_store::ingest::{SnapshotOptions, snapshot};
use ds_store::progress::Progress;
use ds_store::vfs::{CommitOptions, Ino, Target, Vfs};
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
