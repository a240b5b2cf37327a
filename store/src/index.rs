//! The local index in RocksDB. It is a cache of what the packs say — losing
//! it loses nothing, [`crate::Store::rebuild_index`] recreates it from pack
//! trailers — plus the stat cache that lets unchanged files go unread.
//!
//! Column families:
//! - `objects`: object id → location (pack, kind, compression, offset, lengths);
//! - `packs`: pack id → object count and byte size, i.e. which packs are indexed;
//! - `stat`: absolute path → (size, mtime, ctime, inode, device, file ref).
//!
//! Writes happen only after the pack they describe is durable; a ref moves
//! only after [`Index::sync`].

use std::path::{Path, PathBuf};

use ds_format::manifest::FileRef;
use ds_format::pack::{PackEntry, Stored};
use ds_format::{ObjectId, ObjectKind, PackId};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch,
};

use crate::{Result, StoreError};

const CF_OBJECTS: &str = "objects";
const CF_PACKS: &str = "packs";
const CF_STAT: &str = "stat";

/// Where an object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: PackId,
    pub kind: ObjectKind,
    pub stored: Stored,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

impl Location {
    /// Encoded size.
    pub const SIZE: usize = 50;

    /// The fixed-size encoding (also what the hub's gc moves carry).
    pub fn encode(&self) -> [u8; 50] {
        let mut b = [0u8; 50];
        b[..32].copy_from_slice(&self.pack.0);
        b[32] = self.kind as u8;
        b[33] = self.stored as u8;
        b[34..42].copy_from_slice(&self.offset.to_le_bytes());
        b[42..46].copy_from_slice(&self.stored_len.to_le_bytes());
        b[46..50].copy_from_slice(&self.raw_len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 50 {
            return None;
        }
        Some(Location {
            pack: PackId::from_slice(&b[..32])?,
            kind: ObjectKind::from_u8(b[32])?,
            stored: match b[33] {
                0 => Stored::Raw,
                1 => Stored::Zstd,
                _ => return None,
            },
            offset: u64::from_le_bytes(b[34..42].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[42..46].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[46..50].try_into().ok()?),
        })
    }

    pub fn of(pack: PackId, e: &PackEntry) -> Self {
        Location {
            pack,
            kind: e.kind,
            stored: e.stored,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
        }
    }
}

/// What the stat cache remembers about a file it has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatEntry {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub file: FileRef,
}

impl StatEntry {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(81);
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.mtime_ns.to_le_bytes());
        b.extend_from_slice(&self.ctime_ns.to_le_bytes());
        b.extend_from_slice(&self.ino.to_le_bytes());
        b.extend_from_slice(&self.dev.to_le_bytes());
        b.extend_from_slice(&self.file.size.to_le_bytes());
        b.push(self.file.height);
        b.extend_from_slice(&self.file.root.0);
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 81 {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        Some(StatEntry {
            size: u(0),
            mtime_ns: u(8) as i64,
            ctime_ns: u(16) as i64,
            ino: u(24),
            dev: u(32),
            file: FileRef {
                size: u(40),
                height: b[48],
                root: ObjectId::from_slice(&b[49..81])?,
            },
        })
    }
}

/// How a process opens the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexMode {
    /// The one writer process (RocksDB allows exactly one).
    Primary,
    /// A reader beside a possibly running writer: a RocksDB secondary
    /// instance, which keeps every table file it needs open (so a writer's
    /// compaction cannot pull one away) and sees newer writes after
    /// [`Index::catch_up`].
    Secondary,
}

