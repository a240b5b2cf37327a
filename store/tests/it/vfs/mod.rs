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
use ds_store::format::tree::{Entry, EntryData, Owner, Xattr};
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

/// What a listing compares of one entry: mode, content, owner (as root,
/// when the test's files and the mount's agree on it), attributes, and the
/// first path of its hard-link group with its link count.
type Listed = (
    u32,
    EntryData,
    Option<Owner>,
    Vec<Xattr>,
    Option<(String, u32)>,
);

/// Every entry of a snapshot by path, mtimes left out (a mount and a real
/// directory never agree on them), hard-link labels replaced by the
/// group's first path (labels differ between a mount and a directory).
fn listing(store: &Store, snap: ObjectId) -> BTreeMap<String, Listed> {
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
    let mut all = Vec::new();
    walk(store, &s.root, "", &mut all);
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first: BTreeMap<u64, String> = BTreeMap::new();
    let root = ds_store::meta::is_root();
    all.into_iter()
        .map(|(p, e)| {
            let link = e
                .link
                .map(|l| (first.entry(l.group).or_insert(p.clone()).clone(), l.nlink));
            let data = match e.data {
                EntryData::Dir(_) => EntryData::Symlink(b"<dir>".to_vec()),
                d => d,
            };
            let owner = if root { e.owner } else { None };
            (p, (e.mode, data, owner, e.xattrs, link))
        })
        .collect()
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
