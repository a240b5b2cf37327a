//! The ds runner: a machine that runs tasks for a hub.
//!
//! A runner makes only outbound connections (it may sit behind NAT): one
//! long-lived task stream to its hub ([`link`]), over which it says hello,
//! heartbeats, and receives assignments and cancels. Each task runs on a
//! thread of its own ([`task`]): pull the workspace into the runner's
//! cache store, mount it read-write as the workload's home, run the
//! workload ([`exec`]), snapshot the mount, push. Output lines are numbered
//! and kept until the hub acknowledges them ([`ledger`]), so a dropped
//! connection or a restarted hub loses and duplicates nothing.
//!
//! Why the link has a runtime of its own and tasks have threads: a workload
//! that eats every core, or a long pull, must not delay a heartbeat, or the
//! hub would declare the runner dead and give its tasks away.
//!
//! Invariants: a task's `Done` is sent only after all its output is
//! acknowledged; a task the hub says is no longer ours is killed and
//! pushes nothing; the runner's own token never reaches a workload (each
//! task gets a token limited to its workspace, and a clean environment).
//!
//! It builds on `ds-sync` (pull and push) and `ds-fuse` (mounts as a
//! library), never on the hub's server crate; `scripts/test.sh` checks.
#![forbid(unsafe_code)]

pub mod datasets;
pub mod docker;
mod error;
pub mod exec;
pub mod lazy;
pub mod ledger;
pub mod link;
pub mod metrics;
pub mod runs;
pub mod task;
mod tunnel;

use std::collections::HashMap;
use std::path::PathBuf;

use ds_proto::RunnerName;
pub use error::{Result, RunnerError};

/// How to run a runner.
#[derive(Debug, Clone)]
pub struct Config {
    /// The hub's URL (http:// or https://).
    pub hub: String,
    /// A runner token (`ds token --runner NAME`).
    pub token: String,
    /// PEM CA for an https hub.
    pub ca: Option<PathBuf>,
    /// Must be the name the token was made for.
    pub name: RunnerName,
    /// Tasks may ask for runners with given labels.
    pub labels: HashMap<String, String>,
    /// Tasks run at once.
    pub capacity: u32,
    /// Executors offered, first the default.
    pub executors: Vec<String>,
    /// The cache store (`CACHE/store`) and task mounts (`CACHE/tasks/ID/home`).
    pub cache: PathBuf,
    /// How the docker executor runs containers.
    pub docker: docker::DockerOptions,
    /// Where to serve Prometheus `/metrics` (None: nowhere).
    pub metrics: Option<std::net::SocketAddr>,
}

/// Runs the runner until a future made by `signal` resolves (the caller
/// owns the process's signals: e.g. SIGTERM or Ctrl-C); then it takes no
/// new tasks, lets the running ones finish (with their final snapshot and
/// push) and returns once the hub has their results. A second `signal()`,
/// made after the first resolved, makes it return at once.
pub async fn run<F: std::future::Future<Output = ()>>(
    mut cfg: Config,
    signal: impl Fn() -> F,
) -> Result<()> {
    if cfg.capacity == 0 {
        return Err(RunnerError::Config("--capacity must be at least 1".into()));
    }
    if cfg.executors.is_empty() {
        return Err(RunnerError::Config("no executor to offer".into()));
    }
    for e in &cfg.executors {
        match e.as_str() {
            "process" => {}
            "docker" => {
                let engine = docker::probe().await.map_err(RunnerError::Config)?;
                eprintln!("ds runner: docker executor: {engine}");
            }
            other => {
                return Err(RunnerError::Config(format!(
                    "unknown executor {other:?} (process or docker)"
                )));
            }
        }
    }
    std::fs::create_dir_all(&cfg.cache).map_err(|source| RunnerError::Io {
        path: cfg.cache.clone(),
        source,
    })?;
    cfg.cache = std::fs::canonicalize(&cfg.cache).map_err(|source| RunnerError::Io {
        path: cfg.cache.clone(),
        source,
    })?;
    clean_stale(&cfg.cache);
    if let Some(addr) = cfg.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| RunnerError::Config(format!("--metrics-listen {addr}: {e}")))?;
        if let Ok(a) = l.local_addr() {
            eprintln!("ds runner: metrics on http://{a}/metrics");
        }
        tokio::spawn(metrics::serve(l));
    }
    link::run(cfg, signal).await
}

/// Removes what tasks of an earlier runner process left in the cache (it
/// was killed): their mounts, dead since their server died, and their
/// directories. Their tasks are the hub's to declare lost.
fn clean_stale(cache: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(cache.join("tasks")) else {
        return;
    };
    let detach = |p: &std::path::Path| {
        if ds_fuse::mount_device(p).is_some() {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(p)
                .status();
        }
    };
    for e in rd.flatten() {
        let home = e.path().join("home");
        // Datasets first: a container's are under the task's directory (a
        // process's, nested in the home, go with it).
        if let Ok(ds) = std::fs::read_dir(e.path().join("datasets")) {
            for d in ds.flatten() {
                detach(&d.path());
            }
        }
        detach(&home);
        if ds_fuse::mount_device(&home).is_none() {
            eprintln!(
                "ds runner: removing {} (left by an earlier runner)",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
