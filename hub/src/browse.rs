//! Snapshot trees and files read on the hub, for the REST API and the web
//! UI: list a directory, look a path up, a file's chunks, the changes
//! between two trees.
//!
//! Everything is read from the bucket through the cache's locations, and
//! every object is rehashed against its id before it is decoded (the same
//! rule as every read path). A lookup descends one node per level of a
//! directory's tree (index nodes carry their children's first names), so
//! reaching a file under a directory of 100,000 entries reads a few
//! nodes, not the directory. Two trees are compared the way `ds diff`
//! does: an unchanged subtree has an unchanged id and is never read.

// gRPC handlers and their helpers return tonic::Status, which is large by design.
#![allow(clippy::result_large_err)]

use ds_format::manifest::{FileNode, FileRef};
use ds_format::snapshot::Snapshot;
use ds_format::tree::{DirNode, DirRef, Entry, EntryData};
use ds_format::{ObjectId, ObjectKind};
use serde::Serialize;
use tonic::Status;

use crate::runs::plaintexts;
use crate::service::SyncService;

/// Most changes one diff reports (the listing says it stopped there).
pub const MAX_CHANGES: usize = 100_000;

fn corrupt(what: &str, id: &ObjectId, e: impl std::fmt::Display) -> Status {
    Status::data_loss(format!("{what} {id}: {e}"))
}

/// One difference between two trees.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub path: String,
    /// added, removed, modified (content or mode), or type (a file became
    /// a directory, …).
    pub change: &'static str,
    pub kind_before: Option<&'static str>,
    pub kind_after: Option<&'static str>,
    pub size_before: Option<u64>,
    pub size_after: Option<u64>,
}

fn same_content(a: &Entry, b: &Entry) -> bool {
    a.data == b.data && a.metadata_changes(b).is_empty()
}

impl SyncService {
    /// The plaintexts of `ids` (each of `kind`, all on the hub), in order.
    pub(crate) async fn read_objects(
        &self,
        ids: &[ObjectId],
        kind: ObjectKind,
    ) -> Result<Vec<Vec<u8>>, Status> {
        let mut out = Vec::with_capacity(ids.len());
        for w in ids.chunks(ds_proto::MAX_BATCH) {
            let locs = self.locate_all(w).await?;
            out.extend(
                plaintexts(self.fetch(w, &locs).await?, kind)?
                    .into_iter()
                    .map(|(_, raw)| raw),
            );
        }
        Ok(out)
    }

    /// One snapshot, or not found.
    pub(crate) async fn snapshot(&self, id: ObjectId) -> Result<Snapshot, Status> {
        self.snapshots(&[id])
            .await?
            .pop()
            .map(|(_, s)| s)
            .ok_or_else(|| Status::not_found(format!("the hub has no snapshot {id}")))
    }

    /// Every entry of a directory, in name order.
    pub(crate) async fn list_dir(&self, dir: DirRef) -> Result<Vec<Entry>, Status> {
        let mut level = vec![dir.root];
        let mut entries = Vec::new();
        while !level.is_empty() {
            let nodes = self.read_objects(&level, ObjectKind::DirNode).await?;
            let mut next = Vec::new();
            for (id, raw) in level.iter().zip(nodes) {
                match DirNode::decode(&raw).map_err(|e| corrupt("directory node", id, e))? {
                    DirNode::Leaf(es) => entries.extend(es),
                    DirNode::Index { children, .. } => {
                        next.extend(children.into_iter().map(|c| c.id))
                    }
                }
            }
            level = next;
        }
        Ok(entries)
    }

    /// The entry called `name` in a directory, reading one node per level.
    async fn find_in_dir(&self, dir: DirRef, name: &[u8]) -> Result<Option<Entry>, Status> {
        let mut id = dir.root;
        for _ in 0..=ds_format::tree::MAX_LEVEL {
            let raw = self.read_objects(&[id], ObjectKind::DirNode).await?;
            let raw = raw.into_iter().next().unwrap_or_default();
            match DirNode::decode(&raw).map_err(|e| corrupt("directory node", &id, e))? {
                DirNode::Leaf(mut es) => {
                    return Ok(es
                        .binary_search_by(|e| e.name.as_slice().cmp(name))
                        .ok()
                        .map(|i| es.swap_remove(i)));
                }
                DirNode::Index { children, .. } => {
                    let i = children.partition_point(|c| c.first_name.as_slice() <= name);
                    if i == 0 {
                        return Ok(None);
                    }
                    id = children[i - 1].id;
                }
            }
        }
        Err(corrupt(
            "directory",
            &dir.root,
            "deeper than any tree ds writes",
        ))
    }

