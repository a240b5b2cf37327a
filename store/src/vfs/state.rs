//! The dirty layer on disk, and opening a workspace read-write.
//!
//! ```text
//! STORE/mounts/<workspace>/lock         flock: one read-write mount per workspace
//! STORE/mounts/<workspace>/state.json   the changed namespace, replaced atomically
//! STORE/mounts/<workspace>/overlay/<n>  sparse file: a changed file's new bytes
//! ```
//!
//! `state.json` names the base snapshot and describes only dirty subtrees:
//! each dirty directory lists its children; a clean child is recorded by its
//! stored reference, a changed file by its base reference, size, surviving
//! base length, dirty byte ranges and overlay number.
//!
//! Guarantee after a crash or SIGKILL of the mount: the store is untouched
//! (a mount writes to it only in `commit`, through the normal pipeline), and
//! reopening the workspace restores the dirty layer as of the last checkpoint
//! — the last `fsync`/`fsyncdir` on the mount or periodic checkpoint,
//! whichever came last. A checkpoint fsyncs every overlay written since the
//! previous one, then writes `state.json` by temp file, fsync, rename and
//! directory fsync. Bytes written after it may or may not survive, like a
//! local filesystem after a power cut; overlay files are never deleted
//! before a newer checkpoint stops naming them, so a recovered state never
//! points at missing data. Files unlinked while still open are not recorded.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ds_format::ObjectId;
use ds_format::manifest::FileRef;
use ds_format::snapshot::SnapshotStats;
use ds_format::tree::{DirRef, EntryData, Xattr};
use serde::{Deserialize, Serialize};

use super::node::{Content, DirState, FileState, Node, Overlay};
use super::ranges::RangeSet;
use super::{Ino, RwState, VResult, Vfs, VfsError, VfsOptions, now_ns};
use crate::layout::sync_dir;
use crate::{IoContext, Result, Store, StoreError};

/// 2 added attributes, hard links and special files; 1 is still read.
const STATE_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    workspace: String,
    /// Hex id of the base snapshot; empty for a workspace with none yet.
    base: String,
    next_overlay: u64,
    root: SavedNode,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    dirty: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Hard-link group label and link count (0 and 1 when not linked).
    #[serde(default, skip_serializing_if = "is_zero")]
    group: u64,
    #[serde(default = "one")]
    nlink: u32,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
enum SavedNode {
    Dir {
        meta: Meta,
        /// (height, hex root) of the stored tree this directory started from.
        base: Option<(u8, String)>,
        /// Present for dirty directories only; clean ones relist their base.
        children: Option<Vec<(Vec<u8>, SavedNode)>>,
    },
    File {
        meta: Meta,
        /// (size, height, hex root) of the stored content.
        base: (u64, u8, String),
        base_valid: u64,
        size: u64,
        extents: Vec<(u64, u64)>,
        overlay: Option<u64>,
    },
    Symlink {
        meta: Meta,
        target: Vec<u8>,
    },
    /// A FIFO, socket or device node: the tree format's kind code (4–7).
    Special {
        meta: Meta,
        kind: u8,
        rdev: u64,
    },
    /// Another name of a hard-linked node saved earlier in this state.
    Link {
        group: u64,
    },
}

fn parse_id(hex: &str) -> Result<ObjectId> {
    ds_format::id::parse_hex(hex)
        .and_then(|b| ObjectId::from_slice(&b))
        .ok_or_else(|| StoreError::Corrupt(format!("dirty layer: bad object id {hex:?}")))
}

/// Where a workspace's dirty layer lives.
pub fn mount_dir(store: &Store, workspace: &str) -> PathBuf {
    store.layout().mount_dir(workspace)
}

