//! Reading objects out of a store: every read is verified against its id,
//! and tree walks check the levels their parents promised.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use ds_format::manifest::{self, FileNode, FileRef};
use ds_format::pack::Stored;
use ds_format::snapshot::Snapshot;
use ds_format::tree::{DirNode, DirRef, Entry, EntryData};
use ds_format::{ObjectId, ObjectKind};

use super::Store;
use crate::index::{IndexMode, Location};
use crate::packs::PackMap;
use crate::{Result, StoreError};

impl Store {
    /// Where an object lives. A reader whose index is a secondary instance
    /// catches up with the writer once before it reports a miss, so objects
    /// written since it opened are found.
    pub fn locate(&self, id: &ObjectId) -> Result<Option<Location>> {
        if let Some(l) = self.index.get(id)? {
            return Ok(Some(l));
        }
        if self.index.mode() == IndexMode::Secondary {
            // Appended by a read-write mount, not yet in the index: known
            // here already (cheap), or found below after catching up.
            if let Some(l) = self.journal.known(id) {
                return Ok(Some(l));
            }
            // A lazy store reads one snapshot, whose objects it holds or
            // its source has: what was written since it opened does not
            // matter, and catching up at every chunk it lacks would cost
            // milliseconds a chunk.
            if self.lazy.get().is_some() {
                return Ok(None);
            }
            self.index.catch_up()?;
            if let Some(l) = self.index.get(id)? {
                return Ok(Some(l));
            }
            return self.journal.locate(id, self.packs.as_ref());
        }
        Ok(None)
    }

    /// Which of `ids` the store holds, after one catch-up with the writer
    /// (for a reader asking about many objects at once: [`Store::locate`]
    /// catches up at every miss, which costs milliseconds each).
    pub fn holds_each(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        if self.index.mode() == IndexMode::Secondary {
            self.index.catch_up()?;
        }
        ids.iter()
            .map(|id| Ok(self.index.get(id)?.is_some() || self.journal.known(id).is_some()))
            .collect()
    }

    /// Snapshots whose id starts with `prefix` (whole bytes, then the high
    /// half-byte `nibble`), in the index or in the journal: a snapshot a
    /// read-write mount just appended is found before any writer folds it
    /// into the index.
    pub fn snapshots_with_prefix(
        &self,
        prefix: &[u8],
        nibble: Option<u8>,
    ) -> Result<Vec<ObjectId>> {
        let kind = ObjectKind::Snapshot;
        if self.index.mode() == IndexMode::Secondary {
            self.index.catch_up()?;
        }
        let mut found: std::collections::BTreeSet<ObjectId> = self
            .index
            .objects_with_prefix(prefix, nibble, kind)?
            .into_iter()
            .collect();
        found.extend(
            self.journal
                .with_prefix(prefix, nibble, kind, self.packs.as_ref())?,
        );
        Ok(found.into_iter().collect())
    }

    /// Where an object of `kind` is: `Missing` if nowhere, `Damaged` if the
    /// index records another kind under its id.
    fn locate_kind(&self, id: &ObjectId, kind: ObjectKind) -> Result<Location> {
        let loc = self.locate(id)?.ok_or(StoreError::Missing {
            kind: kind.name(),
            id: *id,
        })?;
        if loc.kind != kind {
            let why = format!("index says it is a {}", loc.kind.name());
            return Err(damaged(kind, id, &loc, why));
        }
        Ok(loc)
    }

