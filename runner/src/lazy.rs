//! Where a task's dataset mounts read what the runner's cache lacks
//! ([`HubObjects`], a [`ds_store::Lazy`] source): the datasets' trees,
//! fetched when the task starts, and their chunks, fetched from the hub
//! as the workload reads them, so a task that reads one file of a
//! terabyte dataset moves that file.
//!
//! Read-ahead along files. The trees say which chunks follow which in a
//! file. A chunk read that misses fetches a window of the chunks from it
//! on ([`WINDOW`] bytes, one request), and, while the workload reads that
//! window, the next one is already being fetched on a second connection:
//! a file read from start to end waits for the network only at its start.
//! A chunk being fetched ahead is waited for, never asked for twice.
//!
//! The chunks fetched are also written into the runner's cache store, in
//! the background and best effort ([`HubObjects::keep_in`]): chunks are
//! leaves, so the store's "an object held means its subtree held" stays
//! true, and the next task on the dataset reads them locally. The trees
//! are not written (their subtrees are not all held). The last [`KEPT`]
//! bytes fetched also stay in memory. The fetches run on a runtime of the
//! source's own (one worker), so its connections stay served between
//! reads, which come from the mount's threads.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ds_format::manifest::{Child, FileNode};
use ds_format::{ObjectId, ObjectKind};
use ds_store::txn::{Target, Transaction};
use ds_store::writer::Payload;
use ds_store::{Store, StoreError};
use ds_sync::Remote;

use crate::datasets::refused;
use crate::error::{Result, RunnerError};

/// Bytes of chunks one read-ahead request asks for.
pub const WINDOW: u64 = 8 << 20;
/// Bytes of fetched chunks kept in memory.
const KEPT: usize = 96 << 20;
/// Tries of one fetch, a reconnect between them after a pause that
/// doubles from [`FIRST_PAUSE`] (about 16 s in all: a hub restart).
const TRIES: u32 = 7;
const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest a read waits for a window fetched ahead before asking itself.
const PENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A hub to fetch from: URL, the task's token, a CA file.
pub type HubAddr = (String, String, Option<PathBuf>);

/// See the module's doc.
#[derive(Debug)]
pub struct HubObjects {
    rt: tokio::runtime::Runtime,
    trees: HashMap<ObjectId, (ObjectKind, Vec<u8>)>,
    /// The chunks of each fetched lowest file node, in file order, and
    /// where each chunk is among them.
    runs: Arc<Vec<Vec<Child>>>,
    place: HashMap<ObjectId, (u32, u32)>,
    shared: Arc<Shared>,
    /// Chunks fetched, on their way into the cache store, and the thread
    /// writing them.
    keep: Mutex<Option<std::sync::mpsc::SyncSender<Fetched>>>,
    keeper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Chunks written into the cache store.
    pub kept: Arc<AtomicU64>,
}

/// Chunks fetched in one request.
type Fetched = Vec<(ObjectId, Arc<Vec<u8>>)>;

/// Fetched chunks waiting to be written into the cache store, at most
/// this many batches (a busy store drops the rest: they are fetched again
/// next time, nothing else is lost).
const KEEP_QUEUE: usize = 16;

