//! Turning a read-write mount's dirty layer into a snapshot, at a cost
//! proportional to what changed.
//!
//! Why this is correct: FastCDC's cut after a chunk start depends only on the
//! bytes from that start (and, near the end of the file, on how many bytes
//! are left), and the manifest and directory trees are content-defined. So a
//! dirty file is re-chunked from the start of the base chunk holding its
//! first changed byte, and as soon as a new cut lands on an old chunk
//! boundary followed by an old chunk whose bytes are untouched, the old
//! chunks are reused as they are, until the next changed range. The result
//! is exactly what a cold snapshot of the same content produces (same ids,
//! same root), which the tests check. Directories are rebuilt only along
//! dirty paths; a clean subtree is reused by reference, and only objects the
//! index lacks are written.
//!
//! Snapshot statistics (files, dirs, bytes) are the base snapshot's plus the
//! difference made by changed entries: only removed or moved directories
//! are counted by walking their (stored) trees.
//!
//! Latency: opening the index for writing (RocksDB's primary) costs about
//! 10 ms of CPU, as much as re-chunking a megabyte-sized change, and more
//! when it must replay a large log. A mount therefore appends
//! ([`Target::Append`], see `txn.rs`): under the writer lock, through its own reader
//! index and the store's journal (see `journal.rs`), so a snapshot pays
//! only for what changed plus a few fsyncs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ds_format::manifest::{FileRef, ManifestBuilder};
use ds_format::snapshot::{Snapshot, SnapshotStats};
use ds_format::tree::{DirBuilder, DirRef, Entry, EntryData, Link, Owner};
use ds_format::{ObjectId, ObjectKind};

use super::cache::{ChunkList, ChunkPos};
use super::node::Content;
use super::{Ino, Vfs, now_ns};
pub use crate::txn::Target;
use crate::txn::{NewSnapshot, Transaction};
use crate::writer::{PackWriter, Payload, WriteStats};
use crate::{Result, StoreError};

/// What to record with a snapshot of a mount.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub message: String,
    pub metadata: BTreeMap<String, String>,
    /// Recorded as the snapshot's source (the mountpoint).
    pub source: Vec<u8>,
    /// Runs this snapshot records.
    pub runs: Vec<ds_format::run::Run>,
}

/// What a snapshot of a mount did.
#[derive(Debug, Clone)]
pub struct CommitReport {
    pub id: ObjectId,
    pub snapshot: Snapshot,
    pub parent: Option<ObjectId>,
    /// Files whose content changed (re-chunked around their dirty ranges).
    pub files_rechunked: u64,
    /// Bytes read to re-chunk them (dirty bytes plus the chunks around them).
    pub bytes_read: u64,
    /// Directories rebuilt (those on paths to changes).
    pub dirs_rebuilt: u64,
    pub written: WriteStats,
}

/// Signed change of snapshot statistics.
#[derive(Debug, Clone, Copy, Default)]
struct Delta {
    files: i64,
    dirs: i64,
    symlinks: i64,
    bytes: i64,
}

impl Delta {
    fn add(&mut self, s: &SnapshotStats, sign: i64) {
        self.files += sign * s.files as i64;
        self.dirs += sign * s.dirs as i64;
        self.symlinks += sign * s.symlinks as i64;
        self.bytes += sign * s.bytes as i64;
    }
    fn plus(&mut self, d: Delta) {
        self.files += d.files;
        self.dirs += d.dirs;
        self.symlinks += d.symlinks;
        self.bytes += d.bytes;
    }
    fn apply(&self, s: SnapshotStats) -> SnapshotStats {
        let f = |a: u64, d: i64| (a as i64 + d).max(0) as u64;
        SnapshotStats {
            files: f(s.files, self.files),
            dirs: f(s.dirs, self.dirs),
            symlinks: f(s.symlinks, self.symlinks),
            bytes: f(s.bytes, self.bytes),
        }
    }
}

