//! Opening a store: its locks, its config, its index, refs and journal.
//! Reading objects is `read.rs`; the locks themselves are `lock.rs`.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::sync::Arc;

use ds_format::chunker::{Chunker, ChunkerParams};
use ds_format::config::{Compression, StoreConfig};
use ds_format::{ObjectId, ObjectKind, PackId};

use crate::index::{Index, IndexMode};
use crate::journal::{Journal, JournalCatalog};
use crate::layout::{Layout, sync_dir};
use crate::packs::{LocalPacks, PackStore, read_trailer};
use crate::refs::Refs;
use crate::{IoContext, Result, StoreError};

mod lock;
mod read;

use lock::{LockKind, exclusive_locks, take_lock};
pub use read::decode_stored;

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
    /// Where objects this store lacks come from, if anywhere (a lazy
    /// mount's store; see [`Lazy`]).
    lazy: std::sync::OnceLock<Arc<dyn Lazy>>,
    _locks: Vec<File>,
}

/// Objects a store lacks, from elsewhere: what makes a read-only mount
/// lazy (a runner's dataset mount reads the chunks a workload asks for from
/// the hub, and nothing else). Set on a store opened to read, for one
/// snapshot's tree; never written into the store, so "holding an object
/// means holding its subtree" stays true of the store itself. The store
/// checks every object it is given against its id.
pub trait Lazy: Send + Sync + std::fmt::Debug {
    /// The plaintext of `id` (of `kind`), or None if there is no such object.
    fn object(&self, id: &ObjectId, kind: ObjectKind) -> Result<Option<Vec<u8>>>;
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
            lazy: std::sync::OnceLock::new(),
            _locks: locks,
        })
    }

    /// Makes this store (opened to read) fetch what it lacks from `lazy`.
    /// Once per store: false if it has a source already, or is a writer
    /// (a writer's reads decide what it dedups against and must not lie).
    pub fn set_lazy(&self, lazy: Arc<dyn Lazy>) -> bool {
        self.access == Access::Read && self.lazy.set(lazy).is_ok()
    }

    /// `id` from the lazy source, checked against its id; Missing if there
    /// is no source or it has no such object.
    pub(crate) fn lazy_object(&self, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>> {
        let missing = || StoreError::Missing {
            kind: kind.name(),
            id: *id,
        };
        let lazy = self.lazy.get().ok_or_else(missing)?;
        let raw = lazy.object(id, kind)?.ok_or_else(missing)?;
        if kind.hash(&raw) != *id {
            return Err(StoreError::Unavailable {
                id: *id,
                why: "what was sent does not match its id (refused)".into(),
            });
        }
        Ok(raw)
    }

    /// Lets this reader append (see [`Appender`]): waits for the writer
    /// lock, then catches up with the index and the journal, which nobody
    /// else can change while the lock is held.
    pub fn append(self: &Arc<Self>) -> Result<Appender> {
        if self.access != Access::Read {
            return Err(StoreError::WrongAccess(
                "append is for a store opened to read; a writer writes to the index",
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
            return Err(StoreError::WrongAccess("store opened read-only"));
        }
        Ok(())
    }

    pub(crate) fn require_exclusive(&self) -> Result<()> {
        if self.access != Access::Exclusive {
            return Err(StoreError::WrongAccess(
                "this needs the store opened exclusively (Access::Exclusive)",
            ));
        }
        Ok(())
    }

    /// Recreates the index from pack trailers (the index is only a cache).
    pub fn rebuild_index(&self) -> Result<u64> {
        self.require_exclusive()?;
        rebuild(&self.index, self.packs.as_ref())
    }
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
