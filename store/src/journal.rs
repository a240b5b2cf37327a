//! Packs appended without the index's primary, recorded until the next
//! writer folds them into the index.
//!
//! Why: RocksDB lets exactly one process open the index for writing, and
//! opening it costs ~10 ms of CPU (MANIFEST, OPTIONS, WAL) — as much as the
//! whole O(changed) snapshot of a read-write mount. A mount already holds
//! the index as a reader, so it appends instead: under the writer lock it
//! commits packs as usual and, for each, creates `STORE/journal/<pack id>`
//! (empty: the pack's own trailer lists its objects). The journal directory
//! is fsynced before the ref moves, so the ordering of ARCHITECTURE.md still
//! holds: pack durable, then findable, then referenced.
//!
//! Who sees what:
//! - the appending process knows its packs' entries at once;
//! - any reader that misses an object in the index looks through the
//!   journal (listing it and reading the trailers of packs it has not seen);
//! - the next process to open the index for writing (a snapshot, gc,
//!   reindex) adds every journaled pack to the index, syncs it, and only
//!   then removes the markers. A crash in between re-adds them next time,
//!   which is harmless.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ds_format::pack::PackEntry;
use ds_format::{ObjectId, ObjectKind, PackId};

use crate::index::{Index, Location};
use crate::layout::sync_dir;
use crate::packs::{PackStore, read_trailer};
use crate::store::index_packs;
use crate::writer::Catalog;
use crate::{IoContext, Result, StoreError};

#[derive(Debug, Default)]
struct Known {
    packs: HashSet<PackId>,
    objects: HashMap<ObjectId, Location>,
}

/// The journal of one store (`STORE/journal/`).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    known: Mutex<Known>,
}

impl Journal {
    pub fn new(dir: PathBuf) -> Journal {
        Journal {
            dir,
            known: Mutex::default(),
        }
    }

    fn learn(&self, pack: &PackId, entries: &[PackEntry]) {
        let mut k = self.known.lock().expect("poisoned");
        if k.packs.insert(*pack) {
            for e in entries {
                k.objects.insert(e.id, Location::of(*pack, e));
            }
        }
    }

    /// Journaled packs on disk (any process's), not yet in the index.
    pub fn list(&self) -> Result<Vec<PackId>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(&self.dir),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.at(&self.dir)?;
            if let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<PackId>().ok())
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Is `pack` journaled (committed, but not yet in the index)?
    pub fn holds(&self, pack: &PackId) -> bool {
        self.dir.join(pack.to_hex()).exists()
    }

    /// Reads the trailers of journaled packs this process has not seen.
    /// A damaged pack is skipped (verify reports it).
    pub fn refresh(&self, packs: &dyn PackStore) -> Result<()> {
        for p in self.list()? {
            if self.known.lock().expect("poisoned").packs.contains(&p) {
                continue;
            }
            match read_trailer(packs, &p) {
                Ok(entries) => self.learn(&p, &entries),
                Err(StoreError::DamagedPack { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Where a journaled object is: from memory, else after a refresh.
    pub fn locate(&self, id: &ObjectId, packs: &dyn PackStore) -> Result<Option<Location>> {
        if let Some(l) = self.known(id) {
            return Ok(Some(l));
        }
        self.refresh(packs)?;
        Ok(self.known(id))
    }

    /// Where `id` is, if this process knows it without touching the disk.
    pub fn known(&self, id: &ObjectId) -> Option<Location> {
        self.known
            .lock()
            .expect("poisoned")
            .objects
            .get(id)
            .copied()
    }

    /// Journaled objects of `kind` whose id starts with `prefix` (and the
    /// high half-byte `nibble`), after reading trailers not yet seen: the
    /// journal's half of a hex-prefix lookup.
    pub fn with_prefix(
        &self,
        prefix: &[u8],
        nibble: Option<u8>,
        kind: ObjectKind,
        packs: &dyn PackStore,
    ) -> Result<Vec<ObjectId>> {
        self.refresh(packs)?;
        let k = self.known.lock().expect("poisoned");
        Ok(k.objects
            .iter()
            .filter(|(id, l)| {
                l.kind == kind
                    && id.0.starts_with(prefix)
                    && nibble.is_none_or(|n| id.0.get(prefix.len()).map(|b| b >> 4) == Some(n))
            })
            .map(|(id, _)| *id)
            .collect())
    }

    /// Records a committed pack; durable after [`Journal::sync`].
    pub fn record(&self, pack: &PackId, entries: &[PackEntry]) -> Result<()> {
        fs::create_dir_all(&self.dir).at(&self.dir)?;
        let path = self.dir.join(pack.to_hex());
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        self.learn(pack, entries);
        Ok(())
    }

    /// Makes recorded markers durable.
    pub fn sync(&self) -> Result<()> {
        match sync_dir(&self.dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r.at(&self.dir),
        }
    }

    /// Folds every journaled pack into `index` (the primary), syncs it, then
    /// removes the markers. Returns how many packs it folded.
    pub fn ingest(&self, index: &Index, packs: &dyn PackStore) -> Result<u64> {
        let list = self.list()?;
        if list.is_empty() {
            return Ok(0);
        }
        // A damaged pack is left journaled: `ds verify` reports it.
        let done = index_packs(index, packs, &list)?;
        for p in &done {
            let path = self.dir.join(p.to_hex());
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).at(&path),
                _ => {}
            }
        }
        self.sync()?;
        Ok(done.len() as u64)
    }
}

/// What an appending writer consults and records: the reader index (caught
/// up under the writer lock, so nothing else changes meanwhile) plus the
/// journal.
#[derive(Debug)]
pub struct JournalCatalog {
    pub index: Arc<Index>,
    pub journal: Arc<Journal>,
}

impl Catalog for JournalCatalog {
    fn contains(&self, id: &ObjectId) -> Result<bool> {
        Ok(self.journal.known(id).is_some() || self.index.contains(id)?)
    }

    fn add_pack(&self, pack: &PackId, entries: &[PackEntry]) -> Result<()> {
        self.journal.record(pack, entries)
    }
}
