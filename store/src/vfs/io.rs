//! File content: opening, reading (planned under the lock, fetched outside
//! it), writing into the overlay, truncating.
//!
//! A read is split into segments — base bytes (chunks from the store), overlay
//! bytes (the dirty layer) and zeros (past a truncation or in a sparse hole) —
//! by [`Vfs::read_plan`], which only looks at metadata; [`ReadPlan::execute`]
//! then copies the bytes, or [`ReadPlan::execute_with`] hands them over
//! without a copy when they lie back to back in one mapped pack. The FUSE
//! adapter holds its mutex only for the first step, so concurrent readers
//! fetch and verify chunks in parallel.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ds_format::ObjectId;

use super::cache::{ChunkCache, ChunkData, ChunkList};
use super::node::{Content, Overlay};
use super::{Attr, Fh, Handle, Ino, VResult, Vfs, VfsError, now_ns};
use crate::packs::PackMap;

#[derive(Debug)]
enum Seg {
    Base {
        chunks: Arc<ChunkList>,
        off: u64,
        len: u64,
    },
    Overlay {
        file: Arc<File>,
        off: u64,
        len: u64,
    },
    Zero(u64),
}

/// A verified chunk and the range of it a read uses.
type Piece = (Arc<ChunkData>, usize, usize);

/// A range of a mapped pack holding a read's bytes.
type MappedSpan = (Arc<PackMap>, std::ops::Range<usize>);

/// The bytes a read will return, described by where they come from.
#[derive(Debug)]
pub struct ReadPlan {
    segs: Vec<Seg>,
    cache: Arc<ChunkCache>,
    path: String,
    prefetch: Vec<(ObjectId, u64)>,
}

impl ReadPlan {
    /// Copies the planned bytes. A damaged or missing chunk fails the whole
    /// read with EIO and a message naming the file: never wrong bytes.
    pub fn execute(self) -> VResult<Vec<u8>> {
        let mut out = Vec::new();
        self.execute_into(&mut out)?;
        Ok(out)
    }

    /// [`ReadPlan::execute`] into `out` (cleared first), so a caller serving
    /// many reads reuses one buffer.
    pub fn execute_into(self, out: &mut Vec<u8>) -> VResult<()> {
        self.run(out, false).map(drop)
    }

    /// Runs the plan and hands the bytes to `send`. When they all come from
    /// chunks lying back to back in one mapped pack (a sequential read of a
    /// raw file, the common case), `send` gets that slice of the map
    /// directly; otherwise they are gathered into `out` first. Nothing is
    /// sent on error.
    pub fn execute_with<R>(self, out: &mut Vec<u8>, send: impl FnOnce(&[u8]) -> R) -> VResult<R> {
        match self.run(out, true)? {
            Some((map, span)) => Ok(send(&map[span])),
            None => Ok(send(out)),
        }
    }

    /// Gathers the bytes into `out`, or with `direct`, returns the pack map
    /// and the span of it that holds them all, if there is one.
    fn run(self, out: &mut Vec<u8>, direct: bool) -> VResult<Option<MappedSpan>> {
        out.clear();
        if !self.prefetch.is_empty() {
            self.cache.prefetch(&self.prefetch);
        }
        if let [Seg::Base { chunks, off, len }] = self.segs.as_slice() {
            let pieces = self.base_pieces(chunks, *off, *len)?;
            if direct && let Some(span) = mapped_span(&pieces) {
                return Ok(Some(span));
            }
            gather(out, &pieces);
            return Ok(None);
        }
        let total: u64 = self
            .segs
            .iter()
            .map(|s| match s {
                Seg::Base { len, .. } | Seg::Overlay { len, .. } | Seg::Zero(len) => *len,
            })
            .sum();
        out.reserve(total as usize);
        for s in &self.segs {
            match s {
                Seg::Zero(n) => out.resize(out.len() + *n as usize, 0),
                Seg::Overlay { file, off, len } => {
                    let at = out.len();
                    out.resize(at + *len as usize, 0);
                    file.read_exact_at(&mut out[at..], *off).map_err(|e| {
                        VfsError::io(format!("{}: reading the dirty layer: {e}", self.path))
                    })?;
                }
                Seg::Base { chunks, off, len } => {
                    gather(out, &self.base_pieces(chunks, *off, *len)?);
                }
            }
        }
        Ok(None)
    }

    /// The verified chunks holding base bytes `off..off + len`, each with the
    /// range of it that the read uses.
    fn base_pieces(&self, chunks: &ChunkList, off: u64, len: u64) -> VResult<Vec<Piece>> {
        let (mut pos, end) = (off, off + len);
        let mut i = chunks
            .find(pos)
            .ok_or_else(|| VfsError::io(format!("{}: offset {pos} past its chunks", self.path)))?;
        let mut pieces = Vec::new();
        while pos < end {
            let c = chunks.chunks[i];
            let data = self.cache.get(&c.id, c.len).map_err(|e| {
                VfsError::io(format!("{}: read at offset {pos} failed: {e}", self.path))
            })?;
            let from = (pos - c.offset) as usize;
            let to = ((end - c.offset) as usize).min(data.len());
            pieces.push((data, from, to));
            pos = c.offset + to as u64;
            i += 1;
        }
        Ok(pieces)
    }
}