/// The RocksDB index of one store.
pub struct Index {
    db: DB,
    path: PathBuf,
    mode: IndexMode,
    // A secondary instance's own directory (its info log); removed on drop.
    _secondary: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

fn options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // Bounded memory: a million-file snapshot must stay within a few hundred MiB.
    o.set_db_write_buffer_size(64 << 20);
    o.set_write_buffer_size(16 << 20);
    o.set_max_write_buffer_number(2);
    o.set_max_open_files(512);
    o.set_keep_log_file_num(2);
    o.increase_parallelism(2);
    // Index and filter blocks stay in the table readers (about 2% of the
    // data), not in the block cache: when they compete with data blocks in a
    // small cache, every lookup of a million-entry stat cache re-reads them
    // (measured: ~1 MB read per lookup).
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(&Cache::new_lru_cache(64 << 20));
    t.set_bloom_filter(10.0, false);
    t.set_cache_index_and_filter_blocks(false);
    o.set_block_based_table_factory(&t);
    o
}

impl Index {
    /// Opens the index; a primary creates it when missing.
    pub fn open(path: &Path, mode: IndexMode) -> Result<Self> {
        let cfs = [CF_OBJECTS, CF_PACKS, CF_STAT];
        let (db, secondary) = match mode {
            IndexMode::Primary => {
                let descs = cfs.map(|n| ColumnFamilyDescriptor::new(n, options()));
                (DB::open_cf_descriptors(&options(), path, descs), None)
            }
            IndexMode::Secondary => {
                let dir = tempfile::Builder::new()
                    .prefix("ds-index-reader-")
                    .tempdir()
                    .map_err(|e| StoreError::index(path, format!("temporary directory: {e}")))?;
                let mut opts = options();
                opts.create_if_missing(false);
                opts.set_max_open_files(-1);
                let descs = cfs.map(|n| ColumnFamilyDescriptor::new(n, options()));
                let db = DB::open_cf_descriptors_as_secondary(&opts, path, dir.path(), descs);
                (db, Some(dir))
            }
        };
        let db = db.map_err(|e| StoreError::index(path, e))?;
        Ok(Index {
            db,
            path: path.to_path_buf(),
            mode,
            _secondary: secondary,
        })
    }

    pub fn mode(&self) -> IndexMode {
        self.mode
    }

