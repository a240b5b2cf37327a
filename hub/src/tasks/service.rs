//! The task calls of the gRPC service: the runners' `Attach` stream and
//! the clients' submit, list, show, logs, cancel and runners.

use std::sync::Arc;
use std::time::Duration;

use ds_proto::runner::DatasetMount;
use ds_proto::runner::tasks_server::Tasks;
use ds_proto::runner::{
    CancelRequest, GetTaskRequest, HubMessage, ListRunnersReply, ListRunnersRequest,
    ListTasksReply, ListTasksRequest, LogsReply, LogsRequest, RunnerMessage, SubmitRequest,
    TaskInfo, TunnelFrame,
};
use ds_proto::{RunnerName, TaskId, mounts};
use ds_store::refs::validate_workspace;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::TaskHub;
use super::record::{Record, Spec, State, now_ms};
use crate::auth::Grant;

use super::to_status;

/// How often a follower looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Most commands, arguments and environment entries in a task.
const MAX_ARGS: usize = 4096;

/// The gRPC face of a [`TaskHub`].
#[derive(Debug, Clone)]
pub struct TasksService {
    hub: Arc<TaskHub>,
    /// Reads workspaces' histories (a dataset's `@SNAP` at submit).
    sync: crate::service::SyncService,
}

impl TasksService {
    pub fn new(hub: Arc<TaskHub>, sync: crate::service::SyncService) -> TasksService {
        TasksService { hub, sync }
    }

    async fn user<T>(&self, req: &Request<T>) -> Result<Grant, Status> {
        let g = self.hub.auth.check(req).await?;
        if g.runner.is_some() {
            return Err(Status::permission_denied(
                "a runner token may only connect as its runner",
            ));
        }
        Ok(g)
    }

