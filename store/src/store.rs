//! Opening a store and reading objects out of it.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ds_format::chunker::{Chunker, ChunkerParams};
use ds_format::config::{Compression, StoreConfig};
use ds_format::manifest::{self, FileNode, FileRef};
use ds_format::pack::Stored;
use ds_format::snapshot::Snapshot;
use ds_format::tree::{DirNode, DirRef, Entry, EntryData};
use ds_format::{ObjectId, ObjectKind, PackId};

use crate::index::{Index, IndexMode, Location};
use crate::journal::{Journal, JournalCatalog};
use crate::layout::{Layout, sync_dir};
use crate::packs::{LocalPacks, PackMap, PackStore, read_trailer};
use crate::refs::Refs;
use crate::{IoContext, Result, StoreError};

/// How a process uses the store. Two flock(2) locks arbitrate:
///
/// | access      | `STORE/lock` (writers) | `STORE/gc.lock` (deleters) | index      |
/// |-------------|------------------------|----------------------------|------------|
/// | `Read`      | —                      | shared                     | secondary  |
/// | `Write`     | exclusive              | shared                     | primary    |
/// | `Exclusive` | exclusive              | exclusive                  | primary    |
///
/// So readers (restore, a read-only mount, a hub serving downloads) never
/// wait for a snapshot, and a snapshot never waits for them: objects are
/// immutable, and only gc and reindex, which delete, need everyone gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Exclusive,
}

/// Choices fixed at `ds init`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub chunker: Option<ChunkerParams>,
    pub compression: Option<Compression>,
    pub pack_size: Option<u64>,
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    layout: Layout,
    config: StoreConfig,
    chunker: Chunker,
    packs: Arc<dyn PackStore>,
    index: Arc<Index>,
    journal: Arc<Journal>,
    refs: Refs,
    access: Access,
    _locks: Vec<File>,
}

/// A reader's permission to append packs and move refs without opening
/// the index for writing (see `journal.rs`): holds the writer lock until
/// dropped. New packs are recorded in the journal through [`Appender::catalog`].
#[derive(Debug)]
pub struct Appender {
    store: Arc<Store>,
    _lock: File,
}

impl Appender {
    /// The store appended to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// For [`crate::writer::start_with`]: dedup against the index and the
    /// journal, record committed packs in the journal.
    pub fn catalog(&self) -> Arc<dyn crate::writer::Catalog> {
        Arc::new(JournalCatalog {
            index: self.store.index.clone(),
            journal: self.store.journal.clone(),
        })
    }

    /// Makes the packs recorded so far findable by every process (after the
    /// writer session finished): the barrier before a ref may move.
    pub fn sync(&self) -> Result<()> {
        self.store.journal.sync()
    }

    pub fn refs(&self) -> &Refs {
        &self.store.refs
    }
}

enum LockKind {
    Shared,
    Exclusive,
}

fn take_lock(path: &Path, kind: LockKind, wait: bool, root: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at(path)?;
    let tried = match kind {
        LockKind::Shared => f.try_lock_shared(),
        LockKind::Exclusive => f.try_lock(),
    };
    match tried {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) if wait => match kind {
            LockKind::Shared => f.lock_shared().at(path)?,
            LockKind::Exclusive => f.lock().at(path)?,
        },
        Err(TryLockError::WouldBlock) => return Err(StoreError::Locked(root.to_path_buf())),
        Err(TryLockError::Error(e)) => return Err(e).at(path),
    }
    Ok(f)
}