/// Appends the bytes of `pieces` to `out`.
fn gather(out: &mut Vec<u8>, pieces: &[Piece]) {
    for (data, from, to) in pieces {
        out.extend_from_slice(&data[*from..*to]);
    }
}

/// The pack map holding all the bytes of `pieces` back to back, and where:
/// the map alone keeps those bytes alive.
fn mapped_span(pieces: &[Piece]) -> Option<MappedSpan> {
    let (first, from, _) = pieces.first()?;
    let (map, start) = first.mapped()?;
    let begin = start + from;
    let mut end = begin;
    for (data, from, to) in pieces {
        let (m, start) = data.mapped()?;
        if !Arc::ptr_eq(m, map) || start + from != end {
            return None;
        }
        end = start + to;
    }
    Some((map.clone(), begin..end))
}

impl Vfs {
    /// Opens a file. `write` needs a read-write mount; `truncate` empties it.
    pub fn open(&mut self, ino: Ino, write: bool, truncate: bool) -> VResult<Fh> {
        let n = self.node(ino.0)?;
        if write {
            self.require_rw()?;
            if n.is_dir() {
                return Err(VfsError::errno(libc::EISDIR));
            }
        }
        if truncate && write {
            self.truncate(ino.0, 0)?;
        }
        self.node_mut(ino.0)?.opens += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                ino: ino.0,
                write,
                last_end: 0,
                path: None,
            },
        );
        Ok(Fh(fh))
    }

    /// Creates and opens a new empty file.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VResult<(Attr, Fh)> {
        let a = self.mknod_file(parent, name, mode, uid, gid)?;
        let fh = self.open(a.ino, true, false)?;
        Ok((a, fh))
    }

    pub fn release(&mut self, fh: Fh) {
        if let Some(h) = self.handles.remove(&fh.0) {
            if let Some(n) = self.nodes.get_mut(&h.ino) {
                n.opens = n.opens.saturating_sub(1);
            }
            self.maybe_free(h.ino);
        }
    }

    fn handle_ino(&self, fh: Fh) -> VResult<u64> {
        self.handles
            .get(&fh.0)
            .map(|h| h.ino)
            .ok_or(VfsError::errno(libc::EBADF))
    }

    /// Loads (once) the chunk list of a file's base content.
    pub(super) fn chunk_list(&mut self, ino: u64) -> VResult<Arc<ChunkList>> {
        let f = self
            .node(ino)?
            .file()
            .ok_or(VfsError::errno(libc::EISDIR))?;
        if let Some(c) = &f.chunks {
            return Ok(c.clone());
        }
        let base = f.base;
        let list = Arc::new(ChunkList::load(&self.store, &base).map_err(|e| {
            VfsError::io(format!(
                "{}: reading its manifest: {e}",
                self.path_of(Ino(ino))
            ))
        })?);
        if let Some(f) = self.node_mut(ino)?.file_mut() {
            f.chunks = Some(list.clone());
        }
        Ok(list)
    }

    /// Describes bytes `[off, off+len)` of a file's current content.
    fn segments(&mut self, ino: u64, off: u64, len: u64) -> VResult<Vec<Seg>> {
        let f = self
            .node(ino)?
            .file()
            .ok_or(VfsError::errno(libc::EISDIR))?;
        let end = (off.saturating_add(len)).min(f.size);
        if off >= end {
            return Ok(Vec::new());
        }
        let needs_base = off < f.base_valid;
        let chunks = if needs_base {
            Some(self.chunk_list(ino)?)
        } else {
            None
        };
        let f = self.node(ino)?.file().expect("checked file");
        let mut segs = Vec::new();
        let mut pos = off;
        while pos < end {
            let next = f.extents.next_after(pos);
            match next {
                Some(r) if r.start <= pos => {
                    let e = r.end.min(end);
                    let file = f
                        .overlay
                        .as_ref()
                        .expect("extents imply overlay")
                        .file
                        .clone();
                    segs.push(Seg::Overlay {
                        file,
                        off: pos,
                        len: e - pos,
                    });
                    pos = e;
                }
                _ => {
                    let clean_end = next.map(|r| r.start.min(end)).unwrap_or(end);
                    let base_end = clean_end.min(f.base_valid);
                    if pos < base_end {
                        segs.push(Seg::Base {
                            chunks: chunks.clone().expect("base needed"),
                            off: pos,
                            len: base_end - pos,
                        });
                        pos = base_end;
                    }
                    if pos < clean_end {
                        segs.push(Seg::Zero(clean_end - pos));
                        pos = clean_end;
                    }
                }
            }
        }
        Ok(segs)
    }

    /// Plans a read through handle `fh`; run it with [`ReadPlan::execute`]
    /// (outside any lock around the `Vfs`).
    pub fn read_plan(&mut self, fh: Fh, off: u64, len: u32) -> VResult<ReadPlan> {
        let ino = self.handle_ino(fh)?;
        let segs = self.segments(ino, off, u64::from(len))?;
        let end = off + u64::from(len);
        let sequential = {
            let h = self.handles.get_mut(&fh.0).expect("handle exists");
            let s = h.last_end == off;
            h.last_end = end;
            s
        };
        let mut prefetch = Vec::new();
        if sequential
            && self.opts.readahead_chunks > 0
            && let Some(f) = self.node(ino)?.file()
            && let Some(chunks) = &f.chunks
            && end < f.base_valid
            && let Some(i) = chunks.find(end)
        {
            for c in chunks.chunks[i..].iter().take(self.opts.readahead_chunks) {
                prefetch.push((c.id, c.len));
            }
        }
        let path = match self.handles.get(&fh.0).and_then(|h| h.path.clone()) {
            Some(p) => p,
            None => {
                let p = self.path_of(Ino(ino));
                if let Some(h) = self.handles.get_mut(&fh.0) {
                    h.path = Some(p.clone());
                }
                p
            }
        };
        Ok(ReadPlan {
            segs,
            cache: self.cache.clone(),
            path,
            prefetch,
        })
    }

    /// Reads through a handle (plan and execute in one step).
    pub fn read(&mut self, fh: Fh, off: u64, len: u32) -> VResult<Vec<u8>> {
        self.read_plan(fh, off, len)?.execute()
    }

    /// Reads any byte range of a file's current content (no handle).
    pub(super) fn read_range(&mut self, ino: u64, off: u64, len: u64) -> VResult<Vec<u8>> {
        let segs = self.segments(ino, off, len)?;
        ReadPlan {
            segs,
            cache: self.cache.clone(),
            path: self.path_of(Ino(ino)),
            prefetch: Vec::new(),
        }
        .execute()
    }

    fn overlay_for(&mut self, ino: u64) -> VResult<Arc<File>> {
        if let Some(o) = self.node(ino)?.file().and_then(|f| f.overlay.as_ref()) {
            return Ok(o.file.clone());
        }
        let rw = self.rw.as_mut().ok_or(VfsError::errno(libc::EROFS))?;
        let id = rw.next_overlay;
        rw.next_overlay += 1;
        let path = rw.dir.join("overlay").join(id.to_string());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| VfsError::io(format!("creating {}: {e}", path.display())))?;
        let file = Arc::new(file);
        if let Some(f) = self.node_mut(ino)?.file_mut() {
            f.overlay = Some(Overlay {
                id,
                file: file.clone(),
            });
        }
        Ok(file)
    }

    /// Writes into the dirty layer. Only the written bytes are stored: the
    /// rest of the file stays in the store.
    pub fn write(&mut self, fh: Fh, off: u64, data: &[u8]) -> VResult<u32> {
        self.require_rw()?;
        let h = self
            .handles
            .get(&fh.0)
            .ok_or(VfsError::errno(libc::EBADF))?;
        if !h.write {
            return Err(VfsError::errno(libc::EBADF));
        }
        let ino = h.ino;
        if self.node(ino)?.file().is_none() {
            return Err(VfsError::errno(libc::EISDIR));
        }
        if data.is_empty() {
            return Ok(0);
        }
        let file = self.overlay_for(ino)?;
        let path = self.path_of(Ino(ino));
        file.write_all_at(data, off)
            .map_err(|e| VfsError::io(format!("{path}: writing the dirty layer: {e}")))?;
        if let Some(rw) = &mut self.rw
            && !rw.unsynced.iter().any(|f| Arc::ptr_eq(f, &file))
        {
            rw.unsynced.push(file);
        }
        let end = off + data.len() as u64;
        let now = now_ns();
        let n = self.node_mut(ino)?;
        n.mtime_ns = now;
        n.ctime_ns = now;
        let f = n.file_mut().expect("checked file");
        f.extents.insert(off..end);
        f.size = f.size.max(end);
        self.mark_dirty(ino);
        Ok(data.len() as u32)
    }

    pub(super) fn truncate(&mut self, ino: u64, size: u64) -> VResult<()> {
        self.require_rw()?;
        let now = now_ns();
        let n = self.node_mut(ino)?;
        let f = match &mut n.content {
            Content::File(f) => f,
            Content::Dir(_) => return Err(VfsError::errno(libc::EISDIR)),
            Content::Symlink(_) | Content::Special(_) => return Err(VfsError::errno(libc::EINVAL)),
        };
        if size < f.size {
            f.base_valid = f.base_valid.min(size);
            f.extents.truncate(size);
        }
        f.size = size;
        n.mtime_ns = now;
        n.ctime_ns = now;
        self.mark_dirty(ino);
        Ok(())
    }

    /// Makes the dirty layer durable (see [`Vfs::checkpoint`]).
    pub fn fsync(&mut self, _ino: Ino) -> VResult<()> {
        if self.rw.is_none() {
            return Ok(());
        }
        self.checkpoint()
    }
}
