//! One runner's stream: its hello, heartbeats and task messages, each
//! checked against the task's record before it is applied (fencing).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ds_proto::runner::{
    CancelTask, Done, DoneAck, HeartbeatAck, Held, HubHello, HubMessage, LogAck, LogBatch,
    RunnerInfo, RunnerMessage, Started, hub_message, runner_message,
};
use ds_proto::{MAX_LOG_BATCH_BYTES, MAX_LOG_BATCH_LINES, RunnerName, TASK_PROTOCOL, TaskId};
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::record::{State, now_ms};
use super::{Connected, TaskHub};
use crate::error::Result;

static SESSIONS: AtomicU64 = AtomicU64::new(1);
/// How long a runner has to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

type Tx = mpsc::Sender<Result<HubMessage, Status>>;

fn msg(m: hub_message::Msg) -> Result<HubMessage, Status> {
    Ok(HubMessage { msg: Some(m) })
}

fn task_id(s: &str) -> Result<TaskId, Status> {
    TaskId::new(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl TaskHub {
    /// Serves a runner's stream: `name` is the runner its token names.
    /// Returns the outbound half; the inbound half is read by a task of its
    /// own until the runner hangs up.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        name: RunnerName,
        mut inbound: Streaming<RunnerMessage>,
    ) -> Result<mpsc::Receiver<Result<HubMessage, Status>>, Status> {
        let first = tokio::time::timeout(HELLO_WITHIN, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))?;
        let hello = match first {
            Some(Ok(RunnerMessage {
                msg: Some(runner_message::Msg::Hello(h)),
            })) => h,
            Some(Err(s)) => return Err(s),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
        };
        if hello.protocol != TASK_PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "this hub speaks task protocol {TASK_PROTOCOL}, the runner {}",
                hello.protocol
            )));
        }
        if hello.name != name.as_str() {
            return Err(Status::permission_denied(format!(
                "this token belongs to runner \"{name}\", not {:?}",
                hello.name
            )));
        }
        if hello.capacity == 0 || hello.capacity > 1024 {
            return Err(Status::invalid_argument("capacity must be 1..=1024"));
        }
        let (keep, drop) = self
            .reconcile(&name, &hello.held)
            .await
            .map_err(super::to_status)?;
        let (tx, rx) = mpsc::channel(64);
        let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let connected_ms = now_ms();
        {
            let mut rs = self.runners();
            // A newer connection of the same runner replaces the old one
            // (whose sender is dropped, ending its stream).
            rs.insert(
                name.clone(),
                Connected {
                    tx: tx.clone(),
                    labels: hello.labels.clone(),
                    executors: hello.executors.clone(),
                    capacity: hello.capacity,
                    running: keep.iter().cloned().collect(),
                    session,
                },
            );
        }
        let _ = tx
            .send(msg(hub_message::Msg::Hello(HubHello {
                protocol: TASK_PROTOCOL,
                hub_version: env!("CARGO_PKG_VERSION").into(),
                lease_ms: self.opts.lease.as_millis().clamp(1, u32::MAX as u128) as u32,
                heartbeat_ms: self.opts.heartbeat.as_millis().clamp(1, u32::MAX as u128) as u32,
                keep: keep.iter().map(|t| t.to_string()).collect(),
                drop: drop.iter().map(|t| t.to_string()).collect(),
            })))
            .await;
        let info = RunnerInfo {
            name: name.to_string(),
            labels: hello.labels.clone(),
            capacity: hello.capacity,
            executors: hello.executors.clone(),
            connected_ms,
            heartbeat_ms: connected_ms,
            running: keep.iter().map(|t| t.to_string()).collect(),
            version: hello.version.clone(),
            hub: self.hub_name.clone(),
            online: true,
            hub_url: self.advertised(),
        };
        if let Err(e) = self.book.put_runner(&info).await {
            eprintln!("ds hub: recording runner {name}: {e}");
        }
        self.wake.notify_one();
        let hub = self.clone();
        tokio::spawn(async move {
            let mut conn = Conn {
                hub: hub.clone(),
                name: name.clone(),
                tx,
                info,
                recorded_ms: connected_ms,
            };
            loop {
                let next = inbound.next().await;
                let m = match next {
                    Some(Ok(RunnerMessage { msg: Some(m) })) => m,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break,
                };
                if let Err(e) = conn.handle(m).await {
                    eprintln!("ds hub: runner {name}: {}", e.message());
                    let _ = conn.tx.send(Err(e)).await;
                    break;
                }
            }
            // Its tasks keep their leases until they run out: the runner
            // may come back in time.
            let mut rs = hub.runners();
            if rs.get(&name).is_some_and(|c| c.session == session) {
                rs.remove(&name);
            }
        });
        Ok(rx)
    }

    /// Of the tasks a reconnecting runner holds, those still its own (their
    /// leases renewed) and those it must drop.
    async fn reconcile(
        &self,
        name: &RunnerName,
        held: &[Held],
    ) -> Result<(Vec<TaskId>, Vec<TaskId>)> {
        let (mut keep, mut drop) = (Vec::new(), Vec::new());
        for h in held {
            let Ok(id) = TaskId::new(&h.task) else {
                continue;
            };
            if self.renew(name, &id, h.lease).await?.is_some() {
                keep.push(id);
            } else {
                drop.push(id);
            }
        }
        Ok((keep, drop))
    }

    /// Renews `name`'s lease `lease` on task `id`, returning the renewed
    /// record; `None` if that lease is not the task's current one.
    async fn renew(
        &self,
        name: &RunnerName,
        id: &TaskId,
        lease: u64,
    ) -> Result<Option<super::record::Record>> {
        let until = now_ms() + self.lease_ms();
        let r = self
            .book
            .update(id, |r| {
                if !owns(r, name, lease) {
                    return false;
                }
                r.lease_until_ms = until;
                true
            })
            .await?;
        Ok(match r {
            Some((rec, true)) => Some(rec),
            _ => None,
        })
    }
}

