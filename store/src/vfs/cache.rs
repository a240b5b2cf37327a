//! Lazy access to a file's stored content: its chunk list, a bounded LRU
//! cache of verified chunks, and read-ahead threads.
//!
//! Why: a mount must touch only the chunks a reader asks for (a 10 GB
//! checkpoint opened to read its header costs one chunk), yet a sequential
//! reader should find the next chunks already decoded and rehashed. Chunks in
//! the cache were verified by [`Store::map_or_read_chunk`]; a damaged chunk is
//! never cached, so a retry hits the store again and fails again.
//!
//! Speed: on a 2-core machine a streaming read is CPU-bound, and hashing is
//! the one cost that cannot go. So a raw chunk in a local pack is hashed
//! where it lies in the memory-mapped pack and kept as a reference into the
//! map (no copy at all); other chunks are decoded into buffers recycled
//! through a [`BufPool`] (no page faults or zeroing per chunk). Read-ahead
//! is asked for in batches only when the window ahead of the reader is half
//! empty (few thread wake-ups), and a batch is split across the read-ahead
//! threads in file order, so the nearest chunk is always loaded first.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{Sender, bounded};
use ds_format::ObjectId;
use ds_format::manifest::FileRef;

use crate::packs::PackMap;
use crate::{Result, Store};

/// One chunk of a stored file, at its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPos {
    pub id: ObjectId,
    pub offset: u64,
    pub len: u64,
}

/// A stored file's chunks in order (offsets ascending, contiguous).
#[derive(Debug, Default)]
pub struct ChunkList {
    pub chunks: Vec<ChunkPos>,
}

impl ChunkList {
    pub fn load(store: &Store, file: &FileRef) -> Result<ChunkList> {
        let mut chunks = Vec::new();
        store.for_each_chunk(file, &mut |id, offset, len| {
            chunks.push(ChunkPos { id, offset, len });
            Ok(())
        })?;
        Ok(ChunkList { chunks })
    }

    /// Index of the chunk holding byte `pos`.
    pub fn find(&self, pos: u64) -> Option<usize> {
        let i = self.chunks.partition_point(|c| c.offset + c.len <= pos);
        (i < self.chunks.len()).then_some(i)
    }
}

/// Smallest and largest pooled buffer sizes (powers of two). Bigger chunks
/// (only with a non-default chunker) get exact, unpooled buffers.
const MIN_CLASS: usize = 4 << 10;
const MAX_CLASS: usize = 4 << 20;

/// Idle chunk buffers by power-of-two size class, bounded in bytes.
#[derive(Debug)]
pub struct BufPool {
    free: Mutex<(Vec<Vec<Vec<u8>>>, u64)>,
    cap: u64,
}

impl BufPool {
    pub fn new(cap: u64) -> Arc<BufPool> {
        let classes = (MAX_CLASS.trailing_zeros() + 1) as usize;
        Arc::new(BufPool {
            free: Mutex::new((vec![Vec::new(); classes], 0)),
            cap,
        })
    }

    fn class(len: usize) -> Option<usize> {
        let size = len.max(MIN_CLASS).checked_next_power_of_two()?;
        (size <= MAX_CLASS).then(|| size.trailing_zeros() as usize)
    }

    /// A buffer of at least `len` bytes holding unspecified old bytes.
    fn take(&self, len: usize) -> Vec<u8> {
        match Self::class(len) {
            Some(c) => {
                let mut g = self.free.lock().expect("poisoned");
                match g.0[c].pop() {
                    Some(b) => {
                        g.1 -= b.len() as u64;
                        b
                    }
                    None => vec![0; 1 << c],
                }
            }
            None => vec![0; len],
        }
    }

    fn give(&self, buf: Vec<u8>) {
        let Some(c) = Self::class(buf.len()).filter(|c| 1 << c == buf.len()) else {
            return;
        };
        let mut g = self.free.lock().expect("poisoned");
        if g.1 + buf.len() as u64 <= self.cap {
            g.1 += buf.len() as u64;
            g.0[c].push(buf);
        }
    }
}

/// A chunk's verified bytes: where they lie in a mapped pack (a raw chunk
/// in a local pack), or in a pooled buffer that goes back to the pool when
/// the last holder (cache or reader) lets go.
#[derive(Debug)]
pub struct ChunkData {
    bytes: Bytes,
    len: usize,
}

#[derive(Debug)]
enum Bytes {
    Mapped { map: Arc<PackMap>, start: usize },
    Pooled { buf: Vec<u8>, pool: Arc<BufPool> },
}