/// What the reading threads and the read-ahead tasks share.
#[derive(Debug)]
struct Shared {
    hub: HubAddr,
    /// For reads that wait, and for read-ahead: two connections, so a
    /// window fetched ahead never queues behind a read.
    now: tokio::sync::Mutex<Option<Remote>>,
    ahead: tokio::sync::Mutex<Option<Remote>>,
    state: Mutex<State>,
    /// Notified when a read-ahead window lands (or fails).
    landed: Condvar,
    /// Chunks and bytes fetched (read-ahead included).
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl Shared {
    fn count(&self, got: &Fetched) {
        self.chunks.fetch_add(got.len() as u64, Ordering::Relaxed);
        let b: usize = got.iter().map(|(_, c)| c.len()).sum();
        self.bytes.fetch_add(b as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct State {
    kept: HashMap<ObjectId, Arc<Vec<u8>>>,
    order: VecDeque<ObjectId>,
    kept_bytes: usize,
    /// Chunks a read-ahead request is fetching.
    pending: HashSet<ObjectId>,
    /// Per run of chunks: the index up to which chunks were asked for.
    frontier: HashMap<u32, u32>,
}

impl State {
    fn keep(&mut self, id: ObjectId, c: Arc<Vec<u8>>) {
        self.kept_bytes += c.len();
        match self.kept.insert(id, c) {
            Some(old) => self.kept_bytes -= old.len(),
            None => self.order.push_back(id),
        }
        while self.kept_bytes > KEPT
            && let Some(old) = self.order.pop_front()
        {
            if let Some(c) = self.kept.remove(&old) {
                self.kept_bytes -= c.len();
            }
        }
    }
}

impl HubObjects {
    /// Connects to `hub` and fetches the trees of `roots` the cache lacks.
    pub fn connect(hub: HubAddr, cache: Arc<Store>, roots: &[ObjectId]) -> Result<HubObjects> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ds-dataset-fetch")
            .enable_all()
            .build()
            .map_err(|e| refused(format!("starting a runtime: {e}")))?;
        let (remote, trees) = rt.block_on(async {
            let mut r = Remote::connect(&hub.0, &hub.1, hub.2.as_deref()).await?;
            let mut trees = HashMap::new();
            for root in roots {
                trees.extend(ds_sync::fetch_trees(cache.clone(), &mut r, *root).await?);
            }
            Ok::<_, RunnerError>((r, trees))
        })?;
        let mut runs = Vec::new();
        let mut place = HashMap::new();
        for (kind, raw) in trees.values() {
            if *kind != ObjectKind::FileNode {
                continue;
            }
            let node = FileNode::decode(raw).map_err(|e| refused(e.to_string()))?;
            if node.level == 0 {
                let n = runs.len() as u32;
                for (i, c) in node.children.iter().enumerate() {
                    place.entry(c.id).or_insert((n, i as u32));
                }
                runs.push(node.children);
            }
        }
        Ok(HubObjects {
            rt,
            trees,
            runs: Arc::new(runs),
            place,
            shared: Arc::new(Shared {
                hub,
                now: tokio::sync::Mutex::new(Some(remote)),
                ahead: tokio::sync::Mutex::new(None),
                state: Mutex::new(State::default()),
                landed: Condvar::new(),
                chunks: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            }),
            keep: Mutex::new(None),
            keeper: Mutex::new(None),
            kept: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Writes the chunks fetched from now on into `cache` (opened to
    /// read: it appends under the writer lock, a batch at a time), on a
    /// thread of its own that ends when this source is dropped.
    pub fn keep_in(&self, cache: Arc<Store>) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Fetched>(KEEP_QUEUE);
        let kept = self.kept.clone();
        let keeper = std::thread::Builder::new()
            .name("ds-dataset-keep".into())
            .spawn(move || {
                while let Ok(mut batch) = rx.recv() {
                    // Whatever else is waiting goes in the same pack.
                    while let Ok(more) = rx.try_recv() {
                        batch.extend(more);
                    }
                    match write(&cache, &batch) {
                        Ok(()) => {
                            kept.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("ds runner: fetched dataset chunks not kept: {e}");
                            return;
                        }
                    }
                }
            })
            .map_err(|e| refused(format!("starting the chunk writer: {e}")))?;
        *lock(&self.keep) = Some(tx);
        *lock(&self.keeper) = Some(keeper);
        Ok(())
    }

    /// Waits until what was fetched is written into the cache store (the
    /// mounts are gone: nothing more comes).
    pub fn finish_keeping(&self) {
        drop(lock(&self.keep).take());
        if let Some(t) = lock(&self.keeper).take() {
            let _ = t.join();
        }
    }

    /// Hands fetched chunks to the writer, if there is one and it keeps up.
    fn keep(&self, got: &[(ObjectId, Arc<Vec<u8>>)]) {
        if let Some(tx) = lock(&self.keep).as_ref()
            && !got.is_empty()
        {
            let _ = tx.try_send(got.to_vec());
        }
    }

    /// Tree objects fetched at the start.
    pub fn trees(&self) -> usize {
        self.trees.len()
    }

    /// Chunks and bytes fetched from the hub so far.
    pub fn fetched(&self) -> (u64, u64) {
        (
            self.shared.chunks.load(Ordering::Relaxed),
            self.shared.bytes.load(Ordering::Relaxed),
        )
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunks `from..` of `run` up to [`WINDOW`] bytes that are neither
    /// kept nor pending; moves the run's frontier past them.
    fn window(&self, st: &mut State, run: u32, from: u32) -> Vec<(ObjectId, ObjectKind)> {
        let chunks = &self.runs[run as usize];
        let (mut bytes, mut end, mut want) = (0, from as usize, Vec::new());
        while end < chunks.len() && (bytes == 0 || bytes + chunks[end].len <= WINDOW) {
            let c = &chunks[end];
            bytes += c.len;
            end += 1;
            if !st.kept.contains_key(&c.id)
                && !st.pending.contains(&c.id)
                && !want.iter().any(|(i, _)| *i == c.id)
            {
                want.push((c.id, ObjectKind::Chunk));
            }
        }
        let f = st.frontier.entry(run).or_insert(0);
        *f = (*f).max(end as u32);
        want
    }

    /// Starts fetching the window after `run`'s frontier, if the read at
    /// `at` is within a window of it.
    fn read_ahead(&self, st: &mut State, run: u32, at: u32) {
        let chunks = &self.runs[run as usize];
        let front = st.frontier.get(&run).copied().unwrap_or(0);
        // Done, or the read is past what was asked for (its miss fetches).
        if front as usize >= chunks.len() || at >= front {
            return;
        }
        let ahead: u64 = chunks[at as usize..front as usize]
            .iter()
            .map(|c| c.len)
            .sum();
        if ahead > WINDOW {
            return;
        }
        let want = self.window(st, run, front);
        if want.is_empty() {
            return;
        }
        st.pending.extend(want.iter().map(|(i, _)| *i));
        let shared = self.shared.clone();
        let keep = lock(&self.keep).clone();
        self.rt.spawn(async move {
            let got = fetch(&shared.hub, &shared.ahead, &want).await;
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            for (i, _) in &want {
                st.pending.remove(i);
            }
            // A failed read-ahead is only lost time: the read fetches again.
            let got: Fetched = got
                .map(|g| g.into_iter().map(|(i, c)| (i, Arc::new(c))).collect())
                .unwrap_or_default();
            for (i, c) in &got {
                st.keep(*i, c.clone());
            }
            drop(st);
            shared.count(&got);
            shared.landed.notify_all();
            if let Some(tx) = keep {
                let _ = tx.try_send(got);
            }
        });
    }

    fn chunk(&self, id: &ObjectId) -> Result<Option<Arc<Vec<u8>>>, String> {
        let place = self.place.get(id).copied();
        let want = {
            let mut st = self.state();
            // A window fetched ahead that holds it: wait for it to land
            // (bounded: a lost read-ahead is then fetched again).
            let until = std::time::Instant::now() + PENDING_WAIT;
            while st.pending.contains(id) {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                st = self
                    .shared
                    .landed
                    .wait_timeout(st, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if let Some(c) = st.kept.get(id).cloned() {
                if let Some((run, at)) = place {
                    self.read_ahead(&mut st, run, at);
                }
                return Ok(Some(c));
            }
            match place {
                Some((run, at)) => {
                    let mut w = self.window(&mut st, run, at);
                    if !w.iter().any(|(i, _)| i == id) {
                        w.insert(0, (*id, ObjectKind::Chunk));
                    }
                    w
                }
                None => vec![(*id, ObjectKind::Chunk)],
            }
        };
        let got = self
            .rt
            .block_on(fetch(&self.shared.hub, &self.shared.now, &want))?;
        let got: Fetched = got.into_iter().map(|(i, c)| (i, Arc::new(c))).collect();
        let mut st = self.state();
        let mut this = None;
        self.shared.count(&got);
        for (i, c) in &got {
            if i == id {
                this = Some(c.clone());
            }
            st.keep(*i, c.clone());
        }
        if let Some((run, at)) = place {
            self.read_ahead(&mut st, run, at);
        }
        drop(st);
        self.keep(&got);
        Ok(this)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends `chunks` to `cache` in one transaction (under its writer lock,
/// waiting for it; the appender dedups against what the store holds).
fn write(cache: &Arc<Store>, chunks: &[(ObjectId, Arc<Vec<u8>>)]) -> ds_store::Result<()> {
    let txn = Transaction::begin(Target::Append(cache.append()?))?;
    for (id, c) in chunks {
        txn.writer()
            .put(ObjectKind::Chunk, *id, Payload::Owned(c.to_vec()))?;
    }
    txn.finish().map(drop)
}

/// `want` from the hub on the connection in `slot` (made when there is
/// none, made again after a failure).
async fn fetch(
    hub: &HubAddr,
    slot: &tokio::sync::Mutex<Option<Remote>>,
    want: &[(ObjectId, ObjectKind)],
) -> Result<HashMap<ObjectId, Vec<u8>>, String> {
    let mut slot = slot.lock().await;
    let mut last = String::new();
    let mut pause = FIRST_PAUSE;
    for i in 0..TRIES {
        if i > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        if slot.is_none() {
            match Remote::connect(&hub.0, &hub.1, hub.2.as_deref()).await {
                Ok(r) => *slot = Some(r),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            }
        }
        let r = slot.as_mut().expect("connected above");
        match ds_sync::fetch_objects(r, want).await {
            Ok(got) => return Ok(got),
            Err(e) => {
                // A dropped connection (a hub restart): a new one next.
                *slot = None;
                last = e.to_string();
            }
        }
    }
    Err(last)
}

impl ds_store::Lazy for HubObjects {
    fn object(&self, id: &ObjectId, kind: ObjectKind) -> ds_store::Result<Option<Vec<u8>>> {
        if kind != ObjectKind::Chunk {
            return Ok(self
                .trees
                .get(id)
                .filter(|(k, _)| *k == kind)
                .map(|(_, raw)| raw.clone()));
        }
        self.chunk(id)
            .map(|c| c.map(|c| c.to_vec()))
            .map_err(|why| StoreError::Unavailable { id: *id, why })
    }
}
