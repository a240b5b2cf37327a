//! The runner's one connection to its hub: hello, heartbeats, assignments,
//! cancels, and the output and results of its tasks ([`crate::ledger`]).
//!
//! It reconnects forever (backing off to 10 s) while the runner runs: a
//! hub restart or a dropped network costs a reconnect, not a task, as long
//! as the runner is back within the lease. A hub that stops answering for
//! three heartbeats counts as gone (a half-open TCP connection never says
//! so itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ds_proto::runner::{
    Heartbeat, HubMessage, RunnerHello, RunnerMessage, hub_message, runner_message,
};
use ds_proto::{TASK_PROTOCOL, TaskId};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::Config;
use crate::error::{Result, RunnerError};
use crate::ledger::Ledger;
use crate::task::{self, Assignment};

/// How often output is cut into batches and sent.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const HELLO_WITHIN: Duration = Duration::from_secs(10);

struct Link {
    cfg: Arc<Config>,
    ledger: Arc<Ledger>,
    draining: AtomicBool,
    /// Shutdown was asked for.
    stop: Notify,
}

/// Why a session ended without an error.
enum End {
    /// Draining and nothing left to run.
    Drained,
}

/// Runs until the first `signal()` resolves, then drains; a second
/// `signal()` (made after the first resolved) stops at once.
pub async fn run<F: std::future::Future<Output = ()>>(
    cfg: Config,
    signal: impl Fn() -> F,
) -> Result<()> {
    let link = Arc::new(Link {
        cfg: Arc::new(cfg),
        ledger: Arc::new(Ledger::default()),
        draining: AtomicBool::new(false),
        stop: Notify::new(),
    });
    let l = link.clone();
    let mut sessions = tokio::spawn(async move { l.sessions().await });
    tokio::select! {
        r = &mut sessions => return r.map_err(|e| RunnerError::Protocol(e.to_string()))?,
        _ = signal() => {}
    }
    let n = link.ledger.len();
    eprintln!(
        "ds runner: shutting down: taking no new tasks; {n} running task(s) finish first \
         (their final snapshot and push); a second signal stops at once"
    );
    link.draining.store(true, Ordering::SeqCst);
    link.stop.notify_one();
    let second = signal();
    tokio::select! {
        r = &mut sessions => r.map_err(|e| RunnerError::Protocol(e.to_string()))?,
        _ = second => {
            eprintln!("ds runner: stopping now; running tasks are abandoned (their leases run out)");
            Ok(())
        }
    }
}

