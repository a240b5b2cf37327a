//! A store-level virtual filesystem: what a FUSE mount serves, with no FUSE
//! in it, so tests drive every operation directly.
//!
//! Why it lives in ds-store: the read-write mount's dirty layer and the
//! O(changed) snapshot are storage logic (chunk lists, re-chunking, tree
//! building, refs), and must be tested without a kernel in the loop. The
//! `ds-fuse` crate is a thin adapter that maps kernel requests onto [`Vfs`].
//!
//! Two ways to open one:
//! - [`Vfs::open_snapshot`]: read-only and lazy. Directories are listed when
//!   first looked at, and a read fetches only the chunks it touches, through
//!   a bounded verified-chunk cache with read-ahead on sequential access.
//! - [`Vfs::open_workspace`]: read-write over a workspace's latest snapshot.
//!   Writes go to a *dirty layer* under `STORE/mounts/<workspace>/`: one
//!   sparse overlay file per changed file plus the exact byte ranges it
//!   holds, and a state file describing the changed part of the namespace.
//!   [`Vfs::commit`] turns the dirty layer into a snapshot at a cost
//!   proportional to what changed (see `commit.rs`), and the mount carries on
//!   over the new snapshot with the same inode numbers.
//!
//! Durability of the dirty layer (see `state.rs`): `fsync`/`fsyncdir` (and
//! [`Vfs::checkpoint`], which the mount calls every few seconds) make the
//! dirty layer durable; after a crash or SIGKILL, reopening the workspace
//! recovers it as of the last checkpoint. The store itself is only written
//! by `commit`, through the ordinary durability pipeline.

mod cache;
mod commit;
mod io;
mod node;
mod ns;
mod ranges;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ds_format::ObjectId;
use ds_format::snapshot::SnapshotStats;
use ds_format::tree::{DirRef, EntryData};

pub use cache::{ChunkCache, ChunkList, ChunkPos};

/// The longest name a mount resolves or creates: what the filesystems ds
/// restores onto accept (ext4, xfs, btrfs: 255 bytes). Snapshots could
/// hold longer names (`tree::MAX_NAME`), and a mount that let one in made
/// a snapshot that `ds restore` cannot write back.
pub const NAME_MAX: usize = 255;
pub use commit::{CommitOptions, CommitReport, Target};
pub use io::ReadPlan;
pub use ranges::RangeSet;
pub use state::mount_dir;

use node::{Content, DirState, Node};

use crate::{Store, StoreError};

/// An inode number as the kernel sees it. The root is [`Ino::ROOT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

/// An open file or directory handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

/// Why an operation failed, as an errno for the kernel, plus (for failures
/// that are not the caller's fault, like a damaged chunk) a line to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfsError {
    pub errno: i32,
    pub detail: Option<String>,
}

impl VfsError {
    pub fn errno(errno: i32) -> Self {
        VfsError {
            errno,
            detail: None,
        }
    }

    /// An I/O failure (EIO) with the reason to log.
    pub fn io(detail: String) -> Self {
        VfsError {
            errno: libc::EIO,
            detail: Some(detail),
        }
    }
}

impl std::fmt::Display for VfsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = std::io::Error::from_raw_os_error(self.errno);
        match &self.detail {
            Some(d) => write!(f, "{e}: {d}"),
            None => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VfsError {}

impl From<StoreError> for VfsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Mount(v) => v,
            e => VfsError::io(e.to_string()),
        }
    }
}

pub type VResult<T> = std::result::Result<T, VfsError>;

/// What kind of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    fn of(c: &Content) -> Kind {
        match c {
            Content::Dir(_) => Kind::Dir,
            Content::File(_) => Kind::File,
            Content::Symlink(_) => Kind::Symlink,
            Content::Special(EntryData::Fifo) => Kind::Fifo,
            Content::Special(EntryData::Socket) => Kind::Socket,
            Content::Special(EntryData::Device { block: true, .. }) => Kind::BlockDevice,
            Content::Special(_) => Kind::CharDevice,
        }
    }
}

/// Attributes of a node (`stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// 512-byte blocks (stored or dirty bytes, rounded up).
    pub blocks: u64,
    /// Device number of a device node.
    pub rdev: u64,
}

/// One directory entry as listed by [`Vfs::readdir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: Vec<u8>,
}

/// Changes for [`Vfs::setattr`]; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

/// Rename flags (`renameat2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// Tunables of a mount.
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// Owner given to entries the snapshot records no owner for (trees
    /// written before format 2): usually the owner of the mountpoint.
    pub uid: u32,
    pub gid: u32,
    /// Show every entry of the snapshot as owned by this (uid, gid),
    /// whatever it records (`ds mount --uid`, a container's user on a
    /// runner). Entries made in the mount and entries chowned in it show
    /// their real owners. Recorded owners are kept: a snapshot of the
    /// mount records them, not the forced one.
    pub force_owner: Option<(u32, u32)>,
    /// Bytes of verified chunks kept in memory.
    pub cache_bytes: u64,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: usize,
    /// Threads doing that read-ahead.
    pub readahead_threads: usize,
}

