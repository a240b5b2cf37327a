//! The in-memory inode table's entries.
//!
//! A node is either still exactly what the base snapshot says (clean: its
//! content is a `FileRef`/`DirRef` into the store, a directory's children not
//! even listed until someone looks), or changed since (dirty). `dirty` on a
//! node means "this node or something below it changed since the base", and
//! it always holds on every ancestor of a dirty node, so a snapshot walks
//! exactly the dirty paths and reuses every clean subtree by reference.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

use ds_format::manifest::FileRef;
use ds_format::tree::{DirRef, Entry, EntryData, Xattr};

use super::cache::ChunkList;
use super::ranges::RangeSet;

/// A file's bytes in the dirty layer: a sparse local file, same offsets as
/// the file it shadows.
#[derive(Debug, Clone)]
pub(crate) struct Overlay {
    pub id: u64,
    pub file: Arc<File>,
}

/// A regular file's content: base bytes from the store, patched by the
/// overlay where `extents` says, zeros elsewhere past `base_valid`.
#[derive(Debug, Clone)]
pub(crate) struct FileState {
    pub base: FileRef,
    /// Base bytes at or after this were cut off by a truncate.
    pub base_valid: u64,
    pub size: u64,
    pub extents: RangeSet,
    pub overlay: Option<Overlay>,
    pub chunks: Option<Arc<ChunkList>>,
}

impl FileState {
    pub fn clean(base: FileRef) -> Self {
        FileState {
            base,
            base_valid: base.size,
            size: base.size,
            extents: RangeSet::default(),
            overlay: None,
            chunks: None,
        }
    }

    /// Does the content differ from `base`?
    pub fn content_dirty(&self) -> bool {
        self.size != self.base.size || self.base_valid < self.base.size || !self.extents.is_empty()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DirState {
    pub base: Option<DirRef>,
    /// `None` until listed from `base`.
    pub children: Option<BTreeMap<Vec<u8>, u64>>,
}

#[derive(Debug, Clone)]
pub(crate) enum Content {
    Dir(DirState),
    File(FileState),
    Symlink(Vec<u8>),
    /// A FIFO, socket or device node (`EntryData::Fifo`, `Socket` or
    /// `Device`): a name and metadata, no content.
    Special(EntryData),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// One name of the node: `None` once it has none left (the node lives
    /// on while open or looked up). A directory has exactly one.
    pub parent: Option<u64>,
    pub name: Vec<u8>,
    /// Its other names (a hard-linked node), as (directory, name).
    pub more: Vec<(u64, Vec<u8>)>,
    /// The link count shown: names known to the mount, or more if the
    /// snapshot said so and not every directory holding one is listed yet.
    pub nlink: u32,
    /// Hard-link group label (0: none yet); kept across snapshots.
    pub group: u64,
    pub xattrs: Vec<Xattr>,
    /// Shown as the mount's forced owner (`VfsOptions::force_owner`), not
    /// as `uid`/`gid`, which keep what the snapshot records.
    pub owner_forced: bool,
    pub content: Content,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub atime_ns: i64,
    pub dirty: bool,
    /// Kernel lookup count (FUSE forget protocol).
    pub lookups: u64,
    pub opens: u32,
}

impl Node {
    /// A new node with one name (or none, for a root), clean and unreferenced.
    pub fn fresh(
        parent: Option<u64>,
        name: Vec<u8>,
        content: Content,
        mode: u32,
        (uid, gid): (u32, u32),
        time_ns: i64,
    ) -> Node {
        Node {
            parent,
            name,
            more: Vec::new(),
            nlink: 1,
            group: 0,
            xattrs: Vec::new(),
            owner_forced: false,
            content,
            mode: mode & 0o7777,
            uid,
            gid,
            mtime_ns: time_ns,
            ctime_ns: time_ns,
            atime_ns: time_ns,
            dirty: false,
            lookups: 0,
            opens: 0,
        }
    }

    /// A node for a stored entry; `uid`/`gid` are used if it records no
    /// owner (trees of format 1); `forced`: shown with the mount's forced
    /// owner.
    pub fn from_entry(e: &Entry, parent: u64, (uid, gid): (u32, u32), forced: bool) -> Node {
        let content = match &e.data {
            EntryData::File(f) => Content::File(FileState::clean(*f)),
            EntryData::Dir(d) => Content::Dir(DirState {
                base: Some(*d),
                children: None,
            }),
            EntryData::Symlink(t) => Content::Symlink(t.clone()),
            special => Content::Special(special.clone()),
        };
        let (uid, gid) = e.owner.map(|o| (o.uid, o.gid)).unwrap_or((uid, gid));
        Node {
            parent: Some(parent),
            name: e.name.clone(),
            more: Vec::new(),
            nlink: e.link.map(|l| l.nlink.max(1)).unwrap_or(1),
            group: e.link.map(|l| l.group).unwrap_or(0),
            xattrs: e.xattrs.clone(),
            owner_forced: forced,
            content,
            mode: e.mode & 0o7777,
            uid,
            gid,
            mtime_ns: e.mtime_ns,
            ctime_ns: e.mtime_ns,
            atime_ns: e.mtime_ns,
            dirty: false,
            lookups: 0,
            opens: 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.content, Content::Dir(_))
    }

    pub fn file(&self) -> Option<&FileState> {
        match &self.content {
            Content::File(f) => Some(f),
            _ => None,
        }
    }

    pub fn file_mut(&mut self) -> Option<&mut FileState> {
        match &mut self.content {
            Content::File(f) => Some(f),
            _ => None,
        }
    }

    pub fn dir(&self) -> Option<&DirState> {
        match &self.content {
            Content::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn dir_mut(&mut self) -> Option<&mut DirState> {
        match &mut self.content {
            Content::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn size(&self) -> u64 {
        match &self.content {
            Content::File(f) => f.size,
            Content::Symlink(t) => t.len() as u64,
            Content::Dir(_) => 4096,
            Content::Special(_) => 0,
        }
    }

    /// Every (directory, name) the node is known by.
    pub fn names(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.parent
            .map(|p| (p, self.name.as_slice()))
            .into_iter()
            .chain(self.more.iter().map(|(p, n)| (*p, n.as_slice())))
    }

    /// Adds a name.
    pub fn add_name(&mut self, parent: u64, name: &[u8]) {
        if self.parent.is_none() {
            self.parent = Some(parent);
            self.name = name.to_vec();
        } else {
            self.more.push((parent, name.to_vec()));
        }
    }

    /// Drops a name; another takes the primary place if there is one.
    pub fn remove_name(&mut self, parent: u64, name: &[u8]) {
        if self.parent == Some(parent) && self.name == name {
            match self.more.pop() {
                Some((p, n)) => {
                    self.parent = Some(p);
                    self.name = n;
                }
                None => self.parent = None,
            }
        } else if let Some(i) = self
            .more
            .iter()
            .position(|(p, n)| *p == parent && n == name)
        {
            self.more.swap_remove(i);
        }
    }

    /// Is this a hard-linked node (more than one name, known or recorded)?
    pub fn is_linked(&self) -> bool {
        !self.is_dir() && (self.nlink > 1 || !self.more.is_empty())
    }
}
