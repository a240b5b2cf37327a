//! The hub's Prometheus metrics, served at `/metrics` in the text format.
//!
//! One registry per process ([`METRICS`]): counters are bumped from deep
//! inside handlers (pack verification, limits, tunnels) without threading
//! a handle through every call, and a production hub is one process. Label
//! sets are small and fixed by the code (a surface, a status code, a gRPC
//! method, a limit's name), never taken from what a client sends, so a
//! client cannot grow the registry. Series are prefixed `ds_`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Every counter and gauge: name, type, help.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "ds_http_requests_total",
        "counter",
        "Requests answered, by surface (grpc, api, ui, relay, metrics) and status code.",
    ),
    (
        "ds_grpc_requests_total",
        "counter",
        "gRPC calls started, by method.",
    ),
    (
        "ds_request_bytes_total",
        "counter",
        "Request body bytes received, by surface.",
    ),
    (
        "ds_response_bytes_total",
        "counter",
        "Response body bytes sent, by surface.",
    ),
    (
        "ds_packs_verified_total",
        "counter",
        "Uploaded packs verified and stored.",
    ),
    (
        "ds_packs_refused_total",
        "counter",
        "Uploaded packs refused (bad, too large, or over a limit).",
    ),
    (
        "ds_pack_bytes_total",
        "counter",
        "Bytes of uploaded packs verified and stored.",
    ),
    (
        "ds_limit_refusals_total",
        "counter",
        "Requests refused because a limit was hit, by limit.",
    ),
    (
        "ds_runner_heartbeats_total",
        "counter",
        "Heartbeats received from runners.",
    ),
    (
        "ds_runners_connected",
        "gauge",
        "Runners connected to this hub process.",
    ),
    ("ds_tasks_submitted_total", "counter", "Tasks submitted."),
    (
        "ds_tasks_ended_total",
        "counter",
        "Tasks that ended, by final state.",
    ),
    (
        "ds_relay_connections_total",
        "counter",
        "Connections relayed to task ports.",
    ),
    (
        "ds_relay_connections_active",
        "gauge",
        "Relayed connections open now.",
    ),
    (
        "ds_relay_bytes_total",
        "counter",
        "Bytes relayed, by direction (to_task, from_task).",
    ),
];

/// What part of the hub a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Grpc,
    Api,
    Ui,
    Relay,
    Metrics,
}

const SURFACES: [Surface; 5] = [
    Surface::Grpc,
    Surface::Api,
    Surface::Ui,
    Surface::Relay,
    Surface::Metrics,
];

impl Surface {
    /// The surface of a non-gRPC request, by its path.
    pub fn of_path(path: &str) -> Surface {
        if path.starts_with("/api/") {
            Surface::Api
        } else if path == "/tasks" || path.starts_with("/tasks/") {
            Surface::Relay
        } else if path == "/metrics" {
            Surface::Metrics
        } else {
            Surface::Ui
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Surface::Grpc => "grpc",
            Surface::Api => "api",
            Surface::Ui => "ui",
            Surface::Relay => "relay",
            Surface::Metrics => "metrics",
        }
    }
}

/// A process's metrics.
#[derive(Debug)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    relay_active: AtomicI64,
    /// Body bytes in and out by surface: bumped per frame, so kept out of
    /// the locked map.
    bytes: [[AtomicU64; 2]; 5],
}

/// The process's registry.
pub static METRICS: Metrics = Metrics::new();

/// `k="v"` pairs, escaped as the text format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            counters: Mutex::new(BTreeMap::new()),
            relay_active: AtomicI64::new(0),
            bytes: [const { [const { AtomicU64::new(0) }; 2] }; 5],
        }
    }

    pub fn bytes_in(&self, s: Surface, n: usize) {
        self.bytes[s as usize][0].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn bytes_out(&self, s: Surface, n: usize) {
        self.bytes[s as usize][1].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds `n` to a counter series.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], n: u64) {
        debug_assert!(
            FAMILIES.iter().any(|f| f.0 == name),
            "unknown metric {name}"
        );
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((name, labels(pairs))).or_default() += n;
    }

    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1);
    }

    pub fn refused(&self, limit: &str) {
        self.inc("ds_limit_refusals_total", &[("limit", limit)]);
    }

    pub fn relay_opened(&self) {
        self.inc("ds_relay_connections_total", &[]);
        self.relay_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn relay_closed(&self) {
        self.relay_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn relay_bytes(&self, direction: &str, n: u64) {
        self.add("ds_relay_bytes_total", &[("direction", direction)], n);
    }

    /// The text exposition; `gauges` are values only the caller knows
    /// (runners connected), by family name.
    pub fn render(&self, gauges: &[(&'static str, i64)]) -> String {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = String::new();
        for (name, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let dir = match *name {
                "ds_request_bytes_total" => Some(0),
                "ds_response_bytes_total" => Some(1),
                _ => None,
            };
            if let Some(d) = dir {
                for sf in SURFACES {
                    let v = self.bytes[sf as usize][d].load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}{{surface=\"{}\"}} {v}", sf.name());
                }
                continue;
            }
            if *name == "ds_relay_connections_active" {
                let v = self.relay_active.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name} {v}");
                continue;
            }
            if let Some((_, v)) = gauges.iter().find(|g| g.0 == *name) {
                let _ = writeln!(out, "{name} {v}");
                continue;
            }
            let mut any = false;
            for ((n, l), v) in counters.range((*name, String::new())..) {
                if n != name {
                    break;
                }
                any = true;
                if l.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{l}}} {v}");
                }
            }
            if !any && !name.ends_with("_total") {
                let _ = writeln!(out, "{name} 0");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_escaped_labels() {
        let m = Metrics::new();
        m.bytes_in(Surface::Api, 5);
        m.inc("ds_grpc_requests_total", &[("method", "/a\"b")]);
        m.add("ds_relay_bytes_total", &[("direction", "to_task")], 7);
        m.relay_opened();
        let t = m.render(&[("ds_runners_connected", 3)]);
        assert!(
            t.contains("ds_grpc_requests_total{method=\"/a\\\"b\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("ds_relay_bytes_total{direction=\"to_task\"} 7\n"));
        assert!(t.contains("ds_relay_connections_total 1\n"));
        assert!(t.contains("ds_relay_connections_active 1\n"));
        assert!(t.contains("ds_runners_connected 3\n"));
        assert!(t.contains("ds_request_bytes_total{surface=\"api\"} 5\n"));
        assert!(t.contains("# TYPE ds_http_requests_total counter\n"));
    }
}
