//! A dataset snapshot's tree: the key space under the source's prefix,
//! each object a file whose path is its key (mapped by `keymap` where a
//! key is not a valid path), with the object's last-modified time as mtime
//! and what the store said of it as extended attributes:
//!
//! - `user.ds.s3.etag`: the ETag, as sent (quotes included);
//! - `user.ds.s3.version-id`: the version, in a bucket with versioning;
//! - `user.ds.s3.key`: the key, when it is not the path.
//!
//! Why in the tree: it travels with the snapshot (push, pull, clone), so a
//! mirror run anywhere compares the listing with the previous snapshot
//! itself, and a restored or mounted file says which object version it is
//! (`getfattr -d`).

use std::collections::{BTreeMap, HashMap};

use ds_format::ObjectKind;
use ds_format::manifest::FileRef;
use ds_format::snapshot::SnapshotStats;
use ds_format::tree::{DirBuilder, DirRef, Entry, EntryData, Xattr};
use ds_store::Store;
use ds_store::writer::{PackWriter, Payload};

use crate::keymap;
use crate::{DatasetError, Result};

pub const XATTR_ETAG: &[u8] = b"user.ds.s3.etag";
pub const XATTR_VERSION: &[u8] = b"user.ds.s3.version-id";
pub const XATTR_KEY: &[u8] = b"user.ds.s3.key";

/// What a dataset snapshot recorded of one object.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub entry: Entry,
    pub etag: Option<String>,
    pub version_id: Option<String>,
}

impl Recorded {
    pub fn file(&self) -> Option<FileRef> {
        match &self.entry.data {
            EntryData::File(f) => Some(*f),
            _ => None,
        }
    }
}

fn xattr(e: &Entry, name: &[u8]) -> Option<String> {
    e.xattrs
        .iter()
        .find(|x| x.name == name)
        .and_then(|x| String::from_utf8(x.value.clone()).ok())
}

/// Every object a dataset tree records, by key (relative to the prefix).
pub fn recorded(store: &Store, root: &DirRef) -> Result<HashMap<String, Recorded>> {
    let mut out = HashMap::new();
    let mut path: Vec<String> = Vec::new();
    walk(store, root, &mut path, &mut out)?;
    Ok(out)
}

fn walk(
    store: &Store,
    dir: &DirRef,
    path: &mut Vec<String>,
    out: &mut HashMap<String, Recorded>,
) -> Result<()> {
    for e in store.dir_entries(dir)? {
        let name = String::from_utf8(e.name.clone()).map_err(|_| {
            DatasetError::BadInput(format!(
                "{:?} in the previous snapshot is not UTF-8: not a dataset tree",
                String::from_utf8_lossy(&e.name)
            ))
        })?;
        path.push(name);
        match &e.data {
            EntryData::Dir(d) => walk(store, d, path, out)?,
            EntryData::File(_) => {
                let key = match xattr(&e, XATTR_KEY) {
                    Some(k) => k,
                    None => keymap::path_to_key(path).map_err(|b| {
                        DatasetError::BadInput(format!("{}: {}", path.join("/"), b.0))
                    })?,
                };
                out.insert(
                    key,
                    Recorded {
                        etag: xattr(&e, XATTR_ETAG),
                        version_id: xattr(&e, XATTR_VERSION),
                        entry: e,
                    },
                );
            }
            // Not something a mirror writes; a later mirror drops it.
            _ => {}
        }
        path.pop();
    }
    Ok(())
}

/// The file entry of one object.
pub fn object_entry(
    name: String,
    key: &str,
    mapped: bool,
    file: FileRef,
    last_modified_ns: i64,
    etag: Option<&str>,
    version_id: Option<&str>,
) -> Entry {
    let mut e = Entry::new(
        name.into_bytes(),
        0o644,
        last_modified_ns,
        EntryData::File(file),
    );
    let mut x = Vec::new();
    if let Some(t) = etag {
        x.push(Xattr {
            name: XATTR_ETAG.to_vec(),
            value: t.as_bytes().to_vec(),
        });
    }
    if mapped {
        x.push(Xattr {
            name: XATTR_KEY.to_vec(),
            value: key.as_bytes().to_vec(),
        });
    }
    if let Some(v) = version_id {
        x.push(Xattr {
            name: XATTR_VERSION.to_vec(),
            value: v.as_bytes().to_vec(),
        });
    }
    x.sort();
    e.xattrs = x;
    e
}

#[derive(Default)]
struct Node {
    dirs: BTreeMap<String, Node>,
    files: BTreeMap<String, Entry>,
}

/// Builds the tree of `files` (path components, entry named by the last),
/// writing its directory nodes through `writer`. Paths must not collide
/// (`keymap::map_all` guarantees it).
pub fn build(
    writer: &PackWriter,
    files: Vec<(Vec<String>, Entry)>,
) -> Result<(DirRef, SnapshotStats)> {
    let mut root = Node::default();
    let mut stats = SnapshotStats::default();
    for (path, e) in files {
        let (last, dirs) = path.split_last().expect("a path has a name");
        let mut n = &mut root;
        for d in dirs {
            n = n.dirs.entry(d.clone()).or_default();
        }
        stats.files += 1;
        stats.bytes += e.size();
        if n.files.insert(last.clone(), e).is_some() {
            return Err(DatasetError::Internal(format!(
                "two objects at {}",
                path.join("/")
            )));
        }
    }
    let mut emit = |id, bytes| {
        let _ = writer.put(ObjectKind::DirNode, id, Payload::Owned(bytes));
    };
    let (r, _) = finish(root, &mut emit, &mut stats)?;
    stats.dirs += 1;
    // A failed writer fails `finish` of the transaction too.
    Ok((r, stats))
}

/// Builds one directory; returns it and its newest mtime.
fn finish(
    node: Node,
    emit: &mut dyn FnMut(ds_format::ObjectId, Vec<u8>),
    stats: &mut SnapshotStats,
) -> Result<(DirRef, i64)> {
    // Names of both maps merged in byte order (they never collide).
    let mut entries: Vec<Entry> = Vec::with_capacity(node.dirs.len() + node.files.len());
    let mut newest = 0i64;
    for (name, sub) in node.dirs {
        let (d, t) = finish(sub, emit, stats)?;
        stats.dirs += 1;
        newest = newest.max(t);
        entries.push(Entry::new(name.into_bytes(), 0o755, t, EntryData::Dir(d)));
    }
    for (_, e) in node.files {
        newest = newest.max(e.mtime_ns);
        entries.push(e);
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut b = DirBuilder::default();
    for e in entries {
        b.push(e, emit)?;
    }
    Ok((b.finish(emit), newest))
}