impl ChunkData {
    /// Memory accounted to the cache: the buffer's size class, or for a
    /// mapped chunk its length (page cache it keeps in use).
    fn footprint(&self) -> u64 {
        match &self.bytes {
            Bytes::Mapped { .. } => self.len as u64,
            Bytes::Pooled { buf, .. } => buf.len() as u64,
        }
    }

    /// The pack map and offset these bytes lie at, if mapped: chunks lying
    /// back to back in one map can be served as one slice.
    pub fn mapped(&self) -> Option<(&Arc<PackMap>, usize)> {
        match &self.bytes {
            Bytes::Mapped { map, start } => Some((map, *start)),
            Bytes::Pooled { .. } => None,
        }
    }
}

impl Deref for ChunkData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped { map, start } => &map[*start..*start + self.len],
            Bytes::Pooled { buf, .. } => &buf[..self.len],
        }
    }
}

impl Drop for ChunkData {
    fn drop(&mut self) {
        if let Bytes::Pooled { buf, pool } = &mut self.bytes {
            pool.give(std::mem::take(buf));
        }
    }
}

enum Slot {
    Loading,
    Ready { data: Arc<ChunkData>, tick: u64 },
}

struct Inner {
    map: HashMap<ObjectId, Slot>,
    lru: BTreeMap<u64, ObjectId>,
    tick: u64,
    bytes: u64,
}

type Batch = Vec<(ObjectId, u64)>;

/// Bounded cache of verified chunk bytes, shared by every open file of a
/// mount and by its read-ahead threads. Concurrent misses on one chunk load
/// it once.
pub struct ChunkCache {
    store: Arc<Store>,
    cap: u64,
    pool: Arc<BufPool>,
    inner: Mutex<Inner>,
    ready: Condvar,
    threads: usize,
    prefetch: Mutex<Option<Sender<Batch>>>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.lock().expect("poisoned");
        f.debug_struct("ChunkCache")
            .field("cap", &self.cap)
            .field("bytes", &i.bytes)
            .field("chunks", &i.map.len())
            .finish()
    }
}

