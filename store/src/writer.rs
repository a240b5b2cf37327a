//! The pack writer: one thread appends objects to the current pack, a second
//! makes finished packs durable and indexes them, so hashing, writing and
//! fsync overlap.
//!
//! ```text
//! workers ──put──▶ [bounded channel] ──▶ writer thread ──pack──▶ syncer thread
//!                                        (append, dedup)         (commit = fsync+rename,
//!                                                                  then index)
//! ```
//!
//! Invariants:
//! - an object enters the index only after the pack holding it is committed;
//! - packs are committed in the order they were written, so an indexed
//!   object implies every object written before it is indexed too (workers
//!   emit children before parents);
//! - an object already indexed, or already written in this session, is not
//!   written again.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use ds_format::config::Compression;
use ds_format::pack::{self, Framing, HEADER, PackEntry, Stored};
use ds_format::{ObjectId, ObjectKind, PackId};

use crate::index::Index;
use crate::packs::{PackSink, PackStore};
use crate::{Result, StoreError};

/// What a writer consults (is this object stored already?) and where it
/// records each pack once committed: the RocksDB index for the store's one
/// writer, or the journal for a read-write mount appending beside readers
/// (see `journal.rs`).
pub trait Catalog: Send + Sync + std::fmt::Debug {
    fn contains(&self, id: &ObjectId) -> Result<bool>;
    /// Called once `pack` is committed (durable), in commit order.
    fn add_pack(&self, pack: &PackId, entries: &[PackEntry]) -> Result<()>;
}

impl Catalog for Index {
    fn contains(&self, id: &ObjectId) -> Result<bool> {
        Index::contains(self, id)
    }
    fn add_pack(&self, pack: &PackId, entries: &[PackEntry]) -> Result<()> {
        Index::add_pack(self, pack, entries)
    }
}

/// Bytes of an object: owned, or a range of a shared read buffer (so the
/// chunks of a large file are never copied between reading and writing).
#[derive(Debug, Clone)]
pub enum Payload {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>, Range<usize>),
}

impl Payload {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            Payload::Shared(b, r) => &b[r.clone()],
        }
    }
}

#[derive(Debug)]
struct Put {
    id: ObjectId,
    kind: ObjectKind,
    stored: Stored,
    raw_len: u32,
    data: Payload,
}

/// An object ready for the pack writer ([`PackWriter::encode`]).
#[derive(Debug)]
pub struct Encoded(Put);

/// What a writer session wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStats {
    pub objects: u64,
    /// Plaintext bytes of new objects.
    pub raw_bytes: u64,
    /// Bytes of new objects as stored (after compression).
    pub stored_bytes: u64,
    pub packs: u64,
    /// Objects handed in that were already present.
    pub duplicates: u64,
}

/// Handle used by producers; cheap to clone.
#[derive(Debug, Clone)]
pub struct PackWriter {
    tx: Sender<Put>,
    catalog: Arc<dyn Catalog>,
    compression: Compression,
    failed: Arc<Mutex<Option<StoreError>>>,
}

/// Owns the threads; [`WriterSession::finish`] is the durability barrier.
#[derive(Debug)]
pub struct WriterSession {
    writer: Option<PackWriter>,
    thread: Option<JoinHandle<Result<WriteStats>>>,
    failed: Arc<Mutex<Option<StoreError>>>,
}

/// Starts a writer over `packs`, closing packs at `pack_size` bytes.
pub fn start(
    packs: Arc<dyn PackStore>,
    index: Arc<Index>,
    compression: Compression,
    pack_size: u64,
) -> WriterSession {
    start_with(packs, index, compression, pack_size)
}

