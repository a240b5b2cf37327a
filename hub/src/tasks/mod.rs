//! Tasks: the hub's side of the task protocol (`ds-proto`'s `runner`
//! module, `proto/ds/runner/v1/runner.proto`).
//!
//! The hub stays stateless: every task, its state, lease and output live in
//! the bucket ([`book`]), and every state change is a compare-and-swap of
//! the task's record ([`record`]). What a hub process holds is only its own
//! runners' streams ([`conn`]). Each hub runs a dispatcher (queued tasks to
//! its free runners) and a lease scanner (running tasks whose lease ran out
//! become `lost`, or go back to the front of the queue while they have
//! retries). Several hubs on one bucket do both at once; the swaps make the
//! first one win.
//!
//! Invariants: a task is assigned under lease `n + 1` only by the swap that
//! moves it from `queued` to `running`; a runner's message about a task is
//! applied only if the record still names that runner and lease (fencing);
//! a task's `Done` is sent only after its last log batch was acknowledged,
//! so a task that has ended has all its output stored.

pub mod book;
pub mod conn;
pub mod record;
pub mod service;
pub(crate) mod tunnel;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ds_proto::runner::{Assign, HubMessage, hub_message};
use ds_proto::{RunnerName, TaskId};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::auth::{Auth, Grant, new_token, token_hash};
use crate::error::Result;
use crate::storage::Storage;
use book::Book;
use record::{Record, State, now_ms};

/// A hub error as the gRPC status the task calls answer with (the one
/// mapping, `crate::service::status`).
pub(crate) fn to_status(e: crate::HubError) -> tonic::Status {
    crate::service::status(e)
}

/// Claims a hub runs at once (see [`TaskHub::dispatch`]).
const CLAIMS_AT_ONCE: usize = 16;

/// Task settings of a hub.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// How often runners heartbeat.
    pub heartbeat: Duration,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
        }
    }
}

impl TaskOptions {
    /// A lease of `lease`, heartbeats three times per lease (at most every 10 s).
    pub fn with_lease(lease: Duration) -> TaskOptions {
        TaskOptions {
            lease,
            heartbeat: (lease / 3).clamp(Duration::from_millis(300), Duration::from_secs(10)),
        }
    }
}

/// A runner connected to this hub process.
#[derive(Debug)]
pub(crate) struct Connected {
    pub tx: mpsc::Sender<Result<HubMessage, tonic::Status>>,
    pub labels: HashMap<String, String>,
    pub executors: Vec<String>,
    pub capacity: u32,
    pub running: HashSet<TaskId>,
    /// Tells apart two connections of one runner (the newer wins).
    pub session: u64,
}

/// The task side of one hub process.
#[derive(Debug)]
pub struct TaskHub {
    pub(crate) book: Book,
    pub(crate) auth: Arc<Auth>,
    pub(crate) opts: TaskOptions,
    pub(crate) runners: Mutex<HashMap<RunnerName, Connected>>,
    /// Wakes the dispatcher: a task was queued or a slot freed.
    pub(crate) wake: Notify,
    /// "host:pid", shown in `ds runners`.
    pub(crate) hub_name: String,
    /// Relayed connections waiting for their runner's end.
    pub(crate) tunnels: tunnel::Tunnels,
    /// The URL other hubs reach this one at (set once it listens).
    advertise: std::sync::OnceLock<String>,
}