    /// The task, if `g` may see it (a task outside the token's workspaces
    /// is answered as not found: its existence is not the caller's to know).
    async fn visible(&self, g: &Grant, id: &str) -> Result<Record, Status> {
        let id = TaskId::new(id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        match self.hub.book.load(&id).await.map_err(to_status)? {
            Some(r) if g.may_use(&r.spec.workspace) => Ok(r),
            _ => Err(Status::not_found(format!("no task {id}"))),
        }
    }
}

fn check_spec(s: &Spec) -> Result<(), Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    validate_workspace(&s.workspace).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if s.command.is_empty() || s.command[0].is_empty() {
        return bad("no command to run".into());
    }
    if s.command.len() + s.env.len() > MAX_ARGS {
        return bad(format!("more than {MAX_ARGS} arguments and variables"));
    }
    if s.command
        .iter()
        .chain(s.env.values())
        .any(|a| a.contains('\0'))
    {
        return bad("a NUL byte in the command or the environment".into());
    }
    if s.env
        .keys()
        .any(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return bad("an environment variable name is empty or holds '=' or NUL".into());
    }
    if !matches!(s.executor.as_str(), "" | "process" | "docker") {
        return bad(format!(
            "unknown executor {:?} (process or docker)",
            s.executor
        ));
    }
    if s.executor == "docker" && s.image.is_empty() {
        return bad("the docker executor needs an image (--image)".into());
    }
    if s.retries > 100 {
        return bad("at most 100 retries".into());
    }
    if s.repo.is_empty() != s.git_ref.is_empty() {
        return bad("--repo and --ref go together".into());
    }
    if s.port > u32::from(u16::MAX) {
        return bad(format!("port {} is not a TCP port (1..=65535)", s.port));
    }
    if s.keep_prefix && s.port == 0 {
        return bad("--keep-prefix needs --port".into());
    }
    let mounts: Vec<DatasetMount> = s.datasets.iter().map(DatasetMount::from).collect();
    let targets = mounts::check_all(&mounts).map_err(|e| Status::invalid_argument(e.0))?;
    for d in &s.datasets {
        validate_workspace(&d.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    if let Some(t) = targets
        .iter()
        .find(|t| matches!(t, mounts::Target::Container(_)))
        && (s.executor == "process" || s.image.is_empty())
    {
        return bad(format!(
            "a dataset at {:?} is a place in a container: run it with --executor docker \
             --image IMG, or give a path relative to the home directory",
            t.spec_path()
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl Tasks for TasksService {
    type AttachStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<RunnerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let g = self.hub.auth.check(&req).await?;
        let Some(name) = g.runner.as_deref() else {
            return Err(Status::permission_denied(
                "only a runner token may connect as a runner (an admin makes one with \
                 `ds token --runner NAME`)",
            ));
        };
        let name = RunnerName::new(name).map_err(|e| Status::internal(e.to_string()))?;
        let rx = self.hub.connect(name, req.into_inner()).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type TunnelStream = ReceiverStream<Result<TunnelFrame, Status>>;

    async fn tunnel(
        &self,
        req: Request<Streaming<TunnelFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        let g = self.hub.auth.check(&req).await?;
        let Some(name) = g.runner.as_deref() else {
            return Err(Status::permission_denied(
                "only a runner token may open a tunnel",
            ));
        };
        let name = RunnerName::new(name).map_err(|e| Status::internal(e.to_string()))?;
        let rx = self.hub.tunnels.accept(&name, req.into_inner()).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<TaskInfo>, Status> {
        let g = self.user(&req).await?;
        let mut spec: Spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("no task spec"))?
            .into();
        check_spec(&spec)?;
        g.require(&spec.workspace)?;
        // Each dataset at the version it has now (or the one named): every
        // attempt of the task sees that one.
        for d in &mut spec.datasets {
            g.require(&d.name)?;
            d.snapshot = self.sync.resolve_in(&d.name, &d.at).await?.to_hex();
        }
        let now = now_ms();
        let id = TaskId::generate(now, rand32());
        let rec = Record {
            id: id.to_string(),
            state: State::Queued,
            spec,
            runner: String::new(),
            lease: 0,
            lease_until_ms: 0,
            attempts: 0,
            cancel_requested: false,
            token_hash: String::new(),
            executor: String::new(),
            base: String::new(),
            snapshot: String::new(),
            pushed_to: String::new(),
            conflict: false,
            exit_code: None,
            signal: None,
            error: String::new(),
            lines: 0,
            submitted_ms: now,
            started_ms: 0,
            ended_ms: 0,
            submitted_by: g.comment.clone(),
            commit: String::new(),
        };
        self.hub.book.create(&rec).await.map_err(to_status)?;
        self.hub.book.enqueue(&id, false).await.map_err(to_status)?;
        crate::metrics::METRICS.inc("ds_tasks_submitted_total", &[]);
        self.hub.wake.notify_one();
        Ok(Response::new(rec.info()))
    }

    async fn get_task(&self, req: Request<GetTaskRequest>) -> Result<Response<TaskInfo>, Status> {
        let g = self.user(&req).await?;
        let r = self.visible(&g, &req.get_ref().task).await?;
        Ok(Response::new(r.info()))
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksReply>, Status> {
        let g = self.user(&req).await?;
        let r = req.get_ref();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let mut tasks = Vec::new();
        for id in self
            .hub
            .book
            .task_ids()
            .await
            .map_err(to_status)?
            .iter()
            .rev()
        {
            if tasks.len() >= limit {
                break;
            }
            let Some(t) = self.hub.book.load(id).await.map_err(to_status)? else {
                continue;
            };
            if g.may_use(&t.spec.workspace)
                && (r.workspace.is_empty() || r.workspace == t.spec.workspace)
            {
                tasks.push(t.info());
            }
        }
        Ok(Response::new(ListTasksReply { tasks }))
    }

    type LogsStream = ReceiverStream<Result<LogsReply, Status>>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let g = self.user(&req).await?;
        let LogsRequest { task, from, follow } = req.into_inner();
        let rec = self.visible(&g, &task).await?;
        let id = TaskId::new(&rec.id).map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(8);
        let book = self.hub.book.clone();
        tokio::spawn(async move {
            let mut next = from;
            loop {
                // Read the state before the output: a task that had ended
                // by then has all its output stored.
                let state = match book.load(&id).await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        break;
                    }
                };
                match send_from(&book, &id, &mut next, &tx).await {
                    Ok(true) => {}
                    Ok(false) => break, // the client went away
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        break;
                    }
                }
                if !follow || state.state.is_final() {
                    let ended = state.state.is_final().then(|| state.info());
                    let _ = tx
                        .send(Ok(LogsReply {
                            first: next,
                            lines: Vec::new(),
                            ended,
                        }))
                        .await;
                    break;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Result<Response<TaskInfo>, Status> {
        let g = self.user(&req).await?;
        let rec = self.visible(&g, &req.get_ref().task).await?;
        let id = TaskId::new(&rec.id).map_err(|e| Status::internal(e.to_string()))?;
        let now = now_ms();
        let changed = self
            .hub
            .book
            .update(&id, |r| match r.state {
                State::Queued => {
                    r.state = State::Cancelled;
                    r.ended_ms = now;
                    true
                }
                State::Running if !r.cancel_requested => {
                    r.cancel_requested = true;
                    true
                }
                _ => false,
            })
            .await
            .map_err(to_status)?;
        let Some((r, _)) = changed else {
            return Err(Status::not_found(format!("no task {id}")));
        };
        if r.state == State::Cancelled {
            for p in ["0", "1"] {
                let _ = self.hub.book.dequeue(&format!("{p}-{id}")).await;
            }
        } else if r.state == State::Running {
            // Its runner hears it now if it is connected here, else from its
            // hub at its next heartbeat.
            let tx = RunnerName::new(&r.runner)
                .ok()
                .and_then(|n| self.hub.runners().get(&n).map(|c| c.tx.clone()));
            if let Some(tx) = tx {
                let m = ds_proto::runner::hub_message::Msg::Cancel(ds_proto::runner::CancelTask {
                    task: id.to_string(),
                    grace_seconds: 10,
                });
                let _ = tx.send(Ok(HubMessage { msg: Some(m) })).await;
            }
        }
        Ok(Response::new(r.info()))
    }

    async fn list_runners(
        &self,
        req: Request<ListRunnersRequest>,
    ) -> Result<Response<ListRunnersReply>, Status> {
        self.user(&req).await?;
        let mut runners = self.hub.book.runners().await.map_err(to_status)?;
        let stale = now_ms().saturating_sub(self.hub.lease_ms());
        for r in &mut runners {
            r.online = r.heartbeat_ms >= stale;
        }
        Ok(Response::new(ListRunnersReply { runners }))
    }
}

/// Sends the stored output from line `next` on, moving `next` past it.
/// False when the receiver is gone.
async fn send_from(
    book: &super::book::Book,
    id: &TaskId,
    next: &mut u64,
    tx: &mpsc::Sender<Result<LogsReply, Status>>,
) -> crate::Result<bool> {
    let firsts = book.log_batches(id).await?;
    for (i, &first) in firsts.iter().enumerate() {
        let end = firsts.get(i + 1).copied().unwrap_or(u64::MAX);
        if end <= *next {
            continue;
        }
        let b = book.get_logs(id, first).await?;
        if first + b.lines.len() as u64 <= *next {
            continue;
        }
        let skip = next.saturating_sub(first) as usize;
        let lines: Vec<_> = b.lines.into_iter().skip(skip).collect();
        let start = first + skip as u64;
        if start > *next {
            // A gap: a batch not stored yet (the runner resends it); wait.
            break;
        }
        *next = start + lines.len() as u64;
        if tx
            .send(Ok(LogsReply {
                first: start,
                lines,
                ended: None,
            }))
            .await
            .is_err()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn rand32() -> u32 {
    let mut b = [0u8; 4];
    use std::io::Read;
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u32::from_le_bytes(b)
}
