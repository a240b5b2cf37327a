//! Lazy access to a file's stored content: its chunk list, a bounded LRU
//! cache of verified chunks, and read-ahead threads.
//!
//! Why: a mount must touch only the chunks a reader asks for (a 10 GB
//! checkpoint opened to read its header costs one chunk), yet a sequential
//! reader should find the next chunks already decoded and rehashed. Chunks in
//! the cache were verified by [`Store::read_chunk`]; a damaged chunk is never
//! cached, so a retry hits the store again and fails again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{Sender, bounded};
use ds_format::ObjectId;
use ds_format::manifest::FileRef;

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

    /// Index of the chunk that starts exactly at `pos`.
    pub fn starting_at(&self, pos: u64) -> Option<usize> {
        self.chunks.binary_search_by_key(&pos, |c| c.offset).ok()
    }
}

enum Slot {
    Loading,
    Ready { data: Arc<Vec<u8>>, tick: u64 },
}

struct Inner {
    map: HashMap<ObjectId, Slot>,
    lru: BTreeMap<u64, ObjectId>,
    tick: u64,
    bytes: u64,
}

/// Bounded cache of verified chunk bytes, shared by every open file of a
/// mount and by its read-ahead threads. Concurrent misses on one chunk load
/// it once.
pub struct ChunkCache {
    store: Arc<Store>,
    cap: u64,
    inner: Mutex<Inner>,
    ready: Condvar,
    prefetch: Mutex<Option<Sender<(ObjectId, u64)>>>,
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
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                lru: BTreeMap::new(),
                tick: 0,
                bytes: 0,
            }),
            ready: Condvar::new(),
            prefetch: Mutex::new(None),
        });
        if threads > 0 {
            let (tx, rx) = bounded::<(ObjectId, u64)>(64);
            for i in 0..threads {
                let rx = rx.clone();
                let weak = Arc::downgrade(&c);
                std::thread::Builder::new()
                    .name(format!("ds-readahead-{i}"))
                    .spawn(move || {
                        for (id, len) in rx {
                            let Some(c) = weak.upgrade() else { break };
                            // A failure here is reported when a reader asks.
                            let _ = c.get(&id, len);
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

    /// Asks the read-ahead threads to load a chunk; drops the request if
    /// they are busy (read-ahead is a hint).
    pub fn prefetch(&self, id: ObjectId, len: u64) {
        if self.contains(&id) {
            return;
        }
        if let Some(tx) = self.prefetch.lock().expect("poisoned").as_ref() {
            let _ = tx.try_send((id, len));
        }
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.inner.lock().expect("poisoned").map.contains_key(id)
    }

    /// The verified bytes of a chunk, from the cache or the store.
    pub fn get(&self, id: &ObjectId, len: u64) -> Result<Arc<Vec<u8>>> {
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
        let loaded = self.store.read_chunk(id, len);
        let mut g = self.inner.lock().expect("poisoned");
        let out = match loaded {
            Ok(data) => {
                let data = Arc::new(data);
                g.tick += 1;
                let t = g.tick;
                g.lru.insert(t, *id);
                g.bytes += data.len() as u64;
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
                        g.bytes -= data.len() as u64;
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
