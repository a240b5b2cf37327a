//! A task's datasets (`ds run --dataset NAME[@SNAP]:PATH`): each mounted
//! read-only at the snapshot the hub resolved, lazily — its directory and
//! file records are fetched when the task starts, its chunks from the hub
//! as the workload reads them ([`crate::lazy`]; what the cache store holds
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use ds_format::ObjectId;
use ds_format::run::DatasetUse;
use ds_fuse::{Config as MountConfig, MountError, MountOptions, SessionUnmounter, Source};
use ds_proto::mounts::{self, Target};
use ds_proto::runner::TaskSpec;
use ds_store::Store;
use ds_store::vfs::VfsOptions;

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

pub(crate) fn refused(why: String) -> RunnerError {
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