impl Link {
    /// Sessions, one after another, until drained.
    async fn sessions(self: &Arc<Self>) -> Result<()> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let t = Instant::now();
            match self.session().await {
                Ok(End::Drained) => return Ok(()),
                Err(e) => {
                    if let RunnerError::Rpc(s) = &e
                        && matches!(
                            s.code(),
                            tonic::Code::PermissionDenied
                                | tonic::Code::Unauthenticated
                                | tonic::Code::FailedPrecondition
                        )
                    {
                        // A wrong token or protocol does not get better by
                        // trying again.
                        return Err(e);
                    }
                    if self.draining.load(Ordering::SeqCst) && self.ledger.is_empty() {
                        return Ok(());
                    }
                    if t.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(200);
                    }
                    eprintln!(
                        "ds runner: hub {}: {e}; reconnecting in {:.1} s",
                        self.cfg.hub,
                        backoff.as_secs_f64()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn hello(&self) -> RunnerMessage {
        RunnerMessage {
            msg: Some(runner_message::Msg::Hello(RunnerHello {
                protocol: TASK_PROTOCOL,
                name: self.cfg.name.to_string(),
                version: env!("CARGO_PKG_VERSION").into(),
                labels: self.cfg.labels.clone(),
                capacity: self.cfg.capacity,
                executors: self.cfg.executors.clone(),
                held: self.ledger.held(),
            })),
        }
    }

    fn heartbeat(&self) -> RunnerMessage {
        crate::metrics::HEARTBEATS.inc();
        RunnerMessage {
            msg: Some(runner_message::Msg::Heartbeat(Heartbeat {
                running: self.ledger.held(),
                draining: self.draining.load(Ordering::SeqCst),
            })),
        }
    }

    async fn session(self: &Arc<Self>) -> Result<End> {
        let mut client =
            ds_sync::tasks::connect(&self.cfg.hub, &self.cfg.token, self.cfg.ca.as_deref()).await?;
        let (tx, rx) = mpsc::channel::<RunnerMessage>(256);
        tx.send(self.hello())
            .await
            .map_err(|_| RunnerError::Protocol("stream closed".into()))?;
        let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        let first = tokio::time::timeout(HELLO_WITHIN, inbound.message())
            .await
            .map_err(|_| RunnerError::Protocol("no hello from the hub within 10 s".into()))??;
        let Some(HubMessage {
            msg: Some(hub_message::Msg::Hello(hello)),
        }) = first
        else {
            return Err(RunnerError::Protocol(
                "the hub's first message was not a hello".into(),
            ));
        };
        for t in &hello.drop {
            if let Ok(id) = TaskId::new(t) {
                eprintln!("ds runner: task {id}: the hub no longer counts it as ours; stopping it");
                self.ledger.drop_task(&id);
            }
        }
        self.ledger.reset_sent();
        crate::metrics::CONNECTS.inc();
        eprintln!(
            "ds runner: connected to {} as {} ({} task(s) resumed)",
            self.cfg.hub,
            self.cfg.name,
            hello.keep.len()
        );
        let every = Duration::from_millis(hello.heartbeat_ms.clamp(100, 60_000).into());
        let mut beat = tokio::time::interval(every);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut heard = Instant::now();
        let send = |m: RunnerMessage| {
            let tx = tx.clone();
            async move {
                tx.send(m)
                    .await
                    .map_err(|_| RunnerError::Protocol("the stream to the hub closed".into()))
            }
        };
        loop {
            tokio::select! {
                m = inbound.message() => {
                    heard = Instant::now();
                    match m? {
                        Some(m) => self.handle(m, &client),
                        None => return Err(RunnerError::Protocol("the hub closed the stream".into())),
                    }
                }
                _ = flush.tick() => {
                    let out = self.ledger.outbox();
                    for s in out.started {
                        send(RunnerMessage { msg: Some(runner_message::Msg::Started(s)) }).await?;
                    }
                    for b in out.batches {
                        send(RunnerMessage { msg: Some(runner_message::Msg::Logs(b)) }).await?;
                    }
                    for d in out.done {
                        send(RunnerMessage { msg: Some(runner_message::Msg::Done(d)) }).await?;
                    }
                    if self.draining.load(Ordering::SeqCst) && self.ledger.is_empty() {
                        return Ok(End::Drained);
                    }
                }
                _ = beat.tick() => {
                    if heard.elapsed() > every * 3 + Duration::from_secs(1) {
                        return Err(RunnerError::Protocol(format!(
                            "no word from the hub for {:.1} s", heard.elapsed().as_secs_f64()
                        )));
                    }
                    send(self.heartbeat()).await?;
                }
                _ = self.stop.notified() => {
                    send(self.heartbeat()).await?;
                }
            }
        }
    }

    fn handle(self: &Arc<Self>, m: HubMessage, client: &ds_sync::tasks::Tasks) {
        use hub_message::Msg;
        let Some(m) = m.msg else { return };
        match m {
            Msg::Hello(_) => eprintln!("ds runner: warning: a second hello from the hub, ignored"),
            Msg::Assign(a) => self.assign(a),
            Msg::Cancel(c) => {
                if let Ok(id) = TaskId::new(&c.task)
                    && let Some(ctl) = self.ledger.control(&id)
                {
                    eprintln!(
                        "ds runner: task {id}: cancelled ({} s grace)",
                        c.grace_seconds
                    );
                    ctl.cancel(c.grace_seconds);
                }
            }
            Msg::LogAck(a) => {
                if let Ok(id) = TaskId::new(&a.task) {
                    self.ledger.ack(&id, a.next_line);
                }
            }
            Msg::HeartbeatAck(h) => {
                for t in h.drop {
                    if let Ok(id) = TaskId::new(&t) {
                        eprintln!("ds runner: task {id}: its lease is gone; stopping it");
                        self.ledger.drop_task(&id);
                    }
                }
            }
            Msg::DoneAck(d) => {
                if let Ok(id) = TaskId::new(&d.task) {
                    self.ledger.done_acked(&id);
                }
            }
            Msg::OpenTunnel(o) => crate::tunnel::open(o, &self.ledger, client.clone()),
        }
    }

    fn assign(self: &Arc<Self>, a: ds_proto::runner::Assign) {
        let (Ok(id), Some(spec)) = (TaskId::new(&a.task), a.spec) else {
            eprintln!("ds runner: warning: an assignment without a valid task id or spec, ignored");
            return;
        };
        if spec.command.is_empty() {
            eprintln!("ds runner: warning: task {id} has no command, ignored");
            return;
        }
        let Some(control) = self.ledger.admit(&id, a.lease) else {
            return; // already ours
        };
        crate::metrics::TASKS_ASSIGNED.inc();
        eprintln!(
            "ds runner: task {id}: assigned (lease {}): {:?}",
            a.lease, spec.command
        );
        let job = Assignment {
            id: id.clone(),
            lease: a.lease,
            spec,
            token: a.workspace_token,
        };
        let (cfg, ledger) = (self.cfg.clone(), self.ledger.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("ds-task-{id}"))
            .spawn(move || task::run(cfg, job, ledger, control));
        if let Err(e) = spawned {
            eprintln!("ds runner: task {id}: cannot start a thread: {e}");
            self.ledger.finish(
                &id,
                Some(ds_proto::runner::Done {
                    task: id.to_string(),
                    lease: a.lease,
                    error: format!("the runner could not start a thread: {e}"),
                    ..Default::default()
                }),
            );
        }
    }
}
