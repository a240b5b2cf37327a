//! The JSON shapes of tasks and runners, shared by `ds … --json` and the
//! hub's REST API so the two cannot drift apart.

use std::collections::BTreeMap;

use ds_format::ObjectId;
use serde::Serialize;

/// A task, for `ds task show --json`, `ds tasks --json` and `ds run -d --json`
/// (which adds `task`, the id again, as the shape asks).
#[derive(Debug, Serialize)]
pub struct TaskJson {
    /// The same as `id` (what `ds run -d --json` callers read).
    pub task: String,
    pub id: String,
    /// queued, running, succeeded, failed, cancelled or lost.
    pub state: String,
    pub workspace: String,
    pub command: Vec<String>,
    pub executor: Option<String>,
    pub image: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub runner: Option<String>,
    /// Null until the workload exited with a status.
    pub exit_code: Option<i32>,
    /// The signal that killed the workload, if one did.
    pub signal: Option<i32>,
    /// The snapshot the workspace was mounted at, and the final one.
    pub base: Option<ObjectId>,
    pub snapshot: Option<ObjectId>,
    /// The ref the final snapshot went to: the workspace, or the task's own
    /// ref when the workspace moved meanwhile (`conflict`).
    pub pushed_to: Option<String>,
    pub conflict: bool,
    pub error: Option<String>,
    pub attempts: u32,
    pub retries: u32,
    pub lines: u64,
    pub submitted_by: String,
    /// Git repository, ref and the commit checked out (tasks with --repo).
    pub repo: Option<String>,
    pub git_ref: Option<String>,
    pub commit: Option<String>,
    /// The port the hub relays at /tasks/<id>/ (null: none).
    pub port: Option<u32>,
    /// The relay passes /tasks/<id>/… whole (the app knows its base URL).
    pub keep_prefix: bool,
    /// Datasets mounted read-only, each at the snapshot the hub resolved
    /// when the task was submitted.
    pub datasets: Vec<DatasetJson>,
    /// Unix times in milliseconds (null: not yet).
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
}

impl From<&crate::runner::TaskInfo> for TaskJson {
    fn from(t: &crate::runner::TaskInfo) -> TaskJson {
        let s = |v: &str| (!v.is_empty()).then(|| v.to_string());
        let id = |b: &[u8]| ObjectId::from_slice(b);
        let ms = |v: u64| (v != 0).then_some(v);
        let spec = t.spec.clone().unwrap_or_default();
        TaskJson {
            task: t.id.clone(),
            id: t.id.clone(),
            state: t.state.clone(),
            workspace: spec.workspace,
            command: spec.command,
            executor: s(&t.executor),
            image: s(&spec.image),
            labels: spec.labels.into_iter().collect(),
            runner: s(&t.runner),
            exit_code: t.exit_code,
            signal: t.signal,
            base: id(&t.base),
            snapshot: id(&t.snapshot),
            pushed_to: s(&t.pushed_to),
            conflict: t.conflict,
            error: s(&t.error),
            attempts: t.attempts,
            retries: spec.retries,
            lines: t.lines,
            submitted_by: t.submitted_by.clone(),
            repo: s(&spec.repo),
            git_ref: s(&spec.git_ref),
            commit: s(&t.commit),
            port: (spec.port != 0).then_some(spec.port),
            keep_prefix: spec.keep_prefix,
            datasets: spec.datasets.iter().map(DatasetJson::from).collect(),
            submitted_ms: t.submitted_ms,
            started_ms: ms(t.started_ms),
            ended_ms: ms(t.ended_ms),
        }
    }
}

/// A task's dataset mount (`--dataset NAME[@SNAP]:PATH`).
#[derive(Debug, Serialize)]
pub struct DatasetJson {
    pub name: String,
    /// What was asked for after `@` (null: the dataset's head at submit).
    pub at: Option<String>,
    /// The snapshot the task sees.
    pub snapshot: Option<ObjectId>,
    pub path: String,
}

impl From<&crate::runner::DatasetMount> for DatasetJson {
    fn from(d: &crate::runner::DatasetMount) -> DatasetJson {
        DatasetJson {
            name: d.name.clone(),
            at: (!d.at.is_empty()).then(|| d.at.clone()),
            snapshot: ObjectId::from_slice(&d.snapshot),
            path: d.path.clone(),
        }
    }
}

/// A runner, for `ds runners --json`.
#[derive(Debug, Serialize)]
pub struct RunnerJson {
    pub name: String,
    pub online: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub executors: Vec<String>,
    pub running: Vec<String>,
    pub version: String,
    /// The hub process it is connected to (host:pid).
    pub hub: String,
    /// Unix times in milliseconds.
    pub connected_ms: u64,
    pub heartbeat_ms: u64,
}

impl From<&crate::runner::RunnerInfo> for RunnerJson {
    fn from(r: &crate::runner::RunnerInfo) -> RunnerJson {
        RunnerJson {
            name: r.name.clone(),
            online: r.online,
            labels: r.labels.clone().into_iter().collect(),
            capacity: r.capacity,
            executors: r.executors.clone(),
            running: r.running.clone(),
            version: r.version.clone(),
            hub: r.hub.clone(),
            connected_ms: r.connected_ms,
            heartbeat_ms: r.heartbeat_ms,
        }
    }
}