/// [`start`], recording packs in any [`Catalog`].
pub fn start_with(
    packs: Arc<dyn PackStore>,
    index: Arc<dyn Catalog>,
    compression: Compression,
    pack_size: u64,
) -> WriterSession {
    let (tx, rx) = bounded::<Put>(256);
    let failed = Arc::new(Mutex::new(None));
    let ix = index.clone();
    let f2 = failed.clone();
    let thread = std::thread::Builder::new()
        .name("ds-pack-writer".into())
        .spawn(move || {
            let r = write_loop(&rx, packs, ix, pack_size);
            // Record the cause before `rx` is dropped: producers whose next
            // send fails then report it instead of a bare "stopped".
            if let Err(e) = &r {
                f2.lock()
                    .expect("poisoned")
                    .get_or_insert(StoreError::Internal(e.to_string()));
            }
            drop(rx);
            r
        })
        .expect("spawn pack writer");
    WriterSession {
        writer: Some(PackWriter {
            tx,
            catalog: index,
            compression,
            failed: failed.clone(),
        }),
        thread: Some(thread),
        failed,
    }
}

impl WriterSession {
    pub fn writer(&self) -> &PackWriter {
        self.writer.as_ref().expect("writer open until finish")
    }

    /// Closes the last pack and waits until every pack is committed and
    /// indexed. Objects are durable only after this returns Ok.
    pub fn finish(mut self) -> Result<WriteStats> {
        drop(self.writer.take());
        let r = self
            .thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| StoreError::Internal("pack writer thread panicked".into()))?;
        if let Some(e) = self.failed.lock().expect("poisoned").take()
            && r.is_ok()
        {
            return Err(e);
        }
        r
    }
}

impl Drop for WriterSession {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Looks like random bytes? Cheap order-0 entropy estimate on a sample, so
/// that incompressible chunks (model weights, archives) skip zstd entirely.
fn looks_incompressible(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(4096)];
    if sample.len() < 256 {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in sample {
        counts[usize::from(*b)] += 1;
    }
    let n = sample.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum();
    entropy > 7.5
}

impl PackWriter {
    /// Is `id` stored already (by an earlier session)?
    pub fn contains(&self, id: &ObjectId) -> Result<bool> {
        self.catalog.contains(id)
    }

    /// Hands an object to the writer. Compression (if configured and worth
    /// it) happens here, on the caller's thread, so it runs in parallel.
    pub fn put(&self, kind: ObjectKind, id: ObjectId, data: Payload) -> Result<()> {
        let obj = self.encode(kind, id, data)?;
        self.put_encoded(obj)
    }

    /// The first half of [`PackWriter::put`]: checks the size and compresses
    /// (if configured and worth it), on the caller's thread. Callers that
    /// encode in parallel then hand objects over in the order they want
    /// them packed.
    pub fn encode(&self, kind: ObjectKind, id: ObjectId, data: Payload) -> Result<Encoded> {
        let raw = data.as_slice();
        let raw_len = u32::try_from(raw.len())
            .ok()
            .filter(|l| *l <= pack::MAX_OBJECT)
            .ok_or_else(|| StoreError::BadInput(format!("object {id} too large")))?;
        let (stored, data) = match self.compression {
            Compression::Zstd { level } if raw.len() >= 512 && !looks_incompressible(raw) => {
                match compress(raw, level) {
                    Ok(c) if c.len() <= raw.len() - raw.len() / 16 => {
                        (Stored::Zstd, Payload::Owned(c))
                    }
                    _ => (Stored::Raw, data),
                }
            }
            _ => (Stored::Raw, data),
        };
        Ok(Encoded(Put {
            id,
            kind,
            stored,
            raw_len,
            data,
        }))
    }

    /// Hands over an object already in stored form (`stored` bytes whose
    /// plaintext, `raw_len` long, the caller has checked against `id`):
    /// a pull keeps what the hub sent as it is, without compressing it
    /// again — unless this store is set to store objects uncompressed.
    pub fn put_stored(
        &self,
        kind: ObjectKind,
        id: ObjectId,
        stored: Stored,
        raw_len: u32,
        bytes: Vec<u8>,
        raw: impl FnOnce() -> Vec<u8>,
    ) -> Result<()> {
        if raw_len > pack::MAX_OBJECT {
            return Err(StoreError::BadInput(format!("object {id} too large")));
        }
        if matches!(self.compression, Compression::None) && stored != Stored::Raw {
            return self.put(kind, id, Payload::Owned(raw()));
        }
        self.put_encoded(Encoded(Put {
            id,
            kind,
            stored,
            raw_len,
            data: Payload::Owned(bytes),
        }))
    }

