//! Scale by simulation: many runners in one process, each its own HTTP/2
//! connection speaking the real task protocol, spread over one or more
//! hubs on one bucket; trivial tasks submitted through those hubs. Prints
//! tasks dispatched and completed per second, and hub memory per connected
//! idle runner (from /proc/PID/status of the hub processes given).
//!
//! ```text
//! task-load --hub URL [--hub URL2] --admin TOKEN --runners 1000 --tasks 2000 [--pid HUBPID]...
//! ```
//! Each fake runner answers an assignment at once (Started, one log line,
//! Done with exit 0) and heartbeats as the hub asks. Raise `ulimit -n`
//! first: each runner is a connection on both sides.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ds_proto::runner::{
    Done, Heartbeat, LogBatch, LogLine, RunnerHello, RunnerMessage, Started, SubmitRequest,
    TaskSpec, hub_message, runner_message,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Default)]
struct Args {
    hubs: Vec<String>,
    admin: String,
    runners: usize,
    tasks: usize,
    pids: Vec<u32>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        runners: 100,
        tasks: 500,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().context("a flag needs a value");
        match k.as_str() {
            "--hub" => a.hubs.push(v()?),
            "--admin" => a.admin = v()?,
            "--runners" => a.runners = v()?.parse()?,
            "--tasks" => a.tasks = v()?.parse()?,
            "--pid" => a.pids.push(v()?.parse()?),
            other => bail!("unknown argument {other:?} (see the module doc)"),
        }
    }
    if a.hubs.is_empty() || a.admin.is_empty() {
        bail!(
            "usage: task-load --hub URL [--hub URL]... --admin TOKEN [--runners N] [--tasks M] [--pid PID]..."
        );
    }
    Ok(a)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn msg(m: runner_message::Msg) -> RunnerMessage {
    RunnerMessage { msg: Some(m) }
}

struct Counters {
    connected: AtomicUsize,
    done: AtomicUsize,
    all_done: Notify,
    want: usize,
}

async fn fake_runner(url: String, token: String, name: String, c: Arc<Counters>) -> Result<()> {
    let mut client = ds_sync::tasks::connect(&url, &token, None).await?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(msg(runner_message::Msg::Hello(RunnerHello {
        protocol: ds_proto::TASK_PROTOCOL,
        name,
        version: "load".into(),
        capacity: 4,
        executors: vec!["process".into()],
        ..Default::default()
    })))
    .await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    let mut beat = tokio::time::interval(Duration::from_secs(3600));
    let mut running: Vec<ds_proto::runner::Held> = Vec::new();
    loop {
        tokio::select! {
            m = inbound.message() => {
                let Some(m) = m? else { return Ok(()) };
                match m.msg {
                    Some(hub_message::Msg::Hello(h)) => {
                        beat = tokio::time::interval(Duration::from_millis(h.heartbeat_ms.into()));
                        c.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(hub_message::Msg::Assign(a)) => {
                        let (task, lease) = (a.task.clone(), a.lease);
                        running.push(ds_proto::runner::Held { task: task.clone(), lease, next_line: 0 });
                        tx.send(msg(runner_message::Msg::Started(Started { task: task.clone(), lease, executor: "process".into(), base: vec![] }))).await?;
                        tx.send(msg(runner_message::Msg::Logs(LogBatch { task: task.clone(), lease, first: 0, lines: vec![LogLine { stream: 1, text: b"ok".to_vec(), time_ms: 0 }] }))).await?;
                    }
                    Some(hub_message::Msg::LogAck(a)) => {
                        if let Some(h) = running.iter().find(|h| h.task == a.task) {
                            tx.send(msg(runner_message::Msg::Done(Done { task: h.task.clone(), lease: h.lease, exit_code: Some(0), lines: 1, ..Default::default() }))).await?;
                        }
                    }
                    Some(hub_message::Msg::DoneAck(d)) => {
                        running.retain(|h| h.task != d.task);
                        if c.done.fetch_add(1, Ordering::Relaxed) + 1 == c.want {
                            c.all_done.notify_one();
                        }
                    }
                    _ => {}
                }
            }
            _ = beat.tick() => {
                tx.send(msg(runner_message::Msg::Heartbeat(Heartbeat { running: running.clone(), draining: false }))).await?;
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = args()?;
    let rss0: u64 = a.pids.iter().map(|&p| rss_kib(p)).sum();
    let mut tokens = Vec::new();
    let mut admin = ds_sync::Remote::connect(&a.hubs[0], &a.admin, None).await?;
    let t = Instant::now();
    for i in 0..a.runners {
        let name = format!("load-{i}");
        tokens.push((
            name.clone(),
            admin
                .create_token(vec![], "load".into(), Some(name))
                .await?,
        ));
    }
    eprintln!(
        "{} runner tokens in {:.1} s",
        a.runners,
        t.elapsed().as_secs_f64()
    );
    let c = Arc::new(Counters {
        connected: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        all_done: Notify::new(),
        want: a.tasks,
    });
    let t = Instant::now();
    for (i, (name, token)) in tokens.into_iter().enumerate() {
        let url = a.hubs[i % a.hubs.len()].clone();
        let c = c.clone();
        tokio::spawn(async move {
            if let Err(e) = fake_runner(url, token, name.clone(), c).await {
                eprintln!("runner {name}: {e}");
            }
        });
    }
    while c.connected.load(Ordering::Relaxed) < a.runners {
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {} runners connected",
                c.connected.load(Ordering::Relaxed),
                a.runners
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1: u64 = a.pids.iter().map(|&p| rss_kib(p)).sum();
    let mut clients = Vec::new();
    for h in &a.hubs {
        clients.push(ds_sync::tasks::connect(h, &a.admin, None).await?);
    }
    let t = Instant::now();
    let mut submits = Vec::new();
    for i in 0..a.tasks {
        let mut cl = clients[i % clients.len()].clone();
        submits.push(tokio::spawn(async move {
            cl.submit(SubmitRequest {
                spec: Some(TaskSpec {
                    workspace: format!("load-{i}"),
                    command: vec!["true".into()],
                    ..Default::default()
                }),
            })
            .await
        }));
        if submits.len() >= 32 {
            for s in submits.drain(..) {
                s.await??;
            }
        }
    }
    for s in submits {
        s.await??;
    }
    let submit_s = t.elapsed().as_secs_f64();
    tokio::time::timeout(Duration::from_secs(600), c.all_done.notified())
        .await
        .context("tasks did not all finish within 10 minutes")?;
    let total_s = t.elapsed().as_secs_f64();
    let per_runner = (rss1.saturating_sub(rss0)) as f64 / a.runners as f64;
    println!(
        "runners {} over {} hub(s), connected in {connect_s:.1} s",
        a.runners,
        a.hubs.len()
    );
    println!(
        "tasks {}: submitted in {submit_s:.2} s, all done in {total_s:.2} s = {:.1} tasks/s",
        a.tasks,
        a.tasks as f64 / total_s
    );
    if !a.pids.is_empty() {
        println!(
            "hub RSS {} KiB -> {} KiB with the runners idle: {per_runner:.1} KiB per runner",
            rss0, rss1
        );
    }
    Ok(())
}
