//! A mount's whole life, as a library: open the VFS, mount it, register a
//! read-write mount and serve its control socket and checkpoints, snapshot
//! it in-process, unmount, save the dirty layer.
//!
//! Why here and not in the `ds` binary: a runner mounts a workspace as a
//! container's home directory inside its own daemon process, snapshots it
//! when the task ends and unmounts it, exactly as `ds mount --rw` does;
//! both use [`Mounted`]. `STORE/mounts/W/` has one owner: the VFS keeps its
//! dirty layer there, and this module its registration (`mountpoint`,
//! `pid`, `ctl.sock`), removed on unmount.
//!
//! Process-wide matters (signals, daemonizing, logs) stay with the caller.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ds_format::ObjectId;
use ds_store::Store;
use ds_store::txn::Target;
use ds_store::vfs::{CommitOptions, Vfs, VfsOptions};
use fuser::{Session, SessionUnmounter};

use crate::control::{self, Committed, Op};
use crate::error::IoContext;
use crate::{DsFs, MountError, MountOptions};

/// What to mount.
#[derive(Debug, Clone)]
pub enum Source {
    /// A snapshot, read-only.
    Snapshot(ObjectId),
    /// A workspace, read-write over its latest snapshot.
    Workspace {
        name: String,
        /// Delete a dirty layer an earlier mount left instead of recovering it.
        discard_dirty: bool,
    },
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub vfs: VfsOptions,
    /// Kernel-side options; `read_only` is set from the source.
    pub fuse: MountOptions,
    /// Kernel read-ahead in KiB (0: the kernel's default).
    pub readahead_kib: u32,
    /// A read-write mount makes its dirty layer durable at least this often.
    pub checkpoint_every: Duration,
}

