//! A task's datasets (`ds run --dataset NAME[@SNAP]:PATH`): each mounted
//! read-only at the snapshot the hub resolved, lazily — its directory and
//! file records are fetched when the task starts, its chunks from the hub
//! as the workload reads them ([`HubObjects`]; what the cache store holds
//! is read from it) — and shown to the workload at PATH.
//!
//! Where the mounts live. The process executor sees the host's paths, so
//! a dataset under the home is a FUSE mount nested in the workspace's
//! (`HOME/PATH`). A container gets a read-only bind of a mount under the
//! task's directory (`CACHE/tasks/ID/datasets/N`), at `/home/ds/PATH` or
//! at an absolute PATH. Either way the directory PATH names in the
//! workspace is made by the runner before the workload starts and removed
//! after it, when it is still empty, so the final snapshot holds neither
//! the dataset nor a trace of its mount point; the workspace's own
//! snapshots (runs, the final one) are taken through the workspace mount's
//! VFS, which never sees a mount stacked on it.
//!
//! The runner checks the spec again ([`ds_proto::mounts`]): a hub is not
//! trusted to have refused a PATH that would escape the home.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ds_format::manifest::{Child, FileNode};
use ds_format::run::DatasetUse;
use ds_format::{ObjectId, ObjectKind};
use ds_fuse::{Config as MountConfig, MountError, MountOptions, SessionUnmounter, Source};
use ds_proto::mounts::{self, Target};
use ds_proto::runner::TaskSpec;
use ds_store::vfs::VfsOptions;
use ds_store::{Store, StoreError};
use ds_sync::Remote;

use crate::error::{IoContext, Result, RunnerError};

/// One dataset mount, decided before anything is mounted.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub snapshot: ObjectId,
    /// The directory the FUSE mount goes on.
    pub mountpoint: PathBuf,
    /// For a container: where the bind goes in it.
    pub bind: Option<String>,
    /// Directories under the home to make first (outermost first).
    pub home_dirs: Vec<PathBuf>,
    /// The path as the workload sees it (provenance).
    pub seen_at: String,
}

impl Planned {
    pub fn used(&self) -> DatasetUse {
        DatasetUse {
            name: self.name.clone(),
            snapshot: self.snapshot,
            path: self.seen_at.clone(),
        }
    }
}

fn refused(why: String) -> RunnerError {
    RunnerError::Task {
        step: "mounting datasets",
        why,
    }
}