/// A node's new stored form, applied only once the snapshot is durable and
/// the ref has moved (so a failed snapshot leaves the mount as it was).
enum Update {
    Dir(u64, DirRef),
    File(u64, FileRef, Arc<ChunkList>),
    Clean(u64),
}

struct Ctx {
    writer: PackWriter,
    /// Content of hard-linked files written in this commit, by node.
    linked: HashMap<u64, FileRef>,
    updates: Vec<Update>,
    files: u64,
    bytes_read: u64,
    dirs: u64,
}

impl Ctx {
    fn put(&self, kind: ObjectKind, id: ObjectId, bytes: Vec<u8>) {
        // Most rebuilt nodes are unchanged and already stored: skip them
        // before the writer compresses them. A failed lookup or writer fails
        // `WriterSession::finish` (or the lookup again there), so nothing is lost.
        if self.writer.contains(&id).unwrap_or(false) {
            return;
        }
        let _ = self.writer.put(kind, id, Payload::Owned(bytes));
    }
}

fn vfs_err(e: super::VfsError) -> StoreError {
    StoreError::Mount(e)
}

impl Vfs {
    /// Snapshots the mount into its workspace, re-chunking only dirty byte
    /// ranges and rebuilding only directories on dirty paths, writing
    /// through `target` (the writer lock is held only for this). Moves the
    /// workspace ref by compare-and-swap against the mount's base, then
    /// continues on the new snapshot (inode numbers are kept) and
    /// checkpoints the now-empty dirty layer.
    pub fn commit(&mut self, target: Target<'_>, opts: &CommitOptions) -> Result<CommitReport> {
        let ws = match &self.rw {
            Some(rw) => rw.workspace.clone(),
            None => {
                return Err(StoreError::BadInput(
                    "a read-only mount has nothing to snapshot".into(),
                ));
            }
        };
        let parent = (self.base != ObjectId::ZERO).then_some(self.base);
        if let Target::Append(a) = &target
            && !Arc::ptr_eq(a.store(), &self.store)
        {
            return Err(StoreError::Internal(
                "a mount appends through its own store".into(),
            ));
        }
        let txn = Transaction::begin(target)?;
        self.list_changed_links().map_err(vfs_err)?;
        let mut ctx = Ctx {
            linked: HashMap::new(),
            writer: txn.writer().clone(),
            updates: Vec::new(),
            files: 0,
            bytes_read: 0,
            dirs: 0,
        };
        let (root, delta) = self.commit_dir(Ino::ROOT.0, &mut ctx)?;
        let stats = delta.apply(self.base_stats);
        let (id, snap) = txn.put_snapshot(NewSnapshot {
            root,
            parent,
            workspace: ws.clone(),
            source: opts.source.clone(),
            message: opts.message.clone(),
            metadata: opts.metadata.clone(),
            stats,
            time_ns: Some(now_ns()),
            runs: opts.runs.clone(),
        })?;
        let Ctx {
            writer: pw,
            updates,
            files,
            bytes_read,
            dirs,
            ..
        } = ctx;
        drop(pw);
        // The durability barriers of ARCHITECTURE.md: packs, then their
        // index entries (or journal markers), then the ref; the writer
        // lock (an appender's) is released before the checkpoint below.
        let written = txn.commit(&ws, parent, id)?;
        self.apply_updates(updates);
        self.base = id;
        self.base_stats = stats;
        self.stats_cache.insert(
            root.root,
            SnapshotStats {
                dirs: stats.dirs.saturating_sub(1),
                ..stats
            },
        );
        self.checkpoint().map_err(vfs_err)?;
        Ok(CommitReport {
            id,
            snapshot: snap,
            parent,
            files_rechunked: files,
            bytes_read,
            dirs_rebuilt: dirs,
            written,
        })
    }