    /// Makes a secondary instance see what the writer has synced since it
    /// opened (or last caught up). A no-op on the primary.
    pub fn catch_up(&self) -> Result<()> {
        if self.mode == IndexMode::Secondary {
            self.db
                .try_catch_up_with_primary()
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::index(&self.path, e)
    }

    pub fn get(&self, id: &ObjectId) -> Result<Option<Location>> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_OBJECTS), id.0)
            .map_err(|e| self.err(e))?;
        match v {
            None => Ok(None),
            Some(b) => Location::decode(&b)
                .map(Some)
                .ok_or_else(|| StoreError::index(&self.path, format!("corrupt location for {id}"))),
        }
    }

    pub fn contains(&self, id: &ObjectId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_OBJECTS), id.0)
            .map_err(|e| self.err(e))?
            .is_some())
    }

    /// Whether a file's content root is indexed (an empty file always is):
    /// what makes a recorded [`FileRef`] usable again without reading.
    pub fn has_content(&self, f: &ds_format::manifest::FileRef) -> Result<bool> {
        match f.root_object() {
            None => Ok(true),
            Some((_, id)) => self.contains(&id),
        }
    }

    /// Records a committed pack and every object in it.
    pub fn add_pack(&self, pack: &PackId, entries: &[PackEntry]) -> Result<()> {
        let mut b = WriteBatch::default();
        let mut bytes = 0u64;
        for e in entries {
            b.put_cf(self.cf(CF_OBJECTS), e.id.0, Location::of(*pack, e).encode());
            bytes += u64::from(e.stored_len);
        }
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        v.extend_from_slice(&bytes.to_le_bytes());
        b.put_cf(self.cf(CF_PACKS), pack.0, v);
        self.db.write(b).map_err(|e| self.err(e))
    }

    /// Points objects at other locations (the hub, after its gc moved or
    /// found other copies of them); packs are not recorded here.
    pub fn set_locations(&self, moves: &[(ObjectId, Location)]) -> Result<()> {
        let mut b = WriteBatch::default();
        for (id, l) in moves {
            b.put_cf(self.cf(CF_OBJECTS), id.0, l.encode());
        }
        self.db.write(b).map_err(|e| self.err(e))
    }

    /// Forgets objects (only those still pointing at `pack`) and the pack.
    pub fn remove_pack(&self, pack: &PackId, ids: &[ObjectId]) -> Result<()> {
        let mut b = WriteBatch::default();
        for id in ids {
            if self.get(id)?.is_some_and(|l| l.pack == *pack) {
                b.delete_cf(self.cf(CF_OBJECTS), id.0);
            }
        }
        b.delete_cf(self.cf(CF_PACKS), pack.0);
        self.db.write(b).map_err(|e| self.err(e))
    }

    pub fn has_pack(&self, pack: &PackId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_PACKS), pack.0)
            .map_err(|e| self.err(e))?
            .is_some())
    }

    pub fn packs(&self) -> Result<Vec<PackId>> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_PACKS), IteratorMode::Start) {
            let (k, _) = kv.map_err(|e| self.err(e))?;
            if let Some(id) = PackId::from_slice(&k) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Calls `f` for every object location (for verify and gc).
    pub fn for_each_object(
        &self,
        mut f: impl FnMut(ObjectId, Location) -> Result<()>,
    ) -> Result<()> {
        for kv in self
            .db
            .iterator_cf(self.cf(CF_OBJECTS), IteratorMode::Start)
        {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let (Some(id), Some(loc)) = (ObjectId::from_slice(&k), Location::decode(&v)) else {
                return Err(StoreError::index(&self.path, "corrupt object record"));
            };
            f(id, loc)?;
        }
        Ok(())
    }

    /// Objects whose id starts with the given bytes (for hex-prefix lookup);
    /// `nibble` is an optional extra high half-byte.
    pub fn objects_with_prefix(
        &self,
        prefix: &[u8],
        nibble: Option<u8>,
        kind: ObjectKind,
    ) -> Result<Vec<ObjectId>> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_OBJECTS),
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            if let Some(n) = nibble
                && k.get(prefix.len()).map(|b| b >> 4) != Some(n)
            {
                continue;
            }
            if Location::decode(&v).is_some_and(|l| l.kind == kind)
                && let Some(id) = ObjectId::from_slice(&k)
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn stat_get(&self, path: &[u8]) -> Result<Option<StatEntry>> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_STAT), path)
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| StatEntry::decode(&b)))
    }

    pub fn stat_put(&self, path: &[u8], e: &StatEntry) -> Result<()> {
        let mut w = rocksdb::WriteOptions::default();
        w.disable_wal(true); // a lost stat entry only costs a re-read
        self.db
            .put_cf_opt(self.cf(CF_STAT), path, e.encode(), &w)
            .map_err(|e| self.err(e))
    }

    /// Drops stat entries for which `keep` is false; returns how many.
    pub fn stat_retain(&self, mut keep: impl FnMut(&StatEntry) -> bool) -> Result<u64> {
        let mut b = WriteBatch::default();
        let mut n = 0;
        for kv in self.db.iterator_cf(self.cf(CF_STAT), IteratorMode::Start) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if !StatEntry::decode(&v).is_some_and(|e| keep(&e)) {
                b.delete_cf(self.cf(CF_STAT), k);
                n += 1;
            }
        }
        self.db.write(b).map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Durability barrier: everything written so far survives a crash.
    pub fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_and_stat_round_trip() {
        let l = Location {
            pack: PackId([9; 32]),
            kind: ObjectKind::DirNode,
            stored: Stored::Zstd,
            offset: 1 << 40,
            stored_len: 7,
            raw_len: 70,
        };
        assert_eq!(Location::decode(&l.encode()), Some(l));
        let s = StatEntry {
            size: 1,
            mtime_ns: -2,
            ctime_ns: 3,
            ino: 4,
            dev: 5,
            file: FileRef {
                size: 6,
                height: 1,
                root: ObjectId([8; 32]),
            },
        };
        assert_eq!(StatEntry::decode(&s.encode()), Some(s));
    }
}
