//! Request rates per caller and the connection cap: one client must not be
//! able to starve the others or exhaust the hub's file descriptors.
//!
//! Every request on every surface (gRPC, REST, UI, relay) is charged to its
//! caller before it is handled: the hash of its bearer token or session
//! cookie, or, with neither, its IP address (with a much smaller budget: it
//! will be refused by authentication anyway, but must not cost the hub a
//! bucket read each time). Budgets are token buckets: [`TOKEN_RATE`] a
//! second with bursts of [`TOKEN_BURST`] (a JupyterLab page load is a few
//! hundred requests). A refusal says which limit was hit
//! (RESOURCE_EXHAUSTED `requests_per_token` on gRPC, 429 on HTTP).
//!
//! Connections: at most [`MAX_CONNECTIONS`] at once; past that a new
//! connection is served a refusal (`limit connections`) and closed, and
//! past [`MAX_REFUSING`] more it is closed at once. A connection that
//! sends nothing within the header timeout is closed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Requests a second one token may make, sustained.
pub const TOKEN_RATE: f64 = 500.0;
/// Requests one token may make at once.
pub const TOKEN_BURST: f64 = 2000.0;
/// The same for callers without a token, per IP address.
pub const ANON_RATE: f64 = 50.0;
pub const ANON_BURST: f64 = 200.0;
/// Relayed connections one token may have open at once (requests in
/// flight and upgraded connections such as websockets).
pub const RELAYS_PER_TOKEN: usize = 2048;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections beyond the cap that are answered with a refusal at once;
/// more are closed without one.
pub const MAX_REFUSING: usize = 256;
/// Buckets kept before idle ones are forgotten.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn refilled(&self, now: Instant) -> f64 {
        (self.level + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst)
    }
}

/// Token buckets by caller.
#[derive(Debug, Default)]
pub struct Rates {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Rates {
    /// Charges one request to `key`; false if its budget is spent.
    pub fn allow(&self, key: &str, anonymous: bool) -> bool {
        let (rate, burst) = if anonymous {
            (ANON_RATE, ANON_BURST)
        } else {
            (TOKEN_RATE, TOKEN_BURST)
        };
        let now = Instant::now();
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_BUCKETS && !m.contains_key(key) {
            // Full buckets carry no information: forget them. If every one
            // is in use (a flood of made-up tokens), forget them all: the
            // limit fails open for a moment rather than grow without end.
            m.retain(|_, b| b.refilled(now) < b.burst);
            if m.len() >= MAX_BUCKETS {
                m.clear();
            }
        }
        let b = m.entry(key.to_string()).or_insert(Bucket {
            level: burst,
            at: now,
            rate,
            burst,
        });
        b.level = b.refilled(now);
        b.at = now;
        if b.level < 1.0 {
            return false;
        }
        b.level -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_and_keys_are_apart() {
        let r = Rates::default();
        let allowed = (0..3000).filter(|_| r.allow("a", false)).count();
        // The burst, plus what refilled while the loop ran.
        assert!((2000..2100).contains(&allowed), "{allowed}");
        assert!(r.allow("b", false), "another token has its own budget");
        let anon = (0..1000).filter(|_| r.allow("ip:1.2.3.4", true)).count();
        assert!((200..260).contains(&anon), "{anon}");
    }
}