    fn apply_updates(&mut self, updates: Vec<Update>) {
        for u in updates {
            let (ino, dropped) = match u {
                Update::Dir(ino, d) => {
                    if let Some(ds) = self.nodes.get_mut(&ino).and_then(|n| n.dir_mut()) {
                        ds.base = Some(d);
                    }
                    (ino, None)
                }
                Update::File(ino, fr, chunks) => {
                    let mut dropped = None;
                    if let Some(f) = self.nodes.get_mut(&ino).and_then(|n| n.file_mut()) {
                        f.base = fr;
                        f.base_valid = fr.size;
                        f.size = fr.size;
                        f.extents = Default::default();
                        f.chunks = Some(chunks);
                        dropped = f.overlay.take();
                    }
                    (ino, dropped)
                }
                Update::Clean(ino) => {
                    let dropped = self
                        .nodes
                        .get_mut(&ino)
                        .and_then(|n| n.file_mut())
                        .and_then(|f| f.overlay.take());
                    (ino, dropped)
                }
            };
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.dirty = false;
            }
            if let (Some(o), Some(rw)) = (dropped, &mut self.rw) {
                rw.garbage.push(o.id);
                rw.unsynced.retain(|f| !Arc::ptr_eq(f, &o.file));
            }
        }
    }

    /// A changed hard-linked node's other names may sit in directories the
    /// mount never listed, whose stored entries still describe the node as
    /// it was. Before a commit those directories are found, by walking the
    /// stored trees not yet listed (only when such a node exists, and only
    /// subtrees that hold a member are then listed), which attaches the
    /// names to the node and marks them dirty. The walk proves the mount
    /// now knows every name in the tree, so the link count becomes that
    /// (the source's count may have included names outside the tree) and
    /// the next commit does not walk again.
    fn list_changed_links(&mut self) -> super::VResult<()> {
        let wanted: HashSet<u64> = self
            .nodes
            .values()
            .filter(|n| n.dirty && n.group != 0 && (n.names().count() as u32) < n.nlink)
            .map(|n| n.group)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut memo: HashMap<ObjectId, bool> = HashMap::new();
        let mut stack = vec![Ino::ROOT.0];
        while let Some(d) = stack.pop() {
            let Some(ds) = self.nodes.get(&d).and_then(|n| n.dir()) else {
                continue;
            };
            if ds.children.is_none() {
                let Some(b) = ds.base else { continue };
                if !self.holds_group(&b, &wanted, &mut memo)? {
                    continue;
                }
                self.ensure_loaded(d)?;
            }
            let kids = self.nodes[&d].dir().and_then(|x| x.children.as_ref());
            stack.extend(
                kids.into_iter()
                    .flat_map(|c| c.values())
                    .filter(|i| self.nodes.get(i).is_some_and(|n| n.is_dir())),
            );
        }
        for g in wanted {
            if let Some(n) = self.groups.get(&g).and_then(|i| self.nodes.get_mut(i)) {
                n.nlink = (n.names().count() as u32).max(1);
            }
        }
        Ok(())
    }

    /// Does the stored tree `d` hold a member of one of `groups`?
    fn holds_group(
        &self,
        d: &DirRef,
        groups: &HashSet<u64>,
        memo: &mut HashMap<ObjectId, bool>,
    ) -> super::VResult<bool> {
        if let Some(v) = memo.get(&d.root) {
            return Ok(*v);
        }
        let mut found = false;
        for e in self.store.dir_entries(d)? {
            found = match &e.data {
                EntryData::Dir(sub) => self.holds_group(sub, groups, memo)?,
                _ => e.link.is_some_and(|l| groups.contains(&l.group)),
            };
            if found {
                break;
            }
        }
        memo.insert(d.root, found);
        Ok(found)
    }

    /// Statistics of a stored directory tree (below it), counted once.
    fn subtree_stats(&mut self, d: &DirRef) -> Result<SnapshotStats> {
        if let Some(s) = self.stats_cache.get(&d.root) {
            return Ok(*s);
        }
        let mut s = SnapshotStats::default();
        for e in self.store.dir_entries(d)? {
            let c = self.entry_stats(&e)?;
            s.files += c.files;
            s.dirs += c.dirs;
            s.symlinks += c.symlinks;
            s.bytes += c.bytes;
        }
        self.stats_cache.insert(d.root, s);
        Ok(s)
    }

    /// What one entry (and everything below it) adds to the statistics.
    fn entry_stats(&mut self, e: &Entry) -> Result<SnapshotStats> {
        Ok(match &e.data {
            EntryData::File(f) => SnapshotStats {
                files: 1,
                bytes: f.size,
                ..Default::default()
            },
            EntryData::Symlink(_) => SnapshotStats {
                symlinks: 1,
                ..Default::default()
            },
            // Counted with files, as a cold snapshot counts them.
            EntryData::Fifo | EntryData::Socket | EntryData::Device { .. } => SnapshotStats {
                files: 1,
                ..Default::default()
            },
            EntryData::Dir(d) => {
                let mut s = self.subtree_stats(d)?;
                s.dirs += 1;
                s
            }
        })
    }

    /// Builds a dirty directory's new tree; returns it and how the
    /// statistics below it changed relative to its base.
    fn commit_dir(&mut self, ino: u64, ctx: &mut Ctx) -> Result<(DirRef, Delta)> {
        let n = &self.nodes[&ino];
        let d = n.dir().expect("directory");
        if !n.dirty
            && let Some(b) = d.base
        {
            return Ok((b, Delta::default()));
        }
        self.ensure_loaded(ino).map_err(vfs_err)?;
        let d = self.nodes[&ino].dir().expect("directory");
        let base = d.base;
        let children: Vec<(Vec<u8>, u64)> = d
            .children
            .as_ref()
            .expect("loaded")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut old: HashMap<Vec<u8>, Entry> = match base {
            Some(b) => self
                .store
                .dir_entries(&b)?
                .into_iter()
                .map(|e| (e.name.clone(), e))
                .collect(),
            None => HashMap::new(),
        };
        let mut delta = Delta::default();
        let mut builder = DirBuilder::default();
        for (name, child) in children {
            let prev = old.remove(&name);
            let c = &self.nodes[&child];
            let (mode, mtime_ns, dirty) = (c.mode, c.mtime_ns, c.dirty);
            let owner = Some(Owner {
                uid: c.uid,
                gid: c.gid,
            });
            let xattrs = c.xattrs.clone();
            let link = (c.group != 0 && c.is_linked()).then_some(Link {
                group: c.group,
                nlink: c.nlink,
            });
            let data = match &c.content {
                Content::Symlink(t) => EntryData::Symlink(t.clone()),
                Content::Special(d) => d.clone(),
                Content::File(_) => EntryData::File(self.commit_file(child, ctx)?),
                Content::Dir(cd) => {
                    let child_base = cd.base;
                    let (r, d) = self.commit_dir(child, ctx)?;
                    let in_place = matches!(
                        (&prev, child_base),
                        (Some(Entry { data: EntryData::Dir(o), .. }), Some(b)) if *o == b
                    );
                    if in_place {
                        delta.plus(d);
                    } else {
                        let below = match child_base {
                            Some(b) => self.subtree_stats(&b)?,
                            None => SnapshotStats::default(),
                        };
                        delta.add(&below, 1);
                        delta.plus(d);
                        delta.dirs += 1;
                        if let Some(p) = &prev {
                            let s = self.entry_stats(p)?;
                            delta.add(&s, -1);
                        }
                    }
                    EntryData::Dir(r)
                }
            };
            let entry = Entry {
                name,
                mode,
                mtime_ns,
                owner,
                xattrs,
                link,
                data,
            };
            if !matches!(entry.data, EntryData::Dir(_)) {
                let s = self.entry_stats(&entry)?;
                delta.add(&s, 1);
                if let Some(p) = &prev {
                    let s = self.entry_stats(p)?;
                    delta.add(&s, -1);
                }
            }
            if dirty && !matches!(entry.data, EntryData::Dir(_) | EntryData::File(_)) {
                ctx.updates.push(Update::Clean(child));
            }
            builder.push(entry, &mut |id, bytes| {
                ctx.put(ObjectKind::DirNode, id, bytes)
            })?;
        }
        for (_, gone) in old {
            let s = self.entry_stats(&gone)?;
            delta.add(&s, -1);
        }
        let r = builder.finish(&mut |id, bytes| ctx.put(ObjectKind::DirNode, id, bytes));
        ctx.dirs += 1;
        ctx.updates.push(Update::Dir(ino, r));
        Ok((r, delta))
    }

    /// A file's new content reference: its base if unchanged, else re-chunked
    /// around the dirty ranges.
    fn commit_file(&mut self, ino: u64, ctx: &mut Ctx) -> Result<FileRef> {
        // Another name of a hard-linked file already written.
        if let Some(f) = ctx.linked.get(&ino) {
            return Ok(*f);
        }
        let f = self.commit_file_once(ino, ctx)?;
        if self.nodes[&ino].is_linked() {
            ctx.linked.insert(ino, f);
        }
        Ok(f)
    }

    fn commit_file_once(&mut self, ino: u64, ctx: &mut Ctx) -> Result<FileRef> {
        let n = &self.nodes[&ino];
        let f = n.file().expect("file");
        if !f.content_dirty() {
            if n.dirty || f.overlay.is_some() {
                ctx.updates.push(Update::Clean(ino));
            }
            return Ok(f.base);
        }
        let (base_size, base_valid, size, extents) =
            (f.base.size, f.base_valid, f.size, f.extents.clone());
        let base = if base_valid > 0 {
            self.chunk_list(ino).map_err(vfs_err)?
        } else {
            Arc::new(ChunkList::default())
        };
        let chunker = self.store.chunker().clone();
        let max = u64::from(chunker.params().max);
        let reusable = |c: &ChunkPos| {
            let end = c.offset + c.len;
            end <= base_valid
                && extents.overlapping(c.offset..end).is_empty()
                && (base_size - c.offset).min(max) == (size - c.offset).min(max)
        };
        let window = (max * 4).max(1 << 20);
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = 0u64;
        let mut out = Vec::new();
        let mut builder = ManifestBuilder::default();
        let mut pos = 0u64;
        // Base chunks are in offset order and `pos` only grows: a cursor
        // finds the one starting at `pos` (if any) in amortized O(1).
        let mut next = 0usize;
        while pos < size {
            while next < base.chunks.len() && base.chunks[next].offset < pos {
                next += 1;
            }
            if let Some(c) = base.chunks.get(next)
                && c.offset == pos
                && reusable(c)
            {
                let c = *c;
                builder.push(c.id, c.len, &mut |id, b| {
                    ctx.put(ObjectKind::FileNode, id, b)
                });
                out.push(c);
                pos += c.len;
                continue;
            }
            let want = max.min(size - pos);
            if pos < buf_start || pos + want > buf_start + buf.len() as u64 {
                let len = window.min(size - pos);
                buf = self.read_range(ino, pos, len).map_err(vfs_err)?;
                buf_start = pos;
                ctx.bytes_read += len;
            }
            let at = (pos - buf_start) as usize;
            let data = &buf[at..at + want as usize];
            let cut = chunker.cut(data);
            let chunk = &data[..cut];
            let id = chunker.chunk_id(chunk);
            ctx.put(ObjectKind::Chunk, id, chunk.to_vec());
            builder.push(id, cut as u64, &mut |i, b| {
                ctx.put(ObjectKind::FileNode, i, b)
            });
            out.push(ChunkPos {
                id,
                offset: pos,
                len: cut as u64,
            });
            pos += cut as u64;
        }
        let fr = builder.finish(&mut |id, b| ctx.put(ObjectKind::FileNode, id, b));
        ctx.files += 1;
        ctx.updates
            .push(Update::File(ino, fr, Arc::new(ChunkList { chunks: out })));
        Ok(fr)
    }
}
