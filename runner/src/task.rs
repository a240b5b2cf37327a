//! One task's life on a runner, on a thread of its own:
//!
//! 1. pull the workspace into the runner's cache store with the task's own
//!    token (only what the cache lacks; an empty workspace when the hub
//!    has none yet), and the trees of the task's datasets (their chunks
//!    are read from the hub as the workload reads them);
//! 2. mount it read-write at `CACHE/tasks/<id>/home`, the datasets
//!    read-only ([`crate::datasets`]);
//! 3. run the workload there ([`crate::exec`]), its output streamed;
//! 4. snapshot the live mount (a consistent cut, O(changed)), unmount;
//! 5. push; when the workspace moved on the hub meanwhile, keep the
//!    snapshot under a ref named after the task instead and say so;
//! 6. report `Done` (sent once every output line is acknowledged).
//!
//! A dropped task (its lease went to someone else) is killed and pushes
//! nothing. A cancelled one still gets its final snapshot and push.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ds_format::ObjectId;
use ds_fuse::{Config as MountConfig, MountOptions, Mounted, Source};
use ds_proto::TaskId;
use ds_proto::runner::{Done, Started, TaskSpec};
use ds_store::refs::WorkspaceName;
use ds_store::vfs::{CommitOptions, VfsOptions};
use ds_store::{Access, InitOptions, Store, StoreError};
use ds_sync::{Remote, Side, SyncError};

use crate::Config;
use crate::datasets::{self, Mounts, Planned};
use crate::error::{IoContext, Result, RunnerError};
use crate::exec::{self, Exit};
use crate::lazy::HubObjects;
use crate::ledger::{Control, Ledger, RUNNER};
use crate::runs::{self, Provenance, Runs};

/// What the hub assigned.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub id: TaskId,
    pub lease: u64,
    pub spec: TaskSpec,
    /// Limited to the task's workspace (and its conflict ref), revoked
    /// when the task ends.
    pub token: String,
}

struct Ctx<'a> {
    cfg: &'a Config,
    a: &'a Assignment,
    ledger: &'a Arc<Ledger>,
}

impl Ctx<'_> {
    /// A line of the runner's own on the task's log (and on its stderr).
    fn say(&self, msg: impl AsRef<str>) {
        let m = format!("ds runner: {}", msg.as_ref());
        eprintln!("ds runner: task {}: {}", self.a.id, msg.as_ref());
        self.ledger.line(&self.a.id, RUNNER, m.as_bytes());
    }
}

/// Runs the task to its end and records the outcome in `ledger`.
pub fn run(cfg: Arc<Config>, a: Assignment, ledger: Arc<Ledger>, control: Arc<Control>) {
    let cx = Ctx {
        cfg: &cfg,
        a: &a,
        ledger: &ledger,
    };
    let mut done = Done {
        task: a.id.to_string(),
        lease: a.lease,
        ..Done::default()
    };
    if let Err(e) = steps(&cx, &control, &mut done) {
        cx.say(format!("error: {e}"));
        if done.error.is_empty() {
            done.error = e.to_string();
        }
    }
    if control.dropped() {
        cx.say("the hub gave this task to another runner: stopped, nothing pushed");
        ledger.finish(&a.id, None);
    } else {
        ledger.finish(&a.id, Some(done));
    }
    let dir = task_dir(&cfg.cache, &a.id);
    // Never through a mount that is somehow still there: that would delete
    // the workspace's files.
    if ds_fuse::mount_device(&dir.join("home")).is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunnerError::Task {
            step: "starting the task's runtime",
            why: e.to_string(),
        })
}