impl Default for VfsOptions {
    fn default() -> Self {
        VfsOptions {
            uid: 0,
            gid: 0,
            force_owner: None,
            cache_bytes: 256 << 20,
            readahead_chunks: 16,
            readahead_threads: 2,
        }
    }
}

/// Read-write state: the workspace and where its dirty layer lives.
#[derive(Debug)]
struct RwState {
    workspace: String,
    dir: PathBuf,
    next_overlay: u64,
    /// Overlay files no longer used, deleted after the next checkpoint (the
    /// last durable state may still name them).
    garbage: Vec<u64>,
    /// Something changed since the last checkpoint.
    unsaved: bool,
    /// Overlay files written since the last checkpoint (to fsync).
    unsynced: Vec<Arc<File>>,
    /// Held for the mount's life: one read-write mount per workspace.
    _lock: File,
}

/// An open handle.
#[derive(Debug)]
struct Handle {
    ino: u64,
    write: bool,
    /// End of the last read, to detect sequential access.
    last_end: u64,
    /// The file's path when first read through this handle (for log lines;
    /// computed once, not per read).
    path: Option<String>,
}

/// The filesystem. Not internally locked: the FUSE adapter wraps it in a
/// mutex and runs a read's chunk fetching ([`ReadPlan::execute`]) outside it.
#[derive(Debug)]
pub struct Vfs {
    store: Arc<Store>,
    cache: Arc<ChunkCache>,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    base: ObjectId,
    base_stats: SnapshotStats,
    /// Subtree statistics of directory trees already counted.
    stats_cache: HashMap<ObjectId, SnapshotStats>,
    opts: VfsOptions,
    rw: Option<RwState>,
    /// Hard-link groups met so far: label → node.
    groups: HashMap<u64, u64>,
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn enoent() -> VfsError {
    VfsError::errno(libc::ENOENT)
}

impl Vfs {
    /// Mounts snapshot `snap` read-only.
    pub fn open_snapshot(
        store: Arc<Store>,
        snap: ObjectId,
        opts: VfsOptions,
    ) -> crate::Result<Vfs> {
        let s = store.load_snapshot(&snap)?;
        let mut v = Vfs::empty(store, opts);
        v.set_base(snap, s.root, s.stats, s.time_ns);
        Ok(v)
    }

    fn empty(store: Arc<Store>, opts: VfsOptions) -> Vfs {
        let cache = ChunkCache::new(store.clone(), opts.cache_bytes, opts.readahead_threads);
        Vfs {
            store,
            cache,
            nodes: HashMap::new(),
            next_ino: 2,
            handles: HashMap::new(),
            next_fh: 1,
            base: ObjectId::ZERO,
            base_stats: SnapshotStats::default(),
            stats_cache: HashMap::new(),
            opts,
            rw: None,
            groups: HashMap::new(),
        }
    }

    fn set_base(&mut self, snap: ObjectId, root: DirRef, stats: SnapshotStats, time_ns: i64) {
        self.base = snap;
        // The snapshot's dir count includes the root itself.
        let below = SnapshotStats {
            dirs: stats.dirs.saturating_sub(1),
            ..stats
        };
        self.stats_cache.insert(root.root, below);
        self.base_stats = stats;
        let mut node = Node::fresh(
            None,
            Vec::new(),
            Content::Dir(DirState {
                base: Some(root),
                children: None,
            }),
            0o755,
            (self.opts.uid, self.opts.gid),
            time_ns,
        );
        node.lookups = 1;
        self.nodes.insert(Ino::ROOT.0, node);
    }

    /// The snapshot this filesystem currently stands on.
    pub fn base_snapshot(&self) -> ObjectId {
        self.base
    }

    pub fn is_writable(&self) -> bool {
        self.rw.is_some()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    fn node(&self, ino: u64) -> VResult<&Node> {
        self.nodes.get(&ino).ok_or_else(enoent)
    }

    fn node_mut(&mut self, ino: u64) -> VResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or_else(enoent)
    }

    fn alloc(&mut self, node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        ino
    }

    fn require_rw(&self) -> VResult<()> {
        if self.rw.is_none() {
            return Err(VfsError::errno(libc::EROFS));
        }
        Ok(())
    }

