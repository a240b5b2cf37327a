//! Where things live inside a store directory.
//!
//! ```text
//! STORE/config            JSON, written once by `ds init`
//! STORE/lock              flock: held by the one writer (snapshot, gc, reindex)
//! STORE/gc.lock           flock: shared by everyone, exclusive by gc and reindex
//! STORE/packs/ab/<id>.pack
//! STORE/tmp/              packs being written (removed by gc after a crash)
//! STORE/refs/<workspace>  hex snapshot id, replaced atomically
//! STORE/index/            RocksDB: object locations, pack list, stat cache
//! STORE/journal/<pack id> packs appended by a read-write mount, not yet in
//!                         the index (folded in by the next writer)
//! STORE/mounts/<workspace>/  a read-write mount's dirty layer and, while it
//!                         is mounted, its registration (`mountpoint`, `pid`,
//!                         `ctl.sock`); see `vfs/state.rs` and ds-fuse's
//!                         `daemon` module. Only workspace names live here.
//! STORE/logs/mount-<mountpoint>.log  messages of a `--background` mount
//!                         (outside `mounts/`, where a workspace named
//!                         `logs` would collide with them)
//! STORE/remotes.json      hubs saved by `ds remote add` (the CLI's)
//! STORE/datasets/<dataset>.journal  what an interrupted dataset mirror
//!                         already stored (ds-dataset's; removed when the
//!                         mirror commits)
//! ```

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Paths inside one store.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub fn gc_lock(&self) -> PathBuf {
        self.root.join("gc.lock")
    }
    pub fn packs(&self) -> PathBuf {
        self.root.join("packs")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn refs(&self) -> PathBuf {
        self.root.join("refs")
    }
    pub fn index(&self) -> PathBuf {
        self.root.join("index")
    }
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }
    /// Parent of every workspace's dirty layer (`mounts/<workspace>/`).
    pub fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }
    /// A workspace's dirty layer and mount registration. `workspace` must
    /// be a valid workspace name (no `/`, never `.` or `..`).
    pub fn mount_dir(&self, workspace: &str) -> PathBuf {
        self.mounts().join(workspace)
    }
    /// Logs of background processes (mounts).
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn remotes(&self) -> PathBuf {
        self.root.join("remotes.json")
    }
    /// The resume journal of a dataset mirror. `dataset` must be a valid
    /// workspace name.
    pub fn dataset_journal(&self, dataset: &str) -> PathBuf {
        self.root
            .join("datasets")
            .join(format!("{dataset}.journal"))
    }
}

/// fsyncs a directory so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