impl TaskHub {
    pub fn new(storage: Storage, auth: Arc<Auth>, opts: TaskOptions) -> Arc<TaskHub> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "hub".into());
        Arc::new(TaskHub {
            book: Book::new(storage),
            auth,
            opts,
            runners: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            hub_name: format!("{host}:{}", std::process::id()),
            tunnels: Default::default(),
            advertise: Default::default(),
        })
    }

    /// Records the URL other hubs on the bucket reach this one at.
    pub fn set_advertised(&self, url: String) {
        let _ = self.advertise.set(url);
    }

    /// Whether runner `name` is connected to this hub process.
    pub(crate) fn is_connected(&self, name: &str) -> bool {
        RunnerName::new(name).is_ok_and(|n| self.runners().contains_key(&n))
    }

    pub(crate) fn advertised(&self) -> String {
        self.advertise.get().cloned().unwrap_or_default()
    }

    pub(crate) fn runners(&self) -> std::sync::MutexGuard<'_, HashMap<RunnerName, Connected>> {
        self.runners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the dispatcher and the lease scanner; they stop when the
    /// returned handles are aborted (or the runtime ends).
    pub fn start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let d = self.clone();
        let s = self.clone();
        vec![
            tokio::spawn(async move {
                loop {
                    if let Err(e) = d.dispatch().await {
                        eprintln!("ds hub: dispatch: {e}");
                    }
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), d.wake.notified()).await;
                }
            }),
            tokio::spawn(async move {
                let every = (s.opts.lease / 4).clamp(Duration::from_millis(200), s.opts.heartbeat);
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = s.scan_leases().await {
                        eprintln!("ds hub: lease scan: {e}");
                    }
                }
            }),
        ]
    }

    fn lease_ms(&self) -> u64 {
        self.opts.lease.as_millis() as u64
    }

    /// Assigns queued tasks to this process's runners that have room,
    /// [`CLAIMS_AT_ONCE`] at a time (each claim is several bucket round
    /// trips; done one by one, they cap a hub at a few tasks per second on
    /// S3). A runner's slot is reserved before a claim's first await, so
    /// concurrent claims never overfill a runner.
    async fn dispatch(&self) -> Result<()> {
        if !self
            .runners()
            .values()
            .any(|c| (c.running.len() as u32) < c.capacity)
        {
            return Ok(());
        }
        let queued = self.book.queued().await?;
        let loaded: Vec<Result<(String, TaskId, Option<Record>)>> = futures::stream::iter(queued)
            .map(|(marker, id)| async move {
                let rec = self.book.load(&id).await?;
                Ok((marker, id, rec))
            })
            .buffered(CLAIMS_AT_ONCE)
            .collect()
            .await;
        // Tasks on one workspace run in the order they were queued: only
        // the first queued task of each workspace is tried in a pass.
        let mut seen = HashSet::new();
        let mut todo = Vec::new();
        for l in loaded {
            let (marker, id, rec) = l?;
            match rec {
                Some(r) if r.state == State::Queued => {
                    if seen.insert(r.spec.workspace.clone()) {
                        todo.push((marker, id, r));
                    }
                }
                // Gone, or no longer queued: the marker is stale.
                _ => self.book.dequeue(&marker).await?,
            }
        }
        let results: Vec<Result<()>> = futures::stream::iter(todo)
            .map(|(marker, id, rec)| self.claim(marker, id, rec))
            .buffer_unordered(CLAIMS_AT_ONCE)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Tries to assign one queued task: a runner slot, the workspace, a
    /// token, then the swap queued → running that makes it so.
    async fn claim(&self, marker: String, id: TaskId, rec: Record) -> Result<()> {
        let Some(runner) = self.reserve(&rec, &id) else {
            return Ok(()); // no runner fits now: it stays queued
        };
        let r = self.claim_reserved(&marker, &id, &rec, &runner).await;
        if !matches!(r, Ok(true)) {
            self.unreserve(&runner, &id);
        }
        r.map(|_| ())
    }

    /// Ok(true): assigned and sent to `runner`.
    async fn claim_reserved(
        &self,
        marker: &str,
        id: &TaskId,
        rec: &Record,
        runner: &RunnerName,
    ) -> Result<bool> {
        if !self.book.lock_workspace(&rec.spec.workspace, id).await? {
            return Ok(false); // another task runs on this workspace: it waits
        }
        let token = new_token()?;
        let hash = token_hash(&token);
        self.auth
            .register(
                &token,
                &Grant {
                    admin: false,
                    // Its workspace, and the ref named after the task
                    // where a conflicting final snapshot is kept.
                    workspaces: vec![rec.spec.workspace.clone(), id.to_string()],
                    comment: format!("task {id}"),
                    runner: None,
                },
            )
            .await?;
        let until = now_ms() + self.lease_ms();
        let won = self
            .book
            .update(id, |r| {
                if r.state != State::Queued {
                    return false;
                }
                r.state = State::Running;
                r.runner = runner.to_string();
                r.lease += 1;
                r.lease_until_ms = until;
                r.attempts += 1;
                r.cancel_requested = false;
                r.token_hash = hash.clone();
                r.started_ms = now_ms();
                true
            })
            .await?;
        let Some((rec, true)) = won else {
            // Another hub took it first (and holds the workspace for it).
            self.auth.revoke(&hash).await?;
            self.book.dequeue(marker).await?;
            return Ok(false);
        };
        self.book.mark_running(id, true).await?;
        self.book.dequeue(marker).await?;
        let msg = HubMessage {
            msg: Some(hub_message::Msg::Assign(Assign {
                spec: Some((&rec.spec).into()),
                task: id.to_string(),
                lease: rec.lease,
                workspace_token: token,
            })),
        };
        let tx = self.runners().get(runner).map(|c| c.tx.clone());
        // A runner that vanished meanwhile: its lease runs out and the
        // scanner requeues or loses the task.
        if let Some(tx) = tx {
            let _ = tx.send(Ok(msg)).await;
        }
        Ok(true)
    }

    /// Picks a connected runner with room, the labels and the executor
    /// `rec` asks for, the least loaded first, and takes one of its slots
    /// for task `id`.
    fn reserve(&self, rec: &Record, id: &TaskId) -> Option<RunnerName> {
        let mut rs = self.runners();
        let name = rs
            .iter()
            .filter(|(_, c)| {
                (c.running.len() as u32) < c.capacity
                    && rec
                        .spec
                        .labels
                        .iter()
                        .all(|(k, v)| c.labels.get(k) == Some(v))
                    && (rec.spec.executor.is_empty() || c.executors.contains(&rec.spec.executor))
            })
            .min_by_key(|(n, c)| (c.running.len(), (*n).clone()))
            .map(|(n, _)| n.clone())?;
        rs.get_mut(&name)?.running.insert(id.clone());
        Some(name)
    }

    fn unreserve(&self, runner: &RunnerName, id: &TaskId) {
        if let Some(c) = self.runners().get_mut(runner) {
            c.running.remove(id);
        }
    }

    /// Running tasks whose lease ran out become lost (or queued again, at
    /// the front, while they have retries).
    async fn scan_leases(&self) -> Result<()> {
        let now = now_ms();
        for id in self.book.running().await? {
            let Some(rec) = self.book.load(&id).await? else {
                self.book.mark_running(&id, false).await?;
                continue;
            };
            if rec.state.is_final() || rec.state == State::Queued {
                self.release(&rec).await?;
                continue;
            }
            if rec.lease_until_ms > now {
                continue;
            }
            let changed = self
                .book
                .update(&id, |r| {
                    if r.state != State::Running || r.lease_until_ms > now {
                        return false;
                    }
                    let why = format!(
                        "lease {} expired: runner {} stopped answering",
                        r.lease, r.runner
                    );
                    if r.attempts <= r.spec.retries {
                        r.state = State::Queued;
                        r.error = format!("{why}; retrying");
                    } else {
                        r.state = State::Lost;
                        r.error = why;
                        r.ended_ms = now;
                    }
                    true
                })
                .await?;
            if let Some((r, true)) = changed {
                self.release(&r).await?;
                if r.state == State::Queued {
                    self.book.enqueue(&id, true).await?;
                    self.wake.notify_one();
                }
                let mut rs = self.runners();
                if let Ok(n) = RunnerName::new(&r.runner)
                    && let Some(c) = rs.get_mut(&n)
                {
                    c.running.remove(&id);
                }
            }
        }
        Ok(())
    }

    /// Lets go of what a task that is no longer running held: its
    /// workspace, its token, its running marker.
    pub(crate) async fn release(&self, r: &Record) -> Result<()> {
        let id = TaskId::new(&r.id).map_err(|e| crate::HubError::Corrupt(e.to_string()))?;
        self.book.unlock_workspace(&r.spec.workspace, &id).await?;
        if !r.token_hash.is_empty() {
            self.auth.revoke(&r.token_hash).await?;
        }
        self.book.mark_running(&id, false).await
    }
}