/// The writer lock and the gc lock, both exclusive. Waits for readers (the
/// gc lock) without holding the writer lock, retrying until both are free
/// at once.
fn exclusive_locks(layout: &Layout, wait: bool, root: &Path) -> Result<Vec<File>> {
    loop {
        let w = take_lock(&layout.lock(), LockKind::Exclusive, wait, root)?;
        match take_lock(&layout.gc_lock(), LockKind::Exclusive, false, root) {
            Ok(g) => return Ok(vec![w, g]),
            Err(StoreError::Locked(_)) if wait => {
                drop(w);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn random_id() -> String {
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.update(format!("{:p}", &h).as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

impl Store {
    /// Creates a store at `root` (which must be absent or an empty directory).
    pub fn init(root: &Path, opts: &InitOptions) -> Result<Store> {
        let layout = Layout::new(root);
        match fs::read_dir(root) {
            Ok(mut rd) => {
                if rd.next().is_some() {
                    return Err(StoreError::NotEmpty(root.to_path_buf()));
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => fs::create_dir_all(root).at(root)?,
            Err(e) => return Err(e).at(root),
        }
        let mut config = StoreConfig::new(random_id());
        if let Some(c) = opts.chunker {
            config.chunker = c;
        }
        if let Some(c) = opts.compression {
            config.compression = c;
        }
        if let Some(p) = opts.pack_size {
            config.pack_size = p;
        }
        config.validate()?;
        for d in [layout.packs(), layout.tmp(), layout.refs()] {
            fs::create_dir_all(&d).at(&d)?;
        }
        Index::open(&layout.index(), IndexMode::Primary)?;
        // The config is written last and atomically: its presence marks a
        // complete store.
        let tmp = root.join("config.tmp");
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(&config.encode()).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, layout.config()).at(&layout.config())?;
        sync_dir(root).at(root)?;
        drop(f);
        Store::open(root, Access::Exclusive, true)
    }

    /// Opens an existing store. With `wait` false, returns
    /// [`StoreError::Locked`] instead of waiting for another process.
    pub fn open(root: &Path, access: Access, wait: bool) -> Result<Store> {
        let layout = Layout::new(root);
        let config = match fs::read(layout.config()) {
            Ok(b) => StoreConfig::decode(&b)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::NotAStore(root.to_path_buf()));
            }
            Err(e) => return Err(e).at(&layout.config()),
        };
        // Writers first take the writer lock, then the gc lock, in that order
        // everywhere, so two processes cannot deadlock. An exclusive opener
        // (gc, reindex) never waits for readers while holding the writer
        // lock: that would stall every writer, including a read-write
        // mount's snapshot, behind readers that may never leave.
        let locks = if access == Access::Exclusive {
            exclusive_locks(&layout, wait, root)?
        } else {
            let mut locks = Vec::new();
            if access == Access::Write {
                locks.push(take_lock(&layout.lock(), LockKind::Exclusive, wait, root)?);
            }
            locks.push(take_lock(&layout.gc_lock(), LockKind::Shared, wait, root)?);
            locks
        };
        let packs: Arc<dyn PackStore> = Arc::new(LocalPacks::new(layout.packs(), layout.tmp()));
        if !layout.index().join("CURRENT").exists() {
            // The index is only a cache: rebuild it from the packs. A reader
            // borrows the writer lock for that.
            let _w = match access {
                Access::Read => Some(take_lock(&layout.lock(), LockKind::Exclusive, true, root)?),
                _ => None,
            };
            if !layout.index().join("CURRENT").exists() {
                let ix = Index::open(&layout.index(), IndexMode::Primary)?;
                rebuild(&ix, packs.as_ref())?;
            }
        }
        let mode = match access {
            Access::Read => IndexMode::Secondary,
            _ => IndexMode::Primary,
        };
        let index = Index::open(&layout.index(), mode)?;
        let journal = Journal::new(layout.journal());
        if mode == IndexMode::Primary {
            // Packs a read-write mount appended since the last writer.
            journal.ingest(&index, packs.as_ref())?;
        }
        let chunker = Chunker::new(config.chunker)?;
        Ok(Store {
            refs: Refs::new(layout.refs()),
            layout,
            config,
            chunker,
            packs,
            index: Arc::new(index),
            journal: Arc::new(journal),
            access,
            _locks: locks,
        })
    }

    /// Lets this reader append (see [`Appender`]): waits for the writer
    /// lock, then catches up with the index and the journal, which nobody
    /// else can change while the lock is held.
    pub fn append(self: &Arc<Self>) -> Result<Appender> {
        if self.access != Access::Read {
            return Err(StoreError::Invalid(
                "append is for a store opened to read; a writer writes to the index".into(),
            ));
        }
        let lock = take_lock(&self.layout.lock(), LockKind::Exclusive, true, self.root())?;
        self.index.catch_up()?;
        self.journal.refresh(self.packs.as_ref())?;
        Ok(Appender {
            store: self.clone(),
            _lock: lock,
        })
    }

    /// Packs appended by readers and not yet folded into the index.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn root(&self) -> &Path {
        &self.layout.root
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }
    pub fn packs(&self) -> &Arc<dyn PackStore> {
        &self.packs
    }
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }
    pub fn refs(&self) -> &Refs {
        &self.refs
    }
    pub fn access(&self) -> Access {
        self.access
    }

    pub(crate) fn require_write(&self) -> Result<()> {
        if self.access == Access::Read {
            return Err(StoreError::Invalid("store opened read-only".into()));
        }
        Ok(())
    }

    pub(crate) fn require_exclusive(&self) -> Result<()> {
        if self.access != Access::Exclusive {
            return Err(StoreError::Invalid(
                "this needs the store opened exclusively (Access::Exclusive)".into(),
            ));
        }
        Ok(())
    }

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
            self.index.catch_up()?;
            if let Some(l) = self.index.get(id)? {
                return Ok(Some(l));
            }
            return self.journal.locate(id, self.packs.as_ref());
        }
        Ok(None)
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
        let loc = self.locate_kind(id, kind)?;
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

    pub fn load_snapshot(&self, id: &ObjectId) -> Result<Snapshot> {
        Ok(Snapshot::decode(
            &self.read_object(id, ObjectKind::Snapshot)?,
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
        let loc = self.locate_kind(id, kind)?;
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
                return Err(StoreError::Invalid(format!(
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

    /// Recreates the index from pack trailers (the index is only a cache).
    pub fn rebuild_index(&self) -> Result<u64> {
        self.require_exclusive()?;
        rebuild(&self.index, self.packs.as_ref())
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

fn rebuild(index: &Index, packs: &dyn PackStore) -> Result<u64> {
    Ok(index_packs(index, packs, &packs.list()?)?.len() as u64)
}

/// Adds the packs `ids` to `index` from their own trailers, then syncs it.
/// A damaged pack is skipped (verify reports it; indexing the rest matters
/// more). Returns the packs added.
pub(crate) fn index_packs(
    index: &Index,
    packs: &dyn PackStore,
    ids: &[PackId],
) -> Result<Vec<PackId>> {
    let mut done = Vec::new();
    for id in ids {
        match read_trailer(packs, id) {
            Ok(entries) => {
                index.add_pack(id, &entries)?;
                done.push(*id);
            }
            Err(StoreError::DamagedPack { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    index.sync()?;
    Ok(done)
}
