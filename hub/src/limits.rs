//! Limits on uploads, so one token cannot take the hub's memory.
//!
//! An upload is held in memory until it is verified and stored (at most
//! `MAX_PACK` bytes). Without limits, 2,000 streams that each sent 1 MiB
//! and then stalled took the hub from 75 MiB to 4 GiB. Now, before a byte
//! of pack data is read:
//!
//! - a token may have at most [`UPLOADS_PER_TOKEN`] uploads and
//!   [`UPLOAD_BYTES_PER_TOKEN`] announced bytes in flight; past either,
//!   the upload is refused at once (RESOURCE_EXHAUSTED, naming the limit),
//!   so one token cannot starve the others;
//! - all uploads together may hold [`UPLOAD_BYTES`]; past that an upload
//!   waits for room (backpressure: nothing of it is read meanwhile) for up
//!   to [`UPLOAD_IDLE`], then is refused;
//! - an upload that sends nothing for [`UPLOAD_IDLE`] is dropped.
//!
//! Buffers grow as data arrives instead of being reserved from the header.
//!
//! Downloads: a token may have [`DOWNLOADS_PER_TOKEN`] `GetObjects`
//! streams open; a stream whose client takes no reply for
//! [`DOWNLOAD_STALL`] is dropped (flow control pauses it meanwhile, with
//! at most a read window and two replies held).

// gRPC handlers and their helpers return tonic::Status, which is large by design.
#![allow(clippy::result_large_err)]

use crate::metrics::METRICS;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Bytes of pack data all uploads together may hold.
pub const UPLOAD_BYTES: u64 = 2 << 30;
/// Bytes of announced pack data one token may have in flight.
pub const UPLOAD_BYTES_PER_TOKEN: u64 = 512 << 20;
/// Uploads one token may have in flight.
pub const UPLOADS_PER_TOKEN: usize = 8;
/// How long an upload may wait for room, or go without sending anything.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// Permits count KiB, so the global budget fits a semaphore's u32.
const UNIT: u64 = 1024;

#[derive(Debug, Default)]
struct TokenUse {
    uploads: usize,
    bytes: u64,
}

/// The hub's upload budget.
#[derive(Debug)]
pub struct Uploads {
    global: Arc<Semaphore>,
    tokens: Mutex<HashMap<String, TokenUse>>,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            global: Arc::new(Semaphore::new((UPLOAD_BYTES / UNIT) as usize)),
            tokens: Mutex::new(HashMap::new()),
        }
    }
}

/// Room for one upload; released when dropped.
#[derive(Debug)]
pub struct Admitted {
    uploads: Arc<Uploads>,
    token: String,
    bytes: u64,
    _global: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = self.uploads.tokens.lock().expect("not poisoned");
        if let Some(u) = t.get_mut(&self.token) {
            u.uploads -= 1;
            u.bytes -= self.bytes;
            if u.uploads == 0 {
                t.remove(&self.token);
            }
        }
    }
}