impl Vfs {
    /// Mounts workspace `workspace` read-write over its latest snapshot (or
    /// an empty tree if it has none), recovering a dirty layer left by an
    /// earlier mount. With `discard`, a leftover dirty layer is deleted
    /// instead. Fails if the workspace is already mounted read-write, or if
    /// the leftover dirty layer was based on a snapshot that is no longer
    /// the workspace's latest (someone else snapshotted it since).
    pub fn open_workspace(
        store: Arc<Store>,
        workspace: &str,
        opts: VfsOptions,
        discard: bool,
    ) -> Result<Vfs> {
        crate::refs::validate_workspace(workspace)?;
        let dir = mount_dir(&store, workspace);
        let overlays = dir.join("overlay");
        fs::create_dir_all(&overlays).at(&overlays)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Conflict(format!(
                    "workspace {workspace:?} is already mounted read-write by another process"
                )));
            }
            Err(TryLockError::Error(e)) => return Err(e).at(&lock_path),
        }
        let head = store.refs().get(workspace)?;
        let state_path = dir.join("state.json");
        let saved: Option<Saved> = match fs::read(&state_path) {
            Ok(b) => Some(
                serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", state_path.display())))?,
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e).at(&state_path),
        };
        let head_hex = head.map(|h| h.to_hex()).unwrap_or_default();
        let saved = match saved {
            Some(_) if discard => None,
            Some(s) if !(1..=STATE_VERSION).contains(&s.version) => {
                return Err(StoreError::Corrupt(format!(
                    "{}: dirty layer version {} not understood",
                    state_path.display(),
                    s.version
                )));
            }
            Some(s) if s.base != head_hex => {
                return Err(StoreError::Conflict(format!(
                    "the dirty layer of workspace {workspace:?} was based on snapshot {} but the \
                     workspace is now at {}; mount with --discard-dirty to drop the unsnapshotted \
                     changes in {}",
                    if s.base.is_empty() { "(none)" } else { &s.base },
                    if head_hex.is_empty() {
                        "(none)"
                    } else {
                        &head_hex
                    },
                    dir.display()
                )));
            }
            s => s,
        };
        let mut v = Vfs::empty(store.clone(), opts);
        let next_overlay = saved.as_ref().map(|s| s.next_overlay).unwrap_or(0);
        // Overlays the recovered state does not name are leftovers.
        let mut garbage = Vec::new();
        for e in fs::read_dir(&overlays).at(&overlays)? {
            let e = e.at(&overlays)?;
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                garbage.push(n);
            }
        }
        v.rw = Some(RwState {
            workspace: workspace.to_string(),
            dir,
            next_overlay,
            garbage,
            unsaved: false,
            unsynced: Vec::new(),
            _lock: lock,
        });
        match head {
            Some(h) => {
                let s = store.load_snapshot(&h)?;
                v.set_base(h, s.root, s.stats, s.time_ns);
            }
            None => v.set_empty_base(),
        }
        if let Some(s) = saved {
            let root = v.restore_node(&s.root, None, Vec::new())?;
            let node = v.nodes.remove(&root).expect("restored root");
            v.nodes.insert(Ino::ROOT.0, node);
            // Names restored under the temporary number point back to it.
            for n in v.nodes.values_mut() {
                if n.parent == Some(root) {
                    n.parent = Some(Ino::ROOT.0);
                }
                for (p, _) in &mut n.more {
                    if *p == root {
                        *p = Ino::ROOT.0;
                    }
                }
            }
            if let Some(n) = v.nodes.get_mut(&Ino::ROOT.0) {
                n.lookups = 1;
            }
            let used = v.used_overlays();
            if let Some(rw) = &mut v.rw {
                rw.garbage.retain(|g| !used.contains(g));
            }
        }
        v.checkpoint().map_err(StoreError::Mount)?;
        Ok(v)
    }

    fn set_empty_base(&mut self) {
        self.base = ObjectId::ZERO;
        self.base_stats = SnapshotStats {
            dirs: 1,
            ..Default::default()
        };
        let mut root = Node::fresh(
            None,
            Vec::new(),
            Content::Dir(DirState {
                base: None,
                children: Some(BTreeMap::new()),
            }),
            0o755,
            (self.opts.uid, self.opts.gid),
            now_ns(),
        );
        root.lookups = 1;
        self.nodes.insert(Ino::ROOT.0, root);
    }

    fn used_overlays(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter_map(|n| n.file().and_then(|f| f.overlay.as_ref()).map(|o| o.id))
            .collect()
    }

    fn restore_node(&mut self, s: &SavedNode, parent: Option<u64>, name: Vec<u8>) -> Result<u64> {
        let (meta, content) = match s {
            SavedNode::Link { group } => {
                let ino = *self.groups.get(group).ok_or_else(|| {
                    StoreError::Corrupt(format!("dirty layer: link to unknown group {group}"))
                })?;
                let n = self.nodes.get_mut(&ino).expect("group node");
                n.add_name(parent.expect("a link has a directory"), &name);
                return Ok(ino);
            }
            SavedNode::Special { meta, kind, rdev } => {
                let data = match kind {
                    4 => EntryData::Fifo,
                    5 => EntryData::Socket,
                    6 | 7 => EntryData::Device {
                        block: *kind == 7,
                        rdev: *rdev,
                    },
                    k => {
                        return Err(StoreError::Corrupt(format!(
                            "dirty layer: unknown special file kind {k}"
                        )));
                    }
                };
                (meta, Content::Special(data))
            }
            SavedNode::Dir { meta, base, .. } => {
                let base = match base {
                    Some((h, r)) => Some(DirRef {
                        height: *h,
                        root: parse_id(r)?,
                    }),
                    None => None,
                };
                (
                    meta,
                    Content::Dir(DirState {
                        base,
                        children: None,
                    }),
                )
            }
            SavedNode::File {
                meta,
                base,
                base_valid,
                size,
                extents,
                overlay,
            } => {
                let base = FileRef {
                    size: base.0,
                    height: base.1,
                    root: if base.0 == 0 {
                        ObjectId::ZERO
                    } else {
                        parse_id(&base.2)?
                    },
                };
                let overlay = match overlay {
                    Some(id) => {
                        let rw = self.rw.as_ref().expect("read-write");
                        let p = rw.dir.join("overlay").join(id.to_string());
                        let file = OpenOptions::new().read(true).write(true).open(&p).at(&p)?;
                        Some(Overlay {
                            id: *id,
                            file: Arc::new(file),
                        })
                    }
                    None => None,
                };
                if !extents.is_empty() && overlay.is_none() {
                    return Err(StoreError::Corrupt(
                        "dirty layer: dirty ranges without an overlay file".into(),
                    ));
                }
                (
                    meta,
                    Content::File(FileState {
                        base,
                        base_valid: (*base_valid).min(base.size),
                        size: *size,
                        extents: RangeSet::from_ranges(extents.iter().map(|(a, b)| *a..*b)),
                        overlay,
                        chunks: None,
                    }),
                )
            }
            SavedNode::Symlink { meta, target } => (meta, Content::Symlink(target.clone())),
        };
        let mut node = Node::fresh(
            parent,
            name,
            content,
            meta.mode,
            (meta.uid, meta.gid),
            meta.mtime_ns,
        );
        node.dirty = meta.dirty;
        node.group = meta.group;
        node.nlink = meta.nlink.max(1);
        node.xattrs = meta
            .xattrs
            .iter()
            .map(|(n, v)| Xattr {
                name: n.clone(),
                value: v.clone(),
            })
            .collect();
        let ino = self.alloc(node);
        if meta.group != 0 {
            self.groups.insert(meta.group, ino);
        }
        if let SavedNode::Dir {
            children: Some(cs), ..
        } = s
        {
            let mut map = BTreeMap::new();
            for (n, c) in cs {
                let ci = self.restore_node(c, Some(ino), n.clone())?;
                map.insert(n.clone(), ci);
            }
            if let Some(d) = self.nodes.get_mut(&ino).and_then(Node::dir_mut) {
                d.children = Some(map);
            }
        }
        Ok(ino)
    }

    /// A node as saved; `linked` holds the hard-linked nodes saved so far
    /// (their later names are saved as links to them).
    fn save_node(&self, ino: u64, linked: &mut HashSet<u64>) -> SavedNode {
        let n = &self.nodes[&ino];
        if n.group != 0 && !linked.insert(ino) {
            return SavedNode::Link { group: n.group };
        }
        let meta = Meta {
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            mtime_ns: n.mtime_ns,
            dirty: n.dirty,
            xattrs: n
                .xattrs
                .iter()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
            group: n.group,
            nlink: n.nlink,
        };
        match &n.content {
            Content::Dir(d) => SavedNode::Dir {
                meta,
                base: d.base.map(|b| (b.height, b.root.to_hex())),
                children: match (&d.children, n.dirty) {
                    (Some(c), true) => Some(
                        c.iter()
                            .map(|(name, i)| (name.clone(), self.save_node(*i, linked)))
                            .collect(),
                    ),
                    _ => None,
                },
            },
            Content::File(f) => SavedNode::File {
                meta,
                base: (f.base.size, f.base.height, f.base.root.to_hex()),
                base_valid: f.base_valid,
                size: f.size,
                extents: f.extents.iter().map(|r| (r.start, r.end)).collect(),
                overlay: f.overlay.as_ref().map(|o| o.id),
            },
            Content::Symlink(t) => SavedNode::Symlink {
                meta,
                target: t.clone(),
            },
            Content::Special(d) => SavedNode::Special {
                meta,
                kind: match d {
                    EntryData::Fifo => 4,
                    EntryData::Socket => 5,
                    EntryData::Device { block: false, .. } => 6,
                    _ => 7,
                },
                rdev: match d {
                    EntryData::Device { rdev, .. } => *rdev,
                    _ => 0,
                },
            },
        }
    }

    /// Makes the dirty layer durable: fsyncs overlays written since the last
    /// checkpoint, then atomically replaces `state.json`, then deletes
    /// overlays nothing names any more. A no-op on a read-only mount.
    pub fn checkpoint(&mut self) -> VResult<()> {
        let Some(rw) = &self.rw else { return Ok(()) };
        let dir = rw.dir.clone();
        let io = |p: &Path, e: std::io::Error| VfsError::io(format!("{}: {e}", p.display()));
        for f in &rw.unsynced {
            f.sync_data().map_err(|e| io(&dir, e))?;
        }
        let saved = Saved {
            version: STATE_VERSION,
            workspace: rw.workspace.clone(),
            base: if self.base == ObjectId::ZERO {
                String::new()
            } else {
                self.base.to_hex()
            },
            next_overlay: rw.next_overlay,
            root: self.save_node(Ino::ROOT.0, &mut HashSet::new()),
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| VfsError::io(e.to_string()))?;
        let tmp = dir.join("state.json.tmp");
        let path = dir.join("state.json");
        let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        sync_dir(&dir).map_err(|e| io(&dir, e))?;
        let rw = self.rw.as_mut().expect("read-write");
        rw.unsynced.clear();
        rw.unsaved = false;
        for g in std::mem::take(&mut rw.garbage) {
            let p = dir.join("overlay").join(g.to_string());
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p, e)),
            }
        }
        Ok(())
    }

    /// Anything changed since the last checkpoint?
    pub fn has_unsaved(&self) -> bool {
        self.rw
            .as_ref()
            .is_some_and(|r| r.unsaved || !r.unsynced.is_empty())
    }

    /// Schedules a dropped node's overlay for deletion at the next checkpoint.
    pub(super) fn discard_overlay(&mut self, n: &Node) {
        if let (Some(rw), Some(o)) = (&mut self.rw, n.file().and_then(|f| f.overlay.as_ref())) {
            rw.garbage.push(o.id);
            rw.unsaved = true;
        }
    }
}