fn owns(r: &super::record::Record, name: &RunnerName, lease: u64) -> bool {
    r.state == State::Running && r.runner == name.as_str() && r.lease == lease
}

struct Conn {
    hub: Arc<TaskHub>,
    name: RunnerName,
    tx: Tx,
    info: RunnerInfo,
    /// When `info` was last written to the bucket.
    recorded_ms: u64,
}

impl Conn {
    async fn handle(&mut self, m: runner_message::Msg) -> Result<(), Status> {
        use runner_message::Msg;
        match m {
            Msg::Hello(_) => Err(Status::invalid_argument("a second hello")),
            Msg::Heartbeat(h) => {
                crate::metrics::METRICS.inc("ds_runner_heartbeats_total", &[]);
                self.heartbeat(h.running, h.draining).await
            }
            Msg::Accepted(_) => Ok(()),
            Msg::Started(s) => self.started(s).await,
            Msg::Logs(b) => self.logs(b).await,
            Msg::Done(d) => self.done(d).await,
        }
    }

    async fn heartbeat(&mut self, running: Vec<Held>, draining: bool) -> Result<(), Status> {
        let mut drop = Vec::new();
        let mut cancel = Vec::new();
        let mut kept = HashSet::new();
        for h in &running {
            let id = task_id(&h.task)?;
            let renewed = self
                .hub
                .renew(&self.name, &id, h.lease)
                .await
                .map_err(super::to_status)?;
            if let Some(r) = renewed {
                if r.cancel_requested {
                    cancel.push(id.to_string());
                }
                kept.insert(id);
            } else {
                drop.push(id.to_string());
            }
        }
        {
            let mut rs = self.hub.runners();
            if let Some(c) = rs.get_mut(&self.name) {
                if draining {
                    c.capacity = 0;
                }
                // Tasks assigned but not yet in the runner's list stay.
                c.running
                    .retain(|t| kept.contains(t) || !drop.contains(&t.to_string()));
            }
        }
        // Presence is written when what it says changes, and otherwise
        // often enough for `online` (a heartbeat within the lease): not on
        // every heartbeat of every runner.
        let now = now_ms();
        let mut running: Vec<String> = kept.iter().map(|t| t.to_string()).collect();
        running.sort();
        self.info.heartbeat_ms = now;
        if running != self.info.running
            || now.saturating_sub(self.recorded_ms) >= self.hub.lease_ms() / 2
        {
            self.info.running = running;
            self.recorded_ms = now;
            if let Err(e) = self.hub.book.put_runner(&self.info).await {
                eprintln!("ds hub: recording runner {}: {e}", self.name);
            }
        }
        for task in cancel {
            let _ = self
                .tx
                .send(msg(hub_message::Msg::Cancel(CancelTask {
                    task,
                    grace_seconds: 10,
                })))
                .await;
        }
        let _ = self
            .tx
            .send(msg(hub_message::Msg::HeartbeatAck(HeartbeatAck { drop })))
            .await;
        Ok(())
    }