/// Decides where each of the spec's datasets goes. `docker`: the task
/// runs in a container.
pub fn plan(spec: &TaskSpec, home: &Path, task_dir: &Path, docker: bool) -> Result<Vec<Planned>> {
    let targets = mounts::check_all(&spec.datasets).map_err(|e| refused(e.0))?;
    let mut out = Vec::with_capacity(targets.len());
    for (i, (d, t)) in spec.datasets.iter().zip(targets).enumerate() {
        let snapshot = ObjectId::from_slice(&d.snapshot).ok_or_else(|| {
            refused(format!(
                "the hub sent dataset {:?} without its snapshot (an older hub?)",
                d.name
            ))
        })?;
        let own = task_dir.join("datasets").join(i.to_string());
        let (mountpoint, bind, home_rel, seen_at) = match (&t, docker) {
            (Target::Home(parts), false) => {
                let p = parts.iter().fold(home.to_path_buf(), |p, c| p.join(c));
                let seen = p.to_string_lossy().into_owned();
                (p, None, Some(parts.clone()), seen)
            }
            (Target::Home(parts), true) => {
                let inside = format!("{}/{}", ds_proto::HOME_IN_CONTAINER, parts.join("/"));
                (own, Some(inside.clone()), Some(parts.clone()), inside)
            }
            (Target::Container(p), true) => (own, Some(p.clone()), None, p.clone()),
            (Target::Container(p), false) => {
                return Err(refused(format!(
                    "dataset {:?} at {p:?}: an absolute path is a place in a container, and \
                     this task runs as a process; give a path relative to the home directory",
                    d.name
                )));
            }
        };
        let home_dirs = home_rel
            .map(|parts| {
                let mut p = home.to_path_buf();
                parts
                    .iter()
                    .map(|c| {
                        p = p.join(c);
                        p.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Planned {
            name: d.name.clone(),
            snapshot,
            mountpoint,
            bind,
            home_dirs,
            seen_at,
        });
    }
    Ok(out)
}

/// The live mounts of a task's datasets, and the directories made for
/// them in the workspace.
#[derive(Default)]
pub struct Mounts {
    live: Vec<Live>,
    made: Vec<PathBuf>,
}

/// One served dataset mount.
struct Live {
    unmounter: SessionUnmounter,
    served: JoinHandle<std::result::Result<(), MountError>>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for Mounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live: Vec<&PathBuf> = self.live.iter().map(|l| &l.mountpoint).collect();
        f.debug_struct("Mounts")
            .field("live", &live)
            .field("made", &self.made)
            .finish()
    }
}

impl Mounts {
    /// Mounts every planned dataset read-only, with the workspace mount's
    /// owner settings (`vfs`) and `allow_other` (a container's user).
    /// On error, what was mounted is unmounted again.
    pub fn start(
        store: &Arc<Store>,
        plans: &[Planned],
        vfs: &VfsOptions,
        allow_other: bool,
    ) -> Result<Mounts> {
        let mut m = Mounts::default();
        if let Err(e) = m.start_all(store, plans, vfs, allow_other) {
            m.stop(&|_| {});
            return Err(e);
        }
        Ok(m)
    }

    fn start_all(
        &mut self,
        store: &Arc<Store>,
        plans: &[Planned],
        vfs: &VfsOptions,
        allow_other: bool,
    ) -> Result<()> {
        for p in plans {
            for d in &p.home_dirs {
                match std::fs::symlink_metadata(d) {
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => {
                        return Err(refused(format!(
                            "dataset {:?}: {} is a file in the workspace, not a directory",
                            p.name,
                            d.display()
                        )));
                    }
                    Err(_) => {
                        std::fs::create_dir(d).at(d)?;
                        self.made.push(d.clone());
                    }
                }
            }
            std::fs::create_dir_all(&p.mountpoint).at(&p.mountpoint)?;
            let cfg = MountConfig {
                source: Source::Snapshot(p.snapshot),
                vfs: vfs.clone(),
                fuse: MountOptions {
                    read_only: true,
                    allow_other,
                    threads: 2,
                    direct_io: false,
                    fsname: format!("ds:{}@{}", p.name, p.snapshot.short()),
                },
                readahead_kib: 0,
                checkpoint_every: std::time::Duration::from_secs(5),
            };
            let mut mounted = ds_fuse::Mounted::start(store.clone(), &p.mountpoint, cfg)?;
            let unmounter = mounted.unmounter();
            let served = std::thread::Builder::new()
                .name(format!("ds-dataset-{}", p.name))
                .spawn(move || mounted.serve())
                .at(&p.mountpoint)?;
            self.live.push(Live {
                unmounter,
                served,
                mountpoint: p.mountpoint.clone(),
            });
        }
        Ok(())
    }

    /// Unmounts (the innermost first) and removes the directories made in
    /// the workspace that are still empty.
    pub fn stop(&mut self, say: &dyn Fn(String)) {
        for mut l in self.live.drain(..).rev() {
            crate::task::unmount(&mut l.unmounter, &l.mountpoint);
            match l.served.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => say(format!("warning: a dataset mount ended with: {e}")),
                Err(_) => say("warning: a dataset mount's thread panicked".into()),
            }
        }
        for d in self.made.drain(..).rev() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.stop(&|_| {});
    }
}

/// The snapshot metadata that names the datasets a task saw:
/// `NAME@ID:PATH`, space-separated.
pub fn metadata(plans: &[Planned]) -> Option<String> {
    (!plans.is_empty()).then(|| {
        plans
            .iter()
            .map(|p| format!("{}@{}:{}", p.name, p.snapshot, p.seen_at))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Where a task's dataset mounts read what the cache lacks: their trees,
/// fetched when the task starts ([`HubObjects::connect`]), and their chunks,
/// fetched from the hub as the workload reads them, so a task that reads
/// one file of a terabyte dataset moves that file. A missing chunk is
/// fetched with the chunks that follow it in its file (up to
/// [`READ_AHEAD`] bytes, one request): a file read from start to end costs
/// a round trip per few MiB, not one per 64 KiB chunk. Nothing fetched is
/// written into the cache store (see [`ds_store::Lazy`]); the last
/// [`KEPT`] bytes fetched are kept in memory, and the kernel's page cache
/// keeps what was read.
///
/// It has a runtime of its own (one worker), so the hub connection made on
/// it stays served between reads, which come from the mount's threads.
#[derive(Debug)]
pub struct HubObjects {
    rt: tokio::runtime::Runtime,
    hub: (String, String, Option<PathBuf>),
    remote: Mutex<Option<Remote>>,
    trees: HashMap<ObjectId, (ObjectKind, Vec<u8>)>,
    /// The chunks of each fetched lowest file node, in file order, and
    /// where each chunk is among them (for read-ahead).
    runs: Vec<Vec<Child>>,
    place: HashMap<ObjectId, (u32, u32)>,
    kept: Mutex<Kept>,
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
}

/// Chunks fetched, oldest first, bounded in bytes.
#[derive(Debug, Default)]
struct Kept {
    map: HashMap<ObjectId, Arc<Vec<u8>>>,
    order: VecDeque<ObjectId>,
    bytes: usize,
}

impl Kept {
    fn put(&mut self, id: ObjectId, c: Arc<Vec<u8>>) {
        self.bytes += c.len();
        match self.map.insert(id, c) {
            Some(old) => self.bytes -= old.len(),
            None => self.order.push_back(id),
        }
        while self.bytes > KEPT
            && let Some(old) = self.order.pop_front()
        {
            if let Some(c) = self.map.remove(&old) {
                self.bytes -= c.len();
            }
        }
    }
}

/// Bytes fetched ahead of a missing chunk, in its file.
pub const READ_AHEAD: u64 = 8 << 20;
/// Bytes of fetched chunks kept in memory.
const KEPT: usize = 64 << 20;
/// Tries of one fetch (a reconnect between them).
const TRIES: u32 = 3;

impl HubObjects {
    /// Connects to `hub` and fetches the trees of `roots` the cache lacks.
    pub fn connect(
        hub: (String, String, Option<PathBuf>),
        cache: Arc<Store>,
        roots: &[ObjectId],
    ) -> Result<HubObjects> {
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
            hub,
            remote: Mutex::new(Some(remote)),
            trees,
            runs,
            place,
            kept: Mutex::new(Kept::default()),
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// Tree objects fetched at the start.
    pub fn trees(&self) -> usize {
        self.trees.len()
    }

    /// `id` and the chunks after it in its file, up to [`READ_AHEAD`]
    /// bytes, that are not kept already.
    fn wanted(&self, id: &ObjectId, kept: &Kept) -> Vec<(ObjectId, ObjectKind)> {
        let mut want = vec![(*id, ObjectKind::Chunk)];
        if let Some(&(run, at)) = self.place.get(id) {
            let mut bytes = 0;
            for c in self.runs[run as usize].iter().skip(at as usize + 1) {
                bytes += c.len;
                if bytes > READ_AHEAD {
                    break;
                }
                if !kept.map.contains_key(&c.id) && !want.iter().any(|(i, _)| *i == c.id) {
                    want.push((c.id, ObjectKind::Chunk));
                }
            }
        }
        want
    }

    fn fetch(&self, want: &[(ObjectId, ObjectKind)]) -> Result<HashMap<ObjectId, Vec<u8>>, String> {
        let mut last = String::new();
        for _ in 0..TRIES {
            let mut slot = self.remote.lock().unwrap_or_else(|p| p.into_inner());
            let got = self.rt.block_on(async {
                if slot.is_none() {
                    let (url, token, ca) = &self.hub;
                    *slot = Some(Remote::connect(url, token, ca.as_deref()).await?);
                }
                let r = slot.as_mut().expect("connected above");
                ds_sync::fetch_objects(r, want).await
            });
            match got {
                Ok(c) => return Ok(c),
                Err(e) => {
                    // A dropped connection (a hub restart): a new one next.
                    *slot = None;
                    last = e.to_string();
                }
            }
        }
        Err(last)
    }
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
        let lock = || self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let want = {
            let k = lock();
            if let Some(c) = k.map.get(id) {
                return Ok(Some(c.to_vec()));
            }
            self.wanted(id, &k)
        };
        let got = self
            .fetch(&want)
            .map_err(|why| StoreError::Unavailable { id: *id, why })?;
        let mut k = lock();
        let mut this = None;
        for (i, c) in got {
            self.chunks.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
            if i == *id {
                this = Some(c.clone());
            }
            k.put(i, Arc::new(c));
        }
        Ok(this)
    }
}