    /// The entry at `path` (names, already checked) under `root`; the
    /// empty path is the root directory itself.
    pub(crate) async fn lookup(
        &self,
        root: DirRef,
        path: &[Vec<u8>],
    ) -> Result<Option<Entry>, Status> {
        let mut here = Entry::new(Vec::new(), 0o755, 0, EntryData::Dir(root));
        for name in path {
            let EntryData::Dir(d) = here.data else {
                return Ok(None);
            };
            match self.find_in_dir(d, name).await? {
                Some(e) => here = e,
                None => return Ok(None),
            }
        }
        Ok(Some(here))
    }

    /// A file's chunks in order, with their lengths.
    pub(crate) async fn file_chunks(&self, f: FileRef) -> Result<Vec<(ObjectId, u64)>, Status> {
        if f.size == 0 {
            return Ok(Vec::new());
        }
        if f.height == 0 {
            return Ok(vec![(f.root, f.size)]);
        }
        let mut level = vec![f.root];
        for _ in 0..ds_format::manifest::MAX_HEIGHT {
            let nodes = self.read_objects(&level, ObjectKind::FileNode).await?;
            let mut next = Vec::new();
            let mut leaves = true;
            for (id, raw) in level.iter().zip(nodes) {
                let n = FileNode::decode(&raw).map_err(|e| corrupt("file node", id, e))?;
                leaves &= n.level == 0;
                next.extend(n.children.iter().map(|c| (c.id, c.len)));
            }
            if leaves {
                return Ok(next);
            }
            level = next.into_iter().map(|c| c.0).collect();
        }
        Err(corrupt("file", &f.root, "deeper than any file ds writes"))
    }

    /// The changes from tree `a` to tree `b` sorted by path, at most
    /// [`MAX_CHANGES`] (and whether it stopped there). A directory added or
    /// removed is one change; inside a directory on both sides, only what
    /// differs is read.
    pub(crate) async fn diff(&self, a: DirRef, b: DirRef) -> Result<(Vec<Change>, bool), Status> {
        let mut out = Vec::new();
        // Depth first, in path order: a stack of directories to compare.
        let mut stack: Vec<(String, DirRef, DirRef)> = vec![(String::new(), a, b)];
        while let Some((prefix, da, db)) = stack.pop() {
            if da == db {
                continue;
            }
            let (ea, eb) = (self.list_dir(da).await?, self.list_dir(db).await?);
            let (mut i, mut j) = (0, 0);
            let mut subdirs = Vec::new();
            while i < ea.len() || j < eb.len() {
                let order = match (ea.get(i), eb.get(j)) {
                    (Some(x), Some(y)) => x.name.cmp(&y.name),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    _ => std::cmp::Ordering::Greater,
                };
                let (before, after) = match order {
                    std::cmp::Ordering::Less => (ea.get(i), None),
                    std::cmp::Ordering::Greater => (None, eb.get(j)),
                    std::cmp::Ordering::Equal => (ea.get(i), eb.get(j)),
                };
                let name =
                    String::from_utf8_lossy(&before.or(after).expect("one side").name).into_owned();
                let path = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                let change = match (before, after) {
                    (Some(x), Some(y)) => match (&x.data, &y.data) {
                        _ if same_content(x, y) => None,
                        (EntryData::Dir(p), EntryData::Dir(q)) => {
                            subdirs.push((path.clone(), *p, *q));
                            (!x.metadata_changes(y).is_empty()).then_some("metadata")
                        }
                        _ if x.data.entry_type() != y.data.entry_type() => Some("type"),
                        _ if x.data == y.data => Some("metadata"),
                        _ => Some("modified"),
                    },
                    (Some(_), None) => Some("removed"),
                    _ => Some("added"),
                };
                if let Some(change) = change {
                    out.push(Change {
                        path,
                        change,
                        kind_before: before.map(|e| e.data.kind_name()),
                        kind_after: after.map(|e| e.data.kind_name()),
                        size_before: before.map(Entry::size),
                        size_after: after.map(Entry::size),
                    });
                    if out.len() >= MAX_CHANGES {
                        return Ok((out, true));
                    }
                }
                match order {
                    std::cmp::Ordering::Less => i += 1,
                    std::cmp::Ordering::Greater => j += 1,
                    std::cmp::Ordering::Equal => {
                        i += 1;
                        j += 1;
                    }
                }
            }
            // Pushed in reverse so the first subdirectory is compared next.
            stack.extend(subdirs.into_iter().rev());
        }
        out.sort_by(|x, y| x.path.cmp(&y.path));
        Ok((out, false))
    }
}