    /// The second half of [`PackWriter::put`]: queues an encoded object;
    /// objects are packed in the order they are queued.
    pub fn put_encoded(&self, obj: Encoded) -> Result<()> {
        if self.tx.send(obj.0).is_err() {
            return Err(self.failure());
        }
        Ok(())
    }

    fn failure(&self) -> StoreError {
        match self.failed.lock().expect("poisoned").as_ref() {
            Some(e) => StoreError::Internal(format!("pack writer failed: {e}")),
            None => StoreError::Internal("pack writer stopped".into()),
        }
    }
}

struct OpenPack {
    sink: Box<dyn PackSink>,
    framing: Framing,
}

struct Sealed {
    sink: Box<dyn PackSink>,
    id: PackId,
    entries: Vec<PackEntry>,
}

fn write_loop(
    rx: &Receiver<Put>,
    packs: Arc<dyn PackStore>,
    index: Arc<dyn Catalog>,
    pack_size: u64,
) -> Result<WriteStats> {
    let pending: Arc<Mutex<HashSet<ObjectId>>> = Arc::default();
    let (stx, srx) = bounded::<Sealed>(2);
    let (ix, pend) = (index.clone(), pending.clone());
    let syncer = std::thread::Builder::new()
        .name("ds-pack-syncer".into())
        .spawn(move || -> Result<u64> {
            let mut n = 0;
            for s in srx {
                s.sink.commit(&s.id)?;
                ix.add_pack(&s.id, &s.entries)?;
                let mut p = pend.lock().expect("poisoned");
                for e in &s.entries {
                    p.remove(&e.id);
                }
                n += 1;
            }
            Ok(n)
        })
        .expect("spawn pack syncer");

    let mut stats = WriteStats::default();
    let mut open: Option<OpenPack> = None;
    let result = (|| -> Result<()> {
        for put in rx.iter() {
            // `pending` is checked before the index: the syncer indexes
            // before it un-pends, so an object is always in one or the other.
            if pending.lock().expect("poisoned").contains(&put.id) || index.contains(&put.id)? {
                stats.duplicates += 1;
                continue;
            }
            let p = match &mut open {
                Some(p) => p,
                None => {
                    let mut sink = packs.create()?;
                    sink.write(&HEADER)?;
                    open.insert(OpenPack {
                        sink,
                        framing: Framing::new(),
                    })
                }
            };
            let bytes = put.data.as_slice();
            debug_assert_eq!(p.sink.written(), p.framing.len());
            p.sink.write(bytes)?;
            p.framing.push(
                put.id,
                put.kind,
                put.stored,
                bytes.len() as u32,
                put.raw_len,
            );
            pending.lock().expect("poisoned").insert(put.id);
            stats.objects += 1;
            stats.raw_bytes += u64::from(put.raw_len);
            stats.stored_bytes += bytes.len() as u64;
            if p.sink.written() >= pack_size {
                let p = open.take().expect("open pack");
                seal(p, &stx)?;
                stats.packs += 1;
            }
        }
        if let Some(p) = open.take() {
            seal(p, &stx)?;
            stats.packs += 1;
        }
        Ok(())
    })();
    drop(stx);
    let synced = syncer
        .join()
        .map_err(|_| StoreError::Internal("pack syncer thread panicked".into()))?;
    // The syncer's error is the root cause when both failed.
    synced?;
    result?;
    Ok(stats)
}

fn seal(mut p: OpenPack, stx: &Sender<Sealed>) -> Result<()> {
    let (id, trailer, entries) = p.framing.seal();
    p.sink.write(&trailer)?;
    stx.send(Sealed {
        sink: p.sink,
        id,
        entries,
    })
    .map_err(|_| StoreError::Internal("pack syncer stopped (see the previous error)".into()))
}

thread_local! {
    /// One zstd compression context per thread (and level), reused:
    /// creating one costs more than compressing a 64 KiB chunk at level 1.
    static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `zstd::bulk::compress`, on this thread's reused context.
fn compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        c.as_mut().expect("just set").1.compress(raw)
    })
}