fn steps(cx: &Ctx<'_>, control: &Control, done: &mut Done) -> Result<()> {
    let ws = WorkspaceName::new(cx.a.spec.workspace.clone())?;
    let rt = runtime()?;
    let store_dir = cx.cfg.cache.join("store");
    let offers = |e: &str| cx.cfg.executors.iter().any(|x| x == e);
    let executor = if cx.a.spec.executor.is_empty() {
        // A task that names no image cannot run in a container.
        if cx.a.spec.image.is_empty() && offers("process") {
            "process".to_string()
        } else {
            cx.cfg.executors[0].clone()
        }
    } else {
        cx.a.spec.executor.clone()
    };
    let docker = executor == "docker";
    let dir = task_dir(&cx.cfg.cache, &cx.a.id);
    let home = dir.join("home");
    let plans = datasets::plan(&cx.a.spec, &home, &dir, docker)?;
    cx.say(format!("pulling workspace {ws}"));
    let base = rt.block_on(pull(cx, &store_dir, &ws))?;
    match base {
        Some(b) => cx.say(format!("workspace {ws} at {}", b.short())),
        None => cx.say(format!("workspace {ws} is new: starting empty")),
    }
    std::fs::create_dir_all(&home).at(&home)?;
    let store = Arc::new(Store::open(&store_dir, Access::Read, true)?);
    let reader = store.clone();
    let lazy = lazy_datasets(cx, &store_dir, &reader, &plans)?;
    let cfg = mount_config(&ws, &home, docker.then_some(&cx.cfg.docker))?;
    let (vfs, allow_other) = (cfg.vfs.clone(), cfg.fuse.allow_other);
    let mut mounted = Mounted::start(store, &home, cfg)?;
    let handle = mounted.handle();
    let mut unmounter = mounted.unmounter();
    let served = std::thread::Builder::new()
        .name(format!("ds-task-mount-{}", cx.a.id))
        .spawn(move || mounted.serve())
        .at(&home)?;
    cx.ledger.started(
        &cx.a.id,
        Started {
            task: cx.a.id.to_string(),
            lease: cx.a.lease,
            executor: executor.clone(),
            base: base.map(|b| b.as_bytes().to_vec()).unwrap_or_default(),
        },
    );
    let exit = if cx.a.spec.repo.is_empty() {
        Ok(())
    } else {
        checkout(cx, &home).map(|c| done.commit = c)
    };
    // After the checkout, so that git never writes into a dataset.
    let mut data = Mounts::default();
    let exit = exit.and_then(|()| {
        if let Some((data_store, _)) = &lazy {
            data =
                Mounts::start(data_store, &plans, &vfs, allow_other).map_err(|e| e.to_string())?;
        }
        for p in &plans {
            cx.say(format!(
                "dataset {} at {} mounted read-only at {}",
                p.name,
                p.snapshot.short(),
                p.seen_at
            ));
        }
        Ok(())
    });
    if exit.is_ok() {
        cx.say(format!(
            "running {:?} ({executor} executor)",
            cx.a.spec.command
        ));
    }
    let prov = Provenance {
        task: cx.a.id.to_string(),
        runner: cx.cfg.name.to_string(),
        executor: executor.clone(),
        image: docker.then(|| cx.a.spec.image.clone()),
        command: cx.a.spec.command.clone(),
        repo: (!done.commit.is_empty()).then(|| cx.a.spec.repo.clone()),
        commit: (!done.commit.is_empty()).then(|| done.commit.clone()),
        home: if docker {
            crate::docker::HOME_IN_CONTAINER.to_string()
        } else {
            home.to_string_lossy().into_owned()
        },
        datasets: plans.iter().map(Planned::used).collect(),
    };
    let (runs, found) = Runs::new();
    let say = |m: String| cx.say(m);
    // Runs are recorded while the workload runs, each in a snapshot of its
    // own; the recorder ends when the output does.
    let (exit, (last, carried)) = std::thread::scope(|s| {
        let recorder =
            s.spawn(|| runs::record(found, &handle, (&reader, &home), &prov, &runs, base, &say));
        let io = exec::Io {
            ledger: cx.ledger,
            control,
            runs: &runs,
        };
        let exit = exit.and_then(|()| {
            if docker {
                let binds: Vec<String> = plans
                    .iter()
                    .filter_map(|p| {
                        let at = p.bind.as_ref()?;
                        Some(format!("{}:{at}:ro", p.mountpoint.display()))
                    })
                    .collect();
                rt.block_on(crate::docker::run(
                    &cx.a.spec,
                    &cx.a.id,
                    (&home, &binds),
                    io,
                    &cx.cfg.docker,
                    &say,
                ))
            } else {
                exec::run(&cx.a.spec, &cx.a.id, &home, io)
            }
        });
        runs.close();
        (exit, recorder.join().unwrap_or((base, Vec::new())))
    });
    // Before the final snapshot: its mount points go if still empty.
    data.stop(&say);
    if let Some((_, objects)) = &lazy {
        objects.finish_keeping();
        let (chunks, bytes) = objects.fetched();
        cx.say(format!(
            "datasets: {chunks} chunks ({bytes} bytes) were read from the hub, {} kept in the cache",
            objects.kept.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
    match &exit {
        Ok(Exit { code, signal }) => {
            done.exit_code = *code;
            done.signal = *signal;
            match (code, signal) {
                (Some(c), _) => cx.say(format!("the workload exited with status {c}")),
                (_, Some(s)) => cx.say(format!("the workload was killed by signal {s}")),
                _ => {}
            }
        }
        Err(e) => {
            cx.say(e);
            done.error = e.clone();
        }
    }
    let snap = if control.dropped() {
        None
    } else {
        let mut metadata = BTreeMap::new();
        metadata.insert("task".into(), cx.a.id.to_string());
        metadata.insert("runner".into(), cx.cfg.name.to_string());
        if let Ok(Exit { code: Some(c), .. }) = exit {
            metadata.insert("exit_code".into(), c.to_string());
        }
        if let Some(d) = datasets::metadata(&plans) {
            metadata.insert("datasets".into(), d);
        }
        if !done.commit.is_empty() {
            metadata.insert("git_repo".into(), cx.a.spec.repo.clone());
            metadata.insert("git_commit".into(), done.commit.clone());
        }
        let mut files = carried;
        files.extend(runs::pending_files(
            &reader, &home, last, &prov, &runs, &say,
        ));
        match handle.snapshot(CommitOptions {
            message: format!("task {}: {}", cx.a.id, cx.a.spec.command.join(" ")),
            metadata,
            source: Vec::new(),
            runs: files,
        }) {
            Ok(c) => Some(c.id),
            Err(e) => {
                cx.say(format!("error: the final snapshot failed: {e}"));
                done.error = format!("final snapshot: {e}");
                None
            }
        }
    };
    unmount(&mut unmounter, &home);
    match served.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => cx.say(format!("warning: the mount ended with: {e}")),
        Err(_) => cx.say("warning: the mount's thread panicked"),
    }
    let Some(snap) = snap else {
        return Ok(());
    };
    done.snapshot = snap.as_bytes().to_vec();
    let (to, conflict) = rt.block_on(push(cx, &store_dir, &ws, snap))?;
    done.pushed_to = to;
    done.conflict = conflict;
    Ok(())
}

/// Checks out `spec.repo` at `spec.git_ref` into the workspace (its
/// `.git` kept there, so the next task fetches only what is new); files
/// the repository does not track are left alone. Returns the commit.
fn checkout(cx: &Ctx<'_>, home: &Path) -> Result<String, String> {
    let spec = &cx.a.spec;
    cx.say(format!("checking out {} at {}", spec.repo, spec.git_ref));
    let git = |args: &[&str]| -> Result<String, String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(home)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("HOME", home)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        for l in out.stderr.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            cx.ledger.line(&cx.a.id, RUNNER, l);
        }
        if !out.status.success() {
            return Err(format!("git {} failed ({})", args.join(" "), out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if !home.join(".git").exists() {
        git(&["init", "-q"])?;
    }
    // A commit id or a ref by name; failing that, everything, then the ref.
    if git(&["fetch", "-q", &spec.repo, &spec.git_ref]).is_ok() {
        git(&["checkout", "-q", "--force", "--detach", "FETCH_HEAD"])?;
    } else {
        git(&[
            "fetch",
            "-q",
            &spec.repo,
            "+refs/heads/*:refs/remotes/task/*",
            "+refs/tags/*:refs/tags/*",
        ])?;
        git(&["checkout", "-q", "--force", "--detach", &spec.git_ref])?;
    }
    let commit = git(&["rev-parse", "HEAD"])?;
    cx.say(format!("checked out commit {commit}"));
    Ok(commit)
}

/// A container's user is often not the runner's: the mount then lets
/// other users in, and shows the files as owned by the container's user
/// (`--docker-user`), so it can write its home.
fn mount_config(
    ws: &WorkspaceName,
    home: &Path,
    docker: Option<&crate::docker::DockerOptions>,
) -> Result<MountConfig> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(home).at(home)?;
    let (mut uid, mut gid) = (meta.uid(), meta.gid());
    let mut allow_other = false;
    let mut force_owner = None;
    if let Some(d) = docker {
        let mut ids = d.user.splitn(2, ':').map(|p| p.parse::<u32>());
        if let Some(Ok(u)) = ids.next() {
            uid = u;
            gid = match ids.next() {
                Some(Ok(g)) => g,
                _ => u,
            };
        }
        allow_other = !d.user.is_empty() || meta.uid() != 0;
        // The container's user must be able to write its home, whoever
        // the snapshot says owns the files.
        if !d.user.is_empty() {
            force_owner = Some((uid, gid));
        }
    }
    Ok(MountConfig {
        source: Source::Workspace {
            name: ws.to_string(),
            // The cache is only a cache: a dirty layer a killed runner left
            // belongs to a task that is lost, not to this one.
            discard_dirty: true,
        },
        vfs: VfsOptions {
            uid,
            gid,
            force_owner,
            ..VfsOptions::default()
        },
        fuse: MountOptions {
            read_only: false,
            allow_other,
            threads: 4,
            direct_io: false,
            fsname: format!("ds:{ws}"),
        },
        readahead_kib: 0,
        checkpoint_every: std::time::Duration::from_secs(5),
    })
}

pub(crate) fn unmount(u: &mut ds_fuse::SessionUnmounter, home: &Path) {
    if u.unmount().is_err() {
        // Something still holds it (a workload's orphan): detach it lazily
        // so the mount thread can end.
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(home)
            .status();
    }
}

fn open_cache(dir: &Path) -> Result<Arc<Store>> {
    let st = if dir.join("config").exists() {
        Store::open(dir, Access::Write, true)?
    } else {
        Store::init(dir, &InitOptions::default())?
    };
    Ok(Arc::new(st))
}

async fn remote(cx: &Ctx<'_>) -> Result<Remote> {
    Ok(Remote::connect(&cx.cfg.hub, &cx.a.token, cx.cfg.ca.as_deref()).await?)
}

/// Brings the cache's copy of `ws` to the hub's head (the hub wins: the
/// cache holds no work of its own). None: the hub has no such workspace.
async fn pull(cx: &Ctx<'_>, dir: &Path, ws: &WorkspaceName) -> Result<Option<ObjectId>> {
    let store = open_cache(dir)?;
    let mut r = remote(cx).await?;
    match ds_sync::pull(store.clone(), &mut r, ws, true, &|_| {}).await {
        Ok(rep) => Ok(Some(rep.snapshot)),
        Err(SyncError::NoWorkspace {
            side: Side::Hub, ..
        }) => {
            if let Some(old) = store.refs().get(ws)? {
                store.refs().delete(ws, old)?;
            }
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The store the task's datasets are mounted from: the cache, lazy
/// ([`HubObjects`]) for what it lacks; and that source. None: no datasets.
fn lazy_datasets(
    cx: &Ctx<'_>,
    dir: &Path,
    cache: &Arc<Store>,
    plans: &[Planned],
) -> Result<Option<(Arc<Store>, Arc<HubObjects>)>> {
    if plans.is_empty() {
        return Ok(None);
    }
    let roots: Vec<ObjectId> = plans.iter().map(|p| p.snapshot).collect();
    let hub = (cx.cfg.hub.clone(), cx.a.token.clone(), cx.cfg.ca.clone());
    let objects = Arc::new(HubObjects::connect(hub, cache.clone(), &roots)?);
    for p in plans {
        cx.say(format!(
            "dataset {} at {}: its files are read from the hub as the workload reads them",
            p.name,
            p.snapshot.short()
        ));
    }
    cx.say(format!(
        "datasets: {} directory and file records fetched",
        objects.trees()
    ));
    let store = Arc::new(Store::open(dir, Access::Read, true)?);
    store.set_lazy(objects.clone());
    // What is fetched stays in the cache for the next task (best effort).
    objects.keep_in(cache.clone())?;
    Ok(Some((store, objects)))
}

/// Pushes `snap` (the cache's head of `ws`) to the hub. Returns the ref it
/// went to and whether that is the task's own ref, because the workspace
/// moved on the hub while the task ran.
async fn push(
    cx: &Ctx<'_>,
    dir: &Path,
    ws: &WorkspaceName,
    snap: ObjectId,
) -> Result<(String, bool)> {
    let store = open_cache(dir)?;
    let mut r = remote(cx).await?;
    cx.say(format!("pushing snapshot {} to {ws}", snap.short()));
    match ds_sync::push(store.clone(), &mut r, ws, false, &|_| {}).await {
        Ok(_) => Ok((ws.to_string(), false)),
        Err(SyncError::Diverged { .. }) => {
            let own = WorkspaceName::new(cx.a.id.to_string())?;
            let prev = store.refs().get(&own)?;
            match store.refs().swap(&own, prev, snap) {
                Ok(()) | Err(StoreError::RefConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            ds_sync::push(store, &mut r, &own, true, &|_| {}).await?;
            cx.say(format!(
                "workspace {ws} moved on the hub while the task ran: the snapshot is kept as \
                 workspace {own} (pull it, merge, push)"
            ));
            Ok((own.to_string(), true))
        }
        Err(e) => Err(e.into()),
    }
}

/// Where a task's mount lives.
pub fn task_dir(cache: &Path, id: &TaskId) -> PathBuf {
    cache.join("tasks").join(id.as_str())
}
