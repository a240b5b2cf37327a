//! A task's record: the one document (`tasks/<id>.json`) that says what a
//! task is and where it stands. Every change is a compare-and-swap of the
//! whole record ([`crate::tasks::book::Book::update`]), so two hubs (or a
//! hub and its lease scanner) never both win a transition.

use std::collections::BTreeMap;

use ds_proto::runner::{DatasetMount, TaskInfo, TaskSpec};
use serde::{Deserialize, Serialize};

/// Where a task stands. `Queued → Running → Succeeded | Failed | Cancelled
/// | Lost`; a lost task with retries left goes back to `Queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Lost,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Lost => "lost",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, State::Queued | State::Running)
    }
}

/// What was asked for (the wire's `TaskSpec`, as stored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub workspace: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub executor: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub repo: String,
    #[serde(default)]
    pub git_ref: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The port the relay reaches (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_prefix: bool,
    /// Read-only mounts, each resolved to a snapshot at submit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<Dataset>,
}

/// A dataset mount as stored: `snapshot` is the resolved id (hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
    #[serde(default)]
    pub snapshot: String,
    pub path: String,
}

impl From<DatasetMount> for Dataset {
    fn from(d: DatasetMount) -> Dataset {
        Dataset {
            name: d.name,
            at: d.at,
            snapshot: ds_format::ObjectId::from_slice(&d.snapshot)
                .map(|i| i.to_hex())
                .unwrap_or_default(),
            path: d.path,
        }
    }
}

impl From<&Dataset> for DatasetMount {
    fn from(d: &Dataset) -> DatasetMount {
        DatasetMount {
            name: d.name.clone(),
            at: d.at.clone(),
            snapshot: d
                .snapshot
                .parse::<ds_format::ObjectId>()
                .map(|i| i.as_bytes().to_vec())
                .unwrap_or_default(),
            path: d.path.clone(),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl From<TaskSpec> for Spec {
    fn from(s: TaskSpec) -> Spec {
        Spec {
            workspace: s.workspace,
            command: s.command,
            executor: s.executor,
            image: s.image,
            labels: s.labels.into_iter().collect(),
            retries: s.retries,
            repo: s.repo,
            git_ref: s.git_ref,
            env: s.env.into_iter().collect(),
            port: s.port,
            keep_prefix: s.keep_prefix,
            datasets: s.datasets.into_iter().map(Dataset::from).collect(),
        }
    }
}

impl From<&Spec> for TaskSpec {
    fn from(s: &Spec) -> TaskSpec {
        TaskSpec {
            workspace: s.workspace.clone(),
            command: s.command.clone(),
            executor: s.executor.clone(),
            image: s.image.clone(),
            labels: s.labels.clone().into_iter().collect(),
            retries: s.retries,
            repo: s.repo.clone(),
            git_ref: s.git_ref.clone(),
            env: s.env.clone().into_iter().collect(),
            port: s.port,
            keep_prefix: s.keep_prefix,
            datasets: s.datasets.iter().map(DatasetMount::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub state: State,
    pub spec: Spec,
    /// The runner holding (or that last held) the task.
    #[serde(default)]
    pub runner: String,
    /// The current lease (attempt number); 0 before the first assignment.
    #[serde(default)]
    pub lease: u64,
    /// The lease ends at this Unix time (ms) unless a heartbeat renews it.
    #[serde(default)]
    pub lease_until_ms: u64,
    #[serde(default)]
    pub attempts: u32,
    /// Set by `ds task cancel` on a running task; the runner stops it.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Hash of the task's workspace token, revoked when the task ends.
    #[serde(default)]
    pub token_hash: String,
    #[serde(default)]
    pub executor: String,
    /// Hex snapshot ids.
    #[serde(default)]
    pub base: String,
    #[serde(default)]
    pub snapshot: String,
    #[serde(default)]
    pub pushed_to: String,
    #[serde(default)]
    pub conflict: bool,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub lines: u64,
    pub submitted_ms: u64,
    #[serde(default)]
    pub started_ms: u64,
    #[serde(default)]
    pub ended_ms: u64,
    /// The submitting token's comment (who asked).
    #[serde(default)]
    pub submitted_by: String,
    /// The git commit the runner checked out (tasks with a repo).
    #[serde(default)]
    pub commit: String,
}

fn hex_bytes(h: &str) -> Vec<u8> {
    h.parse::<ds_format::ObjectId>()
        .map(|id| id.as_bytes().to_vec())
        .unwrap_or_default()
}

impl Record {
    pub fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.id.clone(),
            state: self.state.as_str().into(),
            spec: Some((&self.spec).into()),
            runner: self.runner.clone(),
            lease: self.lease,
            exit_code: self.exit_code,
            signal: self.signal,
            snapshot: hex_bytes(&self.snapshot),
            pushed_to: self.pushed_to.clone(),
            conflict: self.conflict,
            error: self.error.clone(),
            executor: self.executor.clone(),
            base: hex_bytes(&self.base),
            submitted_ms: self.submitted_ms,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            attempts: self.attempts,
            lines: self.lines,
            submitted_by: self.submitted_by.clone(),
            commit: self.commit.clone(),
        }
    }

    pub fn to_json(&self) -> bytes::Bytes {
        serde_json::to_vec_pretty(self)
            .expect("a record always encodes")
            .into()
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