    /// The path of a node from the mount's root, for log lines.
    pub fn path_of(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut cur = ino.0;
        while let Some(n) = self.nodes.get(&cur) {
            match n.parent {
                Some(p) => {
                    parts.push(String::from_utf8_lossy(&n.name).into_owned());
                    cur = p;
                }
                None if cur == Ino::ROOT.0 => break,
                None => {
                    parts.push(format!("{} (deleted)", String::from_utf8_lossy(&n.name)));
                    break;
                }
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Marks a node and every ancestor of each of its names dirty.
    fn mark_dirty(&mut self, ino: u64) {
        if let Some(r) = &mut self.rw {
            r.unsaved = true;
        }
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        n.dirty = true;
        let dirs: Vec<u64> = n.names().map(|(p, _)| p).collect();
        for d in dirs {
            let mut cur = Some(d);
            while let Some(i) = cur {
                let Some(n) = self.nodes.get_mut(&i) else {
                    break;
                };
                n.dirty = true;
                cur = n.parent;
            }
        }
    }

    /// Lists a directory's base entries into nodes, once.
    fn ensure_loaded(&mut self, ino: u64) -> VResult<()> {
        let node = self.node(ino)?;
        let d = node.dir().ok_or(VfsError::errno(libc::ENOTDIR))?;
        if d.children.is_some() {
            return Ok(());
        }
        let entries = match d.base {
            Some(b) => self
                .store
                .dir_entries(&b)
                .map_err(|e| VfsError::io(format!("listing {}: {e}", self.path_of(Ino(ino)))))?,
            None => Vec::new(),
        };
        let fallback = (self.opts.uid, self.opts.gid);
        let forced = self.opts.force_owner.is_some();
        let mut children = BTreeMap::new();
        let mut joined_dirty = false;
        for e in &entries {
            // Another name of a hard-link group met before: the same node.
            if let Some(l) = e.link
                && let Some(&c) = self.groups.get(&l.group)
                && let Some(n) = self.nodes.get_mut(&c)
            {
                n.add_name(ino, &e.name);
                n.nlink = n.nlink.max(n.names().count() as u32);
                joined_dirty |= n.dirty;
                children.insert(e.name.clone(), c);
                continue;
            }
            let c = self.alloc(Node::from_entry(e, ino, fallback, forced));
            if let Some(l) = e.link {
                self.groups.insert(l.group, c);
            }
            children.insert(e.name.clone(), c);
        }
        if let Some(d) = self.node_mut(ino)?.dir_mut() {
            d.children = Some(children);
        }
        if joined_dirty {
            // Its entry for a changed linked node must be written again.
            self.mark_dirty(ino);
        }
        Ok(())
    }

    fn children(&mut self, ino: u64) -> VResult<&mut BTreeMap<Vec<u8>, u64>> {
        self.ensure_loaded(ino)?;
        Ok(self
            .node_mut(ino)?
            .dir_mut()
            .and_then(|d| d.children.as_mut())
            .expect("loaded directory"))
    }

    /// The entry `name` of directory `parent`. A name longer than any ds
    /// can store is ENAMETOOLONG, as POSIX asks of every call that resolves
    /// it (not ENOENT).
    fn child(&mut self, parent: u64, name: &[u8]) -> VResult<Option<u64>> {
        if name.len() > NAME_MAX {
            return Err(VfsError::errno(libc::ENAMETOOLONG));
        }
        Ok(self.children(parent)?.get(name).copied())
    }

    fn attr_of(&self, ino: u64) -> VResult<Attr> {
        let n = self.node(ino)?;
        let named = n.parent.is_some();
        let (kind, nlink, blocks) = match &n.content {
            Content::File(f) => (
                Kind::File,
                if named { n.nlink } else { 0 },
                f.size.div_ceil(512),
            ),
            c @ (Content::Symlink(_) | Content::Special(_)) => {
                (Kind::of(c), if named { n.nlink } else { 0 }, 0)
            }
            Content::Dir(d) => {
                let subdirs = d
                    .children
                    .as_ref()
                    .map(|c| {
                        c.values()
                            .filter(|i| self.nodes.get(i).is_some_and(Node::is_dir))
                            .count()
                    })
                    .unwrap_or(0);
                let alive = n.parent.is_some() || ino == Ino::ROOT.0;
                (Kind::Dir, if alive { 2 + subdirs as u32 } else { 0 }, 8)
            }
        };
        let (uid, gid) = match self.opts.force_owner {
            Some(o) if n.owner_forced => o,
            _ => (n.uid, n.gid),
        };
        Ok(Attr {
            ino: Ino(ino),
            kind,
            size: n.size(),
            perm: n.mode & 0o7777,
            nlink,
            uid,
            gid,
            atime_ns: n.atime_ns,
            mtime_ns: n.mtime_ns,
            ctime_ns: n.ctime_ns,
            blocks,
            rdev: match n.content {
                Content::Special(EntryData::Device { rdev, .. }) => rdev,
                _ => 0,
            },
        })
    }

    /// `stat`. Lists a directory first so its link count is right.
    pub fn getattr(&mut self, ino: Ino) -> VResult<Attr> {
        if self.node(ino.0)?.is_dir() {
            self.ensure_loaded(ino.0)?;
        }
        self.attr_of(ino.0)
    }

    /// Summary counts for `statfs`: (files, bytes) of the base snapshot.
    pub fn base_stats(&self) -> SnapshotStats {
        self.base_stats
    }
}