/// A live mount, until [`Mounted::serve`] returns.
pub struct Mounted {
    vfs: Arc<Mutex<Vfs>>,
    session: Session<DsFs>,
    mountpoint: PathBuf,
    registration: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    /// Dropped to wake the checkpoint thread at once.
    wake: Option<mpsc::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    what: String,
    /// Why the kernel's read-ahead could not be set, if it could not.
    pub readahead_note: Option<String>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .field("what", &self.what)
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

fn lock(v: &Mutex<Vfs>) -> MutexGuard<'_, Vfs> {
    v.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mounted {
    /// Mounts `cfg.source` of `store` (opened to read) on `mountpoint`, an
    /// existing directory that is not a mountpoint yet. Returns once the
    /// kernel has the mount; call [`Mounted::serve`] to answer it.
    pub fn start(store: Arc<Store>, mountpoint: &Path, cfg: Config) -> Result<Mounted, MountError> {
        let mp = fs::canonicalize(mountpoint).at(mountpoint)?;
        if !fs::metadata(&mp).at(&mp)?.is_dir() {
            return Err(MountError::NotADirectory(mp));
        }
        if crate::mount_device(&mp).is_some() {
            return Err(MountError::AlreadyMounted(mp));
        }
        let (vfs, what, ws) = match &cfg.source {
            Source::Workspace {
                name,
                discard_dirty,
            } => (
                Vfs::open_workspace(store.clone(), name, cfg.vfs.clone(), *discard_dirty)?,
                format!("workspace {name} (read-write)"),
                Some(name.clone()),
            ),
            Source::Snapshot(id) => (
                Vfs::open_snapshot(store.clone(), *id, cfg.vfs.clone())?,
                format!("snapshot {} (read-only)", id.short()),
                None,
            ),
        };
        let vfs = Arc::new(Mutex::new(vfs));
        let fuse = MountOptions {
            read_only: ws.is_none(),
            ..cfg.fuse.clone()
        };
        let session = crate::mount(vfs.clone(), &mp, &fuse).map_err(|source| MountError::Fuse {
            path: mp.clone(),
            source,
        })?;
        let readahead_note = (cfg.readahead_kib > 0)
            .then(|| crate::set_readahead(&mp, cfg.readahead_kib).err())
            .flatten()
            .map(|e| e.to_string());
        let mut m = Mounted {
            vfs,
            session,
            mountpoint: mp,
            registration: None,
            stop: Arc::new(AtomicBool::new(false)),
            wake: None,
            threads: Vec::new(),
            what,
            readahead_note,
        };
        if let Some(ws) = ws {
            // On failure `m` drops, which unmounts.
            m.register(&store, &ws, cfg.checkpoint_every)?;
        }
        Ok(m)
    }

    /// The canonical mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// "workspace W (read-write)" or "snapshot S (read-only)".
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Something that unmounts this mount from another thread; `serve`
    /// then returns.
    pub fn unmounter(&mut self) -> SessionUnmounter {
        self.session.unmount_callable()
    }

    /// A handle that snapshots this mount from any thread. It does not keep
    /// the mount alive: once [`Mounted::serve`] has returned, its snapshots
    /// fail with [`MountError::Unmounted`].
    pub fn handle(&self) -> MountHandle {
        MountHandle {
            vfs: Arc::downgrade(&self.vfs),
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Serves kernel requests until the mount is unmounted (by
    /// [`Mounted::unmounter`], `fusermount3 -u` or `umount`), then removes
    /// the registration and saves the dirty layer for the next mount.
    /// Its helper threads are stopped and joined before it returns, so the
    /// workspace can be mounted again at once (they hold the VFS, and with
    /// it the workspace's mount lock).
    pub fn serve(mut self) -> Result<(), MountError> {
        let served = self.session.run();
        self.stop.store(true, Ordering::Relaxed);
        drop(self.wake.take());
        if let Some(dir) = &self.registration {
            // Wakes the control thread, which then sees `stop`.
            let _ = UnixStream::connect(dir.join("ctl.sock"));
            for f in ["ctl.sock", "mountpoint", "pid"] {
                let _ = fs::remove_file(dir.join(f));
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Whatever is dirty stays in the dirty layer for the next mount.
        lock(&self.vfs).checkpoint()?;
        served.map_err(|source| MountError::Fuse {
            path: self.mountpoint.clone(),
            source,
        })
    }

    /// Publishes a read-write mount under STORE/mounts/W and starts its
    /// control socket and its periodic checkpoints.
    fn register(&mut self, store: &Store, ws: &str, every: Duration) -> Result<(), MountError> {
        let dir = store.layout().mount_dir(ws);
        let sock = dir.join("ctl.sock");
        let _ = fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).at(&sock)?;
        fs::write(
            dir.join("mountpoint"),
            self.mountpoint.as_os_str().as_bytes(),
        )
        .at(&dir.join("mountpoint"))?;
        fs::write(dir.join("pid"), std::process::id().to_string()).at(&dir.join("pid"))?;
        self.registration = Some(dir);
        let handle = self.handle();
        let stop = self.stop.clone();
        let ctl = spawn("ds-mount-ctl", move || {
            for conn in listener.incoming().flatten() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = control::serve_one(&conn, |op| match op {
                    Op::Snapshot {
                        message,
                        metadata,
                        runs,
                    } => handle.snapshot(CommitOptions {
                        message,
                        metadata,
                        source: Vec::new(),
                        runs,
                    }),
                });
                if let Err(e) = r {
                    eprintln!("ds mount: control request failed: {e}");
                }
            }
        })?;
        let vfs = self.vfs.clone();
        let every = every.max(Duration::from_millis(100));
        let (wake, woken) = mpsc::channel::<()>();
        let checkpoints = spawn("ds-mount-checkpoint", move || {
            // Sleeps `every`, or until `serve` drops the sender.
            while let Err(mpsc::RecvTimeoutError::Timeout) = woken.recv_timeout(every) {
                let mut v = lock(&vfs);
                if v.has_unsaved()
                    && let Err(e) = v.checkpoint()
                {
                    eprintln!("ds mount: error: checkpoint of the dirty layer: {e}");
                }
            }
        })?;
        self.wake = Some(wake);
        self.threads = vec![ctl, checkpoints];
        Ok(())
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, MountError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| MountError::Io {
            path: PathBuf::from(name),
            source,
        })
}

/// Snapshots a live read-write mount, from any thread of its process.
///
/// It holds the VFS weakly: the VFS holds the workspace's mount lock, and a
/// handle a caller forgot must not keep the workspace locked after unmount.
#[derive(Debug, Clone)]
pub struct MountHandle {
    vfs: Weak<Mutex<Vfs>>,
    mountpoint: PathBuf,
}

impl MountHandle {
    /// Snapshots the mount into its workspace. The writer lock is held only
    /// for this: the mount appends through its own store (no index open,
    /// see `ds_store::journal`), and takes the lock before freezing the
    /// filesystem, so waiting for another writer does not stall it. An
    /// empty `opts.source` records the mountpoint.
    pub fn snapshot(&self, mut opts: CommitOptions) -> Result<Committed, MountError> {
        if opts.source.is_empty() {
            opts.source = self.mountpoint.as_os_str().as_bytes().to_vec();
        }
        let vfs = self
            .vfs
            .upgrade()
            .ok_or_else(|| MountError::Unmounted(self.mountpoint.clone()))?;
        let t = Instant::now();
        let store = lock(&vfs).store().clone();
        let appender = store.append()?;
        // Freeze the filesystem for the (short) snapshot: a consistent cut.
        let r = lock(&vfs).commit(Target::Append(appender), &opts)?;
        Ok(Committed::new(&r, t.elapsed().as_secs_f64()))
    }
}