impl Uploads {
    /// Admits an upload of `bytes` by the token whose hash is `token`, or
    /// says which limit it hit.
    pub async fn admit(self: &Arc<Self>, token: &str, bytes: u64) -> Result<Admitted, Status> {
        {
            let mut t = self.tokens.lock().expect("not poisoned");
            let u = t.entry(token.to_string()).or_default();
            if u.uploads >= UPLOADS_PER_TOKEN {
                METRICS.refused("uploads_per_token");
                return Err(Status::resource_exhausted(format!(
                    "limit uploads_per_token: this token already has {UPLOADS_PER_TOKEN} uploads \
                     in flight"
                )));
            }
            if u.bytes + bytes > UPLOAD_BYTES_PER_TOKEN {
                METRICS.refused("upload_bytes_per_token");
                return Err(Status::resource_exhausted(format!(
                    "limit upload_bytes_per_token: this token already has {} bytes of uploads in \
                     flight; at most {UPLOAD_BYTES_PER_TOKEN}",
                    u.bytes
                )));
            }
            u.uploads += 1;
            u.bytes += bytes;
        }
        // From here on the token's share is taken: give it back on failure.
        let undo = |s: Status| {
            let mut t = self.tokens.lock().expect("not poisoned");
            if let Some(u) = t.get_mut(token) {
                u.uploads -= 1;
                u.bytes -= bytes;
                if u.uploads == 0 {
                    t.remove(token);
                }
            }
            s
        };
        let units = bytes.div_ceil(UNIT).max(1) as u32;
        let permit = tokio::time::timeout(
            UPLOAD_IDLE,
            self.global.clone().acquire_many_owned(units),
        )
        .await
        .map_err(|_| {
            METRICS.refused("upload_bytes");
            undo(Status::resource_exhausted(format!(
                "limit upload_bytes: the hub holds {UPLOAD_BYTES} bytes of uploads and had no \
                     room for {bytes} more within {} s; retry",
                UPLOAD_IDLE.as_secs()
            )))
        })?
        .map_err(|_| undo(Status::unavailable("the hub is shutting down")))?;
        Ok(Admitted {
            uploads: self.clone(),
            token: token.to_string(),
            bytes,
            _global: permit,
        })
    }
}

/// Downloads (`GetObjects` streams) one token may have open at once: each
/// holds up to a read window and two replies (~24 MiB) while its client
/// is slow.
pub const DOWNLOADS_PER_TOKEN: usize = 16;
/// How long a download may wait for its client to take the next reply.
pub const DOWNLOAD_STALL: Duration = Duration::from_secs(60);

/// Open downloads per token.
#[derive(Debug, Default)]
pub struct Downloads {
    open: Mutex<HashMap<String, usize>>,
}

/// One open download; closed when dropped.
#[derive(Debug)]
pub struct Open {
    downloads: Arc<Downloads>,
    token: String,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut m = self.downloads.open.lock().expect("not poisoned");
        if let Some(n) = m.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.token);
            }
        }
    }
}

impl Downloads {
    pub fn open(self: &Arc<Self>, token: &str) -> Result<Open, Status> {
        let mut m = self.open.lock().expect("not poisoned");
        let n = m.entry(token.to_string()).or_default();
        if *n >= DOWNLOADS_PER_TOKEN {
            METRICS.refused("downloads_per_token");
            return Err(Status::resource_exhausted(format!(
                "limit downloads_per_token: this token already has {DOWNLOADS_PER_TOKEN} \
                 GetObjects streams open"
            )));
        }
        *n += 1;
        Ok(Open {
            downloads: self.clone(),
            token: token.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_past_its_share_is_refused_and_its_share_comes_back() {
        let u = Arc::new(Uploads::default());
        let mut held = Vec::new();
        for _ in 0..UPLOADS_PER_TOKEN {
            held.push(u.admit("a", 1 << 20).await.unwrap());
        }
        let e = u.admit("a", 1).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("uploads_per_token"), "{}", e.message());
        // Another token is not affected.
        let other = u.admit("b", UPLOAD_BYTES_PER_TOKEN).await.unwrap();
        let e = u.admit("b", 1).await.unwrap_err();
        assert!(
            e.message().contains("upload_bytes_per_token"),
            "{}",
            e.message()
        );
        drop(other);
        held.clear();
        assert!(u.tokens.lock().unwrap().is_empty(), "every share returned");
        assert_eq!(u.global.available_permits() as u64, UPLOAD_BYTES / UNIT);
        u.admit("a", 1).await.unwrap();
    }

    #[test]
    fn downloads_per_token_are_counted_and_given_back() {
        let d = Arc::new(Downloads::default());
        let open: Vec<Open> = (0..DOWNLOADS_PER_TOKEN)
            .map(|_| d.open("a").unwrap())
            .collect();
        let e = d.open("a").unwrap_err();
        assert!(
            e.message().contains("downloads_per_token"),
            "{}",
            e.message()
        );
        d.open("b").unwrap();
        drop(open);
        assert!(d.open.lock().unwrap().is_empty());
    }
}