    /// Reads an object, decompresses it and checks its hash. Never returns
    /// bytes that do not hash to `id`.
    pub fn read_object(&self, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>> {
        let loc = match self.locate_kind(id, kind) {
            Err(StoreError::Missing { .. }) => return self.lazy_object(id, kind),
            r => r?,
        };
        let damaged = |why: String| damaged(kind, id, &loc, why);
        let stored = self
            .packs
            .read_at(&loc.pack, loc.offset, loc.stored_len as usize)?;
        let raw = decode_stored(loc.stored, stored, loc.raw_len).map_err(damaged)?;
        if kind.hash(&raw) != *id {
            return Err(damaged("content does not match its hash".into()));
        }
        Ok(raw)
    }

    /// Reads many objects of one kind (in the order of `ids`), each
    /// verified as [`Self::read_object`] does, with one read per run of
    /// neighbouring objects in a pack instead of one per object: for
    /// listings of many small objects (run records).
    pub fn read_objects(&self, ids: &[ObjectId], kind: ObjectKind) -> Result<Vec<Vec<u8>>> {
        /// Objects closer than this in a pack are read together.
        const GAP: u64 = 64 << 10;
        const MAX_READ: u64 = 8 << 20;
        let locs: Vec<Location> = ids
            .iter()
            .map(|id| self.locate_kind(id, kind))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| (locs[i].pack, locs[i].offset));
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); ids.len()];
        let mut i = 0;
        while i < order.len() {
            let first = &locs[order[i]];
            let (start, mut end) = (first.offset, first.offset + u64::from(first.stored_len));
            let mut j = i + 1;
            while j < order.len() {
                let l = &locs[order[j]];
                let e = l.offset + u64::from(l.stored_len);
                if l.pack != first.pack || l.offset > end + GAP || e - start > MAX_READ {
                    break;
                }
                end = end.max(e);
                j += 1;
            }
            let buf = self
                .packs
                .read_at(&first.pack, start, (end - start) as usize)?;
            for &k in &order[i..j] {
                let (id, loc) = (&ids[k], &locs[k]);
                let s = (loc.offset - start) as usize;
                let bytes = buf
                    .get(s..s + loc.stored_len as usize)
                    .ok_or_else(|| damaged(kind, id, loc, "pack shorter than its index".into()))?;
                let raw = ds_format::check::decode_stored(loc.stored, bytes, loc.raw_len)
                    .map_err(|e| damaged(kind, id, loc, e.to_string()))?;
                if kind.hash(&raw) != *id {
                    return Err(damaged(
                        kind,
                        id,
                        loc,
                        "content does not match its hash".into(),
                    ));
                }
                out[k] = raw;
            }
            i = j;
        }
        Ok(out)
    }

    /// An object's bytes as stored (compressed or not) and where they lie,
    /// without decoding: for copying objects into another pack as they are
    /// (push). Not verified here: whoever decodes them rehashes them (the
    /// hub checks every uploaded pack).
    pub fn read_stored(&self, id: &ObjectId, kind: ObjectKind) -> Result<(Location, Vec<u8>)> {
        let loc = self.locate_kind(id, kind)?;
        let bytes = self
            .packs
            .read_at(&loc.pack, loc.offset, loc.stored_len as usize)?;
        Ok((loc, bytes))
    }

    pub fn load_snapshot(&self, id: &ObjectId) -> Result<Snapshot> {
        Ok(Snapshot::decode(
            &self.read_object(id, ObjectKind::Snapshot)?,
        )?)
    }

    pub fn load_run(&self, id: &ObjectId) -> Result<ds_format::run::Run> {
        Ok(ds_format::run::Run::decode(
            &self.read_object(id, ObjectKind::Run)?,
        )?)
    }

    pub fn load_dir_node(&self, id: &ObjectId) -> Result<DirNode> {
        Ok(DirNode::decode(
            &self.read_object(id, ObjectKind::DirNode)?,
        )?)
    }

    pub fn load_file_node(&self, id: &ObjectId) -> Result<FileNode> {
        Ok(FileNode::decode(
            &self.read_object(id, ObjectKind::FileNode)?,
        )?)
    }

    /// Every entry of a directory, in name order. Checks that each node has
    /// the level its parent promised, so a malicious tree cannot loop.
    pub fn dir_entries(&self, dir: &DirRef) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.collect_entries(&dir.root, dir.height, &mut out)?;
        for w in out.windows(2) {
            if w[0].name >= w[1].name {
                return Err(StoreError::Damaged {
                    kind: "dir-node",
                    id: dir.root,
                    pack: None,
                    why: "entries across nodes are not sorted".into(),
                });
            }
        }
        Ok(out)
    }

    fn collect_entries(&self, id: &ObjectId, level: u8, out: &mut Vec<Entry>) -> Result<()> {
        let node = self.load_dir_node(id)?;
        if node.level() != level {
            return Err(StoreError::Damaged {
                kind: "dir-node",
                id: *id,
                pack: None,
                why: format!("level {} where {level} expected", node.level()),
            });
        }
        match node {
            DirNode::Leaf(es) => out.extend(es),
            DirNode::Index { children, .. } => {
                for c in children {
                    self.collect_entries(&c.id, level - 1, out)?;
                }
            }
        }
        Ok(())
    }

    /// Calls `f(chunk, offset, len)` for each chunk of a file, in order.
    pub fn for_each_chunk(
        &self,
        file: &FileRef,
        f: &mut dyn FnMut(ObjectId, u64, u64) -> Result<()>,
    ) -> Result<()> {
        match file.height {
            _ if file.size == 0 => Ok(()),
            0 => f(file.root, 0, file.size),
            h => {
                let mut off = 0;
                self.walk_file_node(&file.root, h - 1, file.size, &mut off, f)
            }
        }
    }

    fn walk_file_node(
        &self,
        id: &ObjectId,
        level: u8,
        len: u64,
        off: &mut u64,
        f: &mut dyn FnMut(ObjectId, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let node = self.load_file_node(id)?;
        manifest::check_child(&node, level, len).map_err(|e| StoreError::Damaged {
            kind: "file-node",
            id: *id,
            pack: None,
            why: e.to_string(),
        })?;
        for c in &node.children {
            if level == 0 {
                f(c.id, *off, c.len)?;
                *off += c.len;
            } else {
                self.walk_file_node(&c.id, level - 1, c.len, off, f)?;
            }
        }
        Ok(())
    }

    /// Reads a chunk and checks its length against the manifest.
    pub fn read_chunk(&self, id: &ObjectId, len: u64) -> Result<Vec<u8>> {
        let data = self.read_object(id, ObjectKind::Chunk)?;
        if data.len() as u64 != len {
            return Err(StoreError::Damaged {
                kind: "chunk",
                id: *id,
                pack: None,
                why: format!("{} bytes where the manifest says {len}", data.len()),
            });
        }
        Ok(data)
    }

    /// Reads a chunk's verified plaintext into `out`, which must be exactly
    /// the chunk's length (the manifest's). The allocation-free twin of
    /// [`Store::read_chunk`] for a mount's recycled buffers: a raw chunk is
    /// read straight into `out`, a compressed one through a scratch buffer.
    /// On error `out` holds garbage and must not be served.
    pub fn read_chunk_into(&self, id: &ObjectId, out: &mut [u8]) -> Result<()> {
        self.load_chunk(id, out, false).map(drop)
    }

    /// [`Store::read_chunk_into`], except that a raw chunk in a pack the
    /// pack store can map ([`PackStore::map`]) is hashed where it lies and
    /// returned as (map, offset) without touching `out`: a mount then serves
    /// it with no copy of its own. `None`: the bytes are in `out`.
    pub fn map_or_read_chunk(
        &self,
        id: &ObjectId,
        out: &mut [u8],
    ) -> Result<Option<(Arc<PackMap>, usize)>> {
        self.load_chunk(id, out, true)
    }

    fn load_chunk(
        &self,
        id: &ObjectId,
        out: &mut [u8],
        map: bool,
    ) -> Result<Option<(Arc<PackMap>, usize)>> {
        let kind = ObjectKind::Chunk;
        let loc = match self.locate_kind(id, kind) {
            Err(StoreError::Missing { .. }) => {
                let raw = self.lazy_object(id, kind)?;
                if raw.len() != out.len() {
                    return Err(StoreError::Unavailable {
                        id: *id,
                        why: format!("{} bytes where the manifest says {}", raw.len(), out.len()),
                    });
                }
                out.copy_from_slice(&raw);
                return Ok(None);
            }
            r => r?,
        };
        let damaged = |why: String| damaged(kind, id, &loc, why);
        if loc.raw_len as usize != out.len() {
            return Err(damaged(format!(
                "{} bytes where the manifest says {}",
                loc.raw_len,
                out.len()
            )));
        }
        let raw = loc.stored == Stored::Raw && loc.stored_len == loc.raw_len;
        if raw
            && map
            && let Some(m) = self.packs.map(&loc.pack)?
        {
            let start = loc.offset as usize;
            let end = start.checked_add(out.len());
            let Some(bytes) = end.and_then(|end| m.get(start..end)) else {
                return Err(StoreError::DamagedPack {
                    pack: loc.pack,
                    why: format!(
                        "truncated: {} bytes at offset {start} are past its end",
                        out.len()
                    ),
                });
            };
            if kind.hash(bytes) != *id {
                return Err(damaged("content does not match its hash".into()));
            }
            return Ok(Some((m, start)));
        }
        if raw {
            self.packs.read_into(&loc.pack, loc.offset, out)?;
        } else {
            let stored = self
                .packs
                .read_at(&loc.pack, loc.offset, loc.stored_len as usize)?;
            ds_format::check::decode_stored_into(loc.stored, &stored, out)
                .map_err(|e| damaged(e.to_string()))?;
        }
        if kind.hash(out) != *id {
            return Err(damaged("content does not match its hash".into()));
        }
        Ok(None)
    }

    /// Streams a file's content into `w`.
    pub fn read_file(&self, file: &FileRef, w: &mut dyn Write) -> Result<()> {
        self.for_each_chunk(file, &mut |id, _, len| {
            let data = self.read_chunk(&id, len)?;
            w.write_all(&data).map_err(|e| StoreError::Io {
                path: PathBuf::from("<output>"),
                source: e,
            })
        })
    }

    /// Finds the entry at `path` (components separated by `/`) below `root`.
    /// An empty path (or `/`, `.`) names the root itself, returned as `None`.
    pub fn lookup(&self, root: &DirRef, path: &[u8]) -> Result<Option<Entry>> {
        let mut dir = *root;
        let parts: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
            .collect();
        let show = || String::from_utf8_lossy(path).into_owned();
        let mut found = None;
        for (i, part) in parts.iter().enumerate() {
            if *part == b".." {
                return Err(StoreError::BadInput(format!(
                    "{:?}: '..' is not allowed in snapshot paths",
                    show()
                )));
            }
            let entries = self.dir_entries(&dir)?;
            let e = entries
                .into_iter()
                .find(|e| e.name == *part)
                .ok_or_else(|| StoreError::NoSuchPath(show()))?;
            if i + 1 < parts.len() {
                match e.data {
                    EntryData::Dir(d) => dir = d,
                    _ => return Err(StoreError::NoSuchPath(show())),
                }
            }
            found = Some(e);
        }
        Ok(found)
    }
}

fn damaged(kind: ObjectKind, id: &ObjectId, loc: &Location, why: String) -> StoreError {
    StoreError::Damaged {
        kind: kind.name(),
        id: *id,
        pack: Some(loc.pack),
        why,
    }
}

/// Turns stored bytes back into plaintext (see
/// [`ds_format::check::decode_stored`]).
pub fn decode_stored(stored: Stored, bytes: Vec<u8>, raw_len: u32) -> Result<Vec<u8>, String> {
    if stored == Stored::Raw && bytes.len() == raw_len as usize {
        return Ok(bytes); // no copy on the hot path
    }
    ds_format::check::decode_stored(stored, &bytes, raw_len).map_err(|e| e.to_string())
}
