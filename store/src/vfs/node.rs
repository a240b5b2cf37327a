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
use ds_format::tree::{DirRef, Entry, EntryData};

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
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// `None` once unlinked (the node lives on while open or looked up).
    pub parent: Option<u64>,
    pub name: Vec<u8>,
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
    pub fn from_entry(e: &Entry, parent: u64, uid: u32, gid: u32) -> Node {
        let content = match &e.data {
            EntryData::File(f) => Content::File(FileState::clean(*f)),
            EntryData::Dir(d) => Content::Dir(DirState {
                base: Some(*d),
                children: None,
            }),
            EntryData::Symlink(t) => Content::Symlink(t.clone()),
        };
        Node {
            parent: Some(parent),
            name: e.name.clone(),
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
        }
    }
}