impl ChunkCache {
    /// A cache of at most `cap` bytes with `threads` read-ahead threads.
    pub fn new(store: Arc<Store>, cap: u64, threads: usize) -> Arc<ChunkCache> {
        let c = Arc::new(ChunkCache {
            store,
            cap,
            // Idle buffers: enough for the read-ahead windows in flight.
            pool: BufPool::new((cap / 4).clamp(8 << 20, 64 << 20)),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                lru: BTreeMap::new(),
                tick: 0,
                bytes: 0,
            }),
            ready: Condvar::new(),
            threads,
            prefetch: Mutex::new(None),
        });
        if threads > 0 {
            let (tx, rx) = bounded::<Batch>(4 * threads);
            for i in 0..threads {
                let rx = rx.clone();
                let weak = Arc::downgrade(&c);
                std::thread::Builder::new()
                    .name(format!("ds-readahead-{i}"))
                    .spawn(move || {
                        for batch in rx {
                            let Some(c) = weak.upgrade() else { break };
                            for (id, len) in batch {
                                // A failure here is reported when a reader asks.
                                let _ = c.fill(&id, len);
                            }
                        }
                    })
                    .expect("spawn read-ahead thread");
            }
            *c.prefetch.lock().expect("poisoned") = Some(tx);
        }
        c
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Asks the read-ahead threads to load `window` (the chunks just ahead
    /// of a sequential reader, in file order). A hint: nothing is asked
    /// while at least half the window is cached or loading and its first
    /// chunk is, and nothing is queued if the threads are busy.
    pub fn prefetch(&self, window: &[(ObjectId, u64)]) {
        let tx = match self.prefetch.lock().expect("poisoned").as_ref() {
            Some(tx) => tx.clone(),
            None => return,
        };
        let mut missing: Batch = Vec::new();
        {
            let mut g = self.inner.lock().expect("poisoned");
            let absent: Vec<usize> = (0..window.len())
                .filter(|&i| !g.map.contains_key(&window[i].0))
                .collect();
            let urgent = absent.first() == Some(&0);
            if absent.is_empty() || (!urgent && absent.len() * 2 < window.len()) {
                return;
            }
            for i in absent {
                // Claimed now, so a reader arriving first waits instead of
                // loading it twice; released below if the batch is dropped.
                if g.map.insert(window[i].0, Slot::Loading).is_none() {
                    missing.push(window[i]);
                }
            }
        }
        let per = missing.len().div_ceil(self.threads.max(1));
        let mut dropped: Batch = Vec::new();
        for part in missing.chunks(per.max(1)) {
            if tx.try_send(part.to_vec()).is_err() {
                dropped.extend_from_slice(part);
            }
        }
        if !dropped.is_empty() {
            let mut g = self.inner.lock().expect("poisoned");
            for (id, _) in &dropped {
                if matches!(g.map.get(id), Some(Slot::Loading)) {
                    g.map.remove(id);
                }
            }
            drop(g);
            self.ready.notify_all();
        }
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.inner.lock().expect("poisoned").map.contains_key(id)
    }

    /// The verified bytes of a chunk, from the cache or the store.
    pub fn get(&self, id: &ObjectId, len: u64) -> Result<Arc<ChunkData>> {
        {
            let mut g = self.inner.lock().expect("poisoned");
            loop {
                match g.map.get(id) {
                    Some(Slot::Ready { data, tick }) => {
                        let (data, old) = (data.clone(), *tick);
                        g.tick += 1;
                        let t = g.tick;
                        g.lru.remove(&old);
                        g.lru.insert(t, *id);
                        if let Some(Slot::Ready { tick, .. }) = g.map.get_mut(id) {
                            *tick = t;
                        }
                        return Ok(data);
                    }
                    Some(Slot::Loading) => g = self.ready.wait(g).expect("poisoned"),
                    None => {
                        g.map.insert(*id, Slot::Loading);
                        break;
                    }
                }
            }
        }
        self.fill(id, len)
    }

    /// Loads a chunk whose slot this caller set to `Loading`, and publishes
    /// it (or clears the slot on failure, so the next reader retries).
    fn fill(&self, id: &ObjectId, len: u64) -> Result<Arc<ChunkData>> {
        let len = len as usize;
        let mut buf = self.pool.take(len);
        let loaded = match self.store.map_or_read_chunk(id, &mut buf[..len]) {
            Ok(Some((map, start))) => {
                self.pool.give(buf);
                Ok(Bytes::Mapped { map, start })
            }
            Ok(None) => Ok(Bytes::Pooled {
                buf,
                pool: self.pool.clone(),
            }),
            Err(e) => {
                self.pool.give(buf);
                Err(e)
            }
        };
        let mut g = self.inner.lock().expect("poisoned");
        let out = match loaded {
            Ok(bytes) => {
                let data = Arc::new(ChunkData { bytes, len });
                g.tick += 1;
                let t = g.tick;
                g.lru.insert(t, *id);
                g.bytes += data.footprint();
                g.map.insert(
                    *id,
                    Slot::Ready {
                        data: data.clone(),
                        tick: t,
                    },
                );
                while g.bytes > self.cap && g.lru.len() > 1 {
                    let (_, victim) = g.lru.pop_first().expect("non-empty");
                    if let Some(Slot::Ready { data, .. }) = g.map.remove(&victim) {
                        g.bytes -= data.footprint();
                    }
                }
                Ok(data)
            }
            Err(e) => {
                g.map.remove(id);
                Err(e)
            }
        };
        drop(g);
        self.ready.notify_all();
        out
    }

    /// Bytes currently cached.
    pub fn cached_bytes(&self) -> u64 {
        self.inner.lock().expect("poisoned").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_buffers_by_class_within_its_cap() {
        assert_eq!(BufPool::class(1), Some(12));
        assert_eq!(BufPool::class(64 << 10), Some(16));
        assert_eq!(BufPool::class((64 << 10) + 1), Some(17));
        assert_eq!(BufPool::class(MAX_CLASS + 1), None);
        let pool = BufPool::new(256 << 10);
        let a = ChunkData {
            bytes: Bytes::Pooled {
                buf: pool.take(100_000),
                pool: pool.clone(),
            },
            len: 100_000,
        };
        assert_eq!((a.len(), a.footprint()), (100_000, 128 << 10));
        let ptr = a.as_ptr();
        drop(a);
        // Same class: the same memory comes back.
        let b = pool.take(70_000);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 128 << 10));
        // Beyond the cap, returned buffers are freed instead of kept.
        for buf in [
            b,
            pool.take(200_000),
            pool.take(200_000),
            pool.take(200_000),
        ] {
            pool.give(buf);
        }
        assert!(pool.free.lock().unwrap().1 <= 256 << 10);
        // Unpooled sizes still work.
        assert_eq!(pool.take(MAX_CLASS + 5).len(), MAX_CLASS + 5);
    }
}