    async fn started(&mut self, s: Started) -> Result<(), Status> {
        let id = task_id(&s.task)?;
        let base = ds_format::ObjectId::from_slice(&s.base)
            .map(|b| b.to_hex())
            .unwrap_or_default();
        let name = self.name.clone();
        self.hub
            .book
            .update(&id, |r| {
                if !owns(r, &name, s.lease) {
                    return false;
                }
                r.executor = s.executor.clone();
                r.base = base.clone();
                true
            })
            .await
            .map_err(super::to_status)?;
        Ok(())
    }

    async fn logs(&mut self, b: LogBatch) -> Result<(), Status> {
        let id = task_id(&b.task)?;
        let bytes: usize = b.lines.iter().map(|l| l.text.len()).sum();
        if b.lines.len() > MAX_LOG_BATCH_LINES || bytes > MAX_LOG_BATCH_BYTES {
            return Err(Status::invalid_argument(format!(
                "a log batch of {} lines, {bytes} bytes; the limits are {MAX_LOG_BATCH_LINES} and {MAX_LOG_BATCH_BYTES}",
                b.lines.len()
            )));
        }
        let r = self.hub.book.load(&id).await.map_err(super::to_status)?;
        if !r.as_ref().is_some_and(|r| owns(r, &self.name, b.lease)) {
            // A late write from a lease that is gone: refused, not an error
            // of the stream (the runner learns from its next heartbeat).
            return Ok(());
        }
        let next = b.first + b.lines.len() as u64;
        self.hub
            .book
            .put_logs(&id, &b)
            .await
            .map_err(super::to_status)?;
        let _ = self
            .tx
            .send(msg(hub_message::Msg::LogAck(LogAck {
                task: id.to_string(),
                next_line: next,
            })))
            .await;
        Ok(())
    }

    async fn done(&mut self, d: Done) -> Result<(), Status> {
        let id = task_id(&d.task)?;
        let name = self.name.clone();
        let snapshot = ds_format::ObjectId::from_slice(&d.snapshot)
            .map(|b| b.to_hex())
            .unwrap_or_default();
        let changed = self
            .hub
            .book
            .update(&id, |r| {
                if !owns(r, &name, d.lease) {
                    return false;
                }
                r.state = if r.cancel_requested {
                    State::Cancelled
                } else if d.exit_code == Some(0) && d.error.is_empty() && !d.conflict {
                    State::Succeeded
                } else {
                    State::Failed
                };
                r.exit_code = d.exit_code;
                r.signal = d.signal;
                r.snapshot = snapshot.clone();
                r.pushed_to = d.pushed_to.clone();
                r.conflict = d.conflict;
                r.error = d.error.clone();
                r.lines = d.lines;
                r.commit = d.commit.clone();
                r.ended_ms = now_ms();
                true
            })
            .await
            .map_err(super::to_status)?;
        if let Some((r, true)) = changed {
            crate::metrics::METRICS.inc("ds_tasks_ended_total", &[("state", r.state.as_str())]);
            self.hub.release(&r).await.map_err(super::to_status)?;
        }
        if let Some(c) = self.hub.runners().get_mut(&self.name) {
            c.running.remove(&id);
        }
        self.hub.wake.notify_one();
        let _ = self
            .tx
            .send(msg(hub_message::Msg::DoneAck(DoneAck {
                task: id.to_string(),
            })))
            .await;
        Ok(())
    }
}
