//! The runner's Prometheus metrics, served at `/metrics` when the runner is
//! given `--metrics-listen` (a runner behind NAT has no other listener; a
//! scraper on its own network reads this).
//!
//! Plain atomics in one process-wide registry: the runner has a handful of
//! series and no labels a workload could grow. Series are prefixed
//! `ds_runner_`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter or gauge.
#[derive(Debug)]
pub struct Series {
    pub name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Series {
    const fn new(name: &'static str, kind: &'static str, help: &'static str) -> Series {
        Series {
            name,
            kind,
            help,
            value: AtomicU64::new(0),
        }
    }
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn set(&self, n: u64) {
        self.value.store(n, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.value.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

pub static CONNECTS: Series = Series::new(
    "ds_runner_hub_connects_total",
    "counter",
    "Sessions opened with the hub (the first, then reconnects).",
);
pub static HEARTBEATS: Series = Series::new(
    "ds_runner_heartbeats_total",
    "counter",
    "Heartbeats sent to the hub.",
);
pub static TASKS_ASSIGNED: Series = Series::new(
    "ds_runner_tasks_assigned_total",
    "counter",
    "Tasks the hub assigned to this runner.",
);
pub static TASKS_RUNNING: Series = Series::new(
    "ds_runner_tasks_running",
    "gauge",
    "Tasks this runner holds now (preparing, running or finishing).",
);
pub static LOG_LINES: Series = Series::new(
    "ds_runner_log_lines_total",
    "counter",
    "Output lines of workloads taken into the ledger.",
);
pub static TUNNELS: Series = Series::new(
    "ds_runner_tunnels_total",
    "counter",
    "Relayed connections opened to task ports.",
);
pub static TUNNELS_OPEN: Series = Series::new(
    "ds_runner_tunnels_open",
    "gauge",
    "Relayed connections open now.",
);
pub static TUNNEL_BYTES: Series = Series::new(
    "ds_runner_tunnel_bytes_total",
    "counter",
    "Bytes relayed between the hub and task ports (both directions).",
);

const ALL: &[&Series] = &[
    &CONNECTS,
    &HEARTBEATS,
    &TASKS_ASSIGNED,
    &TASKS_RUNNING,
    &LOG_LINES,
    &TUNNELS,
    &TUNNELS_OPEN,
    &TUNNEL_BYTES,
];

/// The text exposition.
pub fn render() -> String {
    let mut out = String::new();
    for s in ALL {
        let _ = writeln!(out, "# HELP {} {}", s.name, s.help);
        let _ = writeln!(out, "# TYPE {} {}", s.name, s.kind);
        let _ = writeln!(out, "{} {}", s.name, s.get());
    }
    out
}

/// Serves `GET /metrics` (404 for anything else) on `listener` until the
/// process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (200, render())
                    } else {
                        (404, "only /metrics here\n".to_string())
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}
