//! Differences between two trees. Subtrees with equal hashes are skipped
//! without being read, so the cost follows the size of the change.
//!
//! Reported: entries that were added, removed, modified (content) or
//! changed type; entries whose content is the same but whose mode, owner or
//! extended attributes changed (`metadata`, saying which); directories
//! added or removed with everything inside them. A directory whose content
//! changed is not itself reported (its changed children are), and an
//! mtime-only change is not a change.

use std::collections::HashSet;

use ds_format::ObjectId;
use ds_format::manifest::FileRef;
use ds_format::tree::{DirRef, Entry, EntryData, EntryType};

use crate::{Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
    TypeChanged,
    /// Same content, other mode, owner or attributes (see `Change::metadata`).
    Metadata,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "modified",
            ChangeKind::TypeChanged => "type-changed",
            ChangeKind::Metadata => "metadata",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Change {
    /// Relative to the snapshot root, `/`-separated, raw bytes.
    pub path: Vec<u8>,
    pub kind: ChangeKind,
    /// The new type, or the old one if removed.
    pub entry_type: EntryType,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
    /// Bytes of content that are new in B (chunks B has that A's file lacked).
    pub bytes_changed: u64,
    /// What else changed: any of "mode", "owner", "xattrs".
    pub metadata: Vec<&'static str>,
}

/// Lists changes from `a` to `b`, in path order.
pub fn diff(store: &Store, a: &DirRef, b: &DirRef) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    dir(store, a, b, &[], &mut out)?;
    Ok(out)
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn dir(store: &Store, a: &DirRef, b: &DirRef, prefix: &[u8], out: &mut Vec<Change>) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let ea = store.dir_entries(a)?;
    let eb = store.dir_entries(b)?;
    let (mut i, mut j) = (0, 0);
    while i < ea.len() || j < eb.len() {
        let ord = match (ea.get(i), eb.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                whole(store, &ea[i], prefix, ChangeKind::Removed, out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                whole(store, &eb[j], prefix, ChangeKind::Added, out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                both(store, &ea[i], &eb[j], prefix, out)?;
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// An entry present on one side only: it and everything below it.
fn whole(
    store: &Store,
    e: &Entry,
    prefix: &[u8],
    kind: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<()> {
    let path = join(prefix, &e.name);
    let size = e.size();
    let added = kind == ChangeKind::Added;
    out.push(Change {
        path: path.clone(),
        kind,
        entry_type: e.data.entry_type(),
        old_size: (!added).then_some(size),
        new_size: added.then_some(size),
        bytes_changed: size,
        metadata: Vec::new(),
    });
    if let EntryData::Dir(d) = &e.data {
        for c in store.dir_entries(d)? {
            whole(store, &c, &path, kind, out)?;
        }
    }
    Ok(())
}

fn both(store: &Store, x: &Entry, y: &Entry, prefix: &[u8], out: &mut Vec<Change>) -> Result<()> {
    let path = join(prefix, &x.name);
    let metadata = x.metadata_changes(y);
    let change = |kind, bytes| Change {
        path: path.clone(),
        kind,
        entry_type: y.data.entry_type(),
        old_size: Some(x.size()),
        new_size: Some(y.size()),
        bytes_changed: bytes,
        metadata: metadata.clone(),
    };
    let content = match (&x.data, &y.data) {
        (EntryData::Dir(a), EntryData::Dir(b)) => {
            if !metadata.is_empty() {
                out.push(change(ChangeKind::Metadata, 0));
            }
            return dir(store, a, b, &path, out);
        }
        (EntryData::File(a), EntryData::File(b)) if a != b => {
            Some(change(ChangeKind::Modified, changed_bytes(store, a, b)?))
        }
        (EntryData::Symlink(a), EntryData::Symlink(b)) if a != b => {
            Some(change(ChangeKind::Modified, b.len() as u64))
        }
        (a, b) if a.entry_type() != b.entry_type() => {
            Some(change(ChangeKind::TypeChanged, y.size()))
        }
        (a, b) if a != b => Some(change(ChangeKind::Modified, 0)),
        _ => None,
    };
    match content {
        Some(c) => out.push(c),
        None if !metadata.is_empty() => out.push(change(ChangeKind::Metadata, 0)),
        None => {}
    }
    Ok(())
}

/// Bytes of `b` held in chunks that `a` does not have. Reads only manifests.
pub fn changed_bytes(store: &Store, a: &FileRef, b: &FileRef) -> Result<u64> {
    let mut old: HashSet<ObjectId> = HashSet::new();
    store.for_each_chunk(a, &mut |id, _, _| {
        old.insert(id);
        Ok(())
    })?;
    let mut n = 0;
    store.for_each_chunk(b, &mut |id, _, len| {
        if !old.contains(&id) {
            n += len;
        }
        Ok(())
    })?;
    Ok(n)
}
