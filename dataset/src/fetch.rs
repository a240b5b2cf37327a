//! One object, from its GET into the store: never a full local copy.
//!
//! The bytes go from the HTTP body through a small channel to a blocking
//! thread that chunks, hashes and stores them (`ds_store::stream`). Every
//! request carries `If-Match` with the ETag the listing gave (and the reply's
//! ETag and version are checked too), so an object that changes while it is
//! read is never stored mixed: the read fails as [`Outcome::Changed`] and
//! the caller decides. A dropped connection resumes at the byte it reached,
//! with the same condition. Objects of more than four parts are read as
//! ranged GETs, several parts in flight, and fed to the chunker in order.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, Bytes};
use ds_format::ObjectId;
use ds_format::manifest::FileRef;
use ds_store::Store;
use ds_store::writer::PackWriter;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::s3::{Client, GetError, Listed, ObjectHead};
use crate::source::backoff;
use crate::{DatasetError, Result};

/// How a read ended.
#[derive(Debug)]
pub enum Outcome {
    /// Stored whole, as this version.
    Stored { file: FileRef, head: ObjectHead },
    /// The object is not the version listed any more.
    Changed,
    /// The object was deleted.
    Gone,
    /// A piece of it was stored ([`Segment::stop_after`]): these chunks,
    /// holding this many bytes from the segment's start.
    Cut {
        chunks: Vec<(ObjectId, u64)>,
        bytes: u64,
    },
}

/// Which part of an object to read: from `from` (a cut), with the chunks
/// before it already stored (`prefix`, which then go into the manifest),
/// stopping at the first cut past `stop_after` bytes if set. The default
/// is the whole object.
#[derive(Debug, Clone, Default)]
pub struct Segment {
    pub from: u64,
    pub prefix: Arc<Vec<(ObjectId, u64)>>,
    pub stop_after: Option<u64>,
}

/// How objects are read.
#[derive(Clone)]
pub struct FetchConfig {
    /// Bytes per ranged GET; objects over four parts are read in parts.
    pub part_size: u64,
    /// Parts in flight for one object.
    pub parts_in_flight: usize,
    /// Called once, after the first part of a ranged read arrived (tests
    /// use it to change an object mid-read).
    pub after_first_part: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Called after each piece of a big object is journaled (tests kill
    /// the mirror there).
    pub after_piece: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for FetchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchConfig")
            .field("part_size", &self.part_size)
            .field("parts_in_flight", &self.parts_in_flight)
            .finish_non_exhaustive()
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            part_size: 16 << 20,
            parts_in_flight: 4,
            after_first_part: None,
            after_piece: None,
        }
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// Why the producer stopped early.
enum Stop {
    Get(GetError),
    /// The consumer went away (it failed; its error is the one to report).
    Consumer,
}

impl From<GetError> for Stop {
    fn from(e: GetError) -> Self {
        Stop::Get(e)
    }
}

/// Reads `seg` of `obj` into the store through `writer`, counting bytes
/// received in `fetched`.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    client: &Client,
    bucket: &str,
    obj: &Listed,
    seg: &Segment,
    store: &Arc<Store>,
    writer: &PackWriter,
    cfg: &FetchConfig,
    fetched: &Arc<AtomicU64>,
) -> Result<Outcome> {
    // A piece reads a little past its stop, not the whole rest: the
    // chunker stops at the first cut after it, having read at most two
    // maximal chunks past it (`store_stream_from`).
    let end = match seg.stop_after {
        Some(lim) => {
            let slack = 2 * u64::from(store.chunker().params().max) + 1;
            seg.from
                .saturating_add(lim)
                .saturating_add(slack)
                .min(obj.size)
        }
        None => obj.size,
    };
    let left = end.saturating_sub(seg.from);
    let parts = left > 4 * cfg.part_size;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(if parts { 2 } else { 64 });
    let (store2, w, s) = (store.clone(), writer.clone(), seg.clone());
    let consumer = tokio::task::spawn_blocking(move || {
        let mut r = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        let chunker = store2.chunker();
        ds_store::stream::store_stream_from(
            &w,
            chunker,
            &mut r,
            left,
            ds_store::stream::buf_size(chunker),
            &s.prefix,
            s.stop_after,
            &mut |_| {},
        )
    });
    let produced = if parts {
        by_parts(client, bucket, obj, (seg.from, end), cfg, &tx, fetched).await
    } else {
        streamed(client, bucket, obj, (seg.from, end), &tx, fetched).await
    };
    if produced.is_err() {
        let _ = tx.send(Err(io::Error::other("read abandoned"))).await;
    }
    drop(tx);
    let stored = consumer
        .await
        .map_err(|e| DatasetError::Internal(format!("chunking thread: {e}")))??;
    use ds_store::stream::Streamed;
    match (produced, stored) {
        // The piece asked for: the reader stopped taking the body.
        (Ok(_) | Err(Stop::Consumer), Ok(Streamed::Cut { chunks, bytes })) => {
            Ok(Outcome::Cut { chunks, bytes })
        }
        (Ok(head), Ok(Streamed::Whole(file))) => {
            if file.size != obj.size {
                return Ok(Outcome::Changed);
            }
            Ok(Outcome::Stored { file, head })
        }
        (Err(Stop::Get(GetError::Changed)), _) => Ok(Outcome::Changed),
        (Err(Stop::Get(GetError::Gone)), _) => Ok(Outcome::Gone),
        (Err(Stop::Get(GetError::Other(e))), _) => Err(e),
        (Ok(_), Err(e)) | (Err(Stop::Consumer), Err(e)) => Err(DatasetError::Internal(format!(
            "reading s3://{bucket}/{}: {e}",
            obj.key
        ))),
        (Err(Stop::Consumer), Ok(_)) => Err(DatasetError::Internal("chunker stopped early".into())),
    }
}

/// One GET of bytes `from..end`, streamed; a broken body resumes at the
/// byte reached.
async fn streamed(
    client: &Client,
    bucket: &str,
    obj: &Listed,
    (from, end): (u64, u64),
    tx: &mpsc::Sender<io::Result<Bytes>>,
    fetched: &AtomicU64,
) -> std::result::Result<ObjectHead, Stop> {
    let (mut off, mut tries) = (from, 0u32);
    let to = (end < obj.size).then_some(end);
    let mut first: Option<ObjectHead> = None;
    loop {
        let (head, resp) = match client
            .get(bucket, &obj.key, off, to, obj.etag.as_deref())
            .await
        {
            Ok(x) => x,
            Err(GetError::Other(e)) if e.is_transient() && tries < 5 => {
                tokio::time::sleep(backoff(tries)).await;
                tries += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match &first {
            None => first = Some(head),
            Some(f) if f.version_id.is_some() && f.version_id != head.version_id => {
                return Err(GetError::Changed.into());
            }
            Some(_) => {}
        }
        let mut body = resp;
        let mut broken = false;
        while let Some(b) = body.chunk().await {
            match b {
                Ok(b) => {
                    off += b.len() as u64;
                    fetched.fetch_add(b.len() as u64, Ordering::Relaxed);
                    if off > end {
                        return Err(GetError::Changed.into());
                    }
                    if tx.send(Ok(b)).await.is_err() {
                        return Err(Stop::Consumer);
                    }
                }
                Err(e) if tries < 5 => {
                    tracing::warn!("s3://{bucket}/{}: {e}; resuming at byte {off}", obj.key);
                    tokio::time::sleep(backoff(tries)).await;
                    tries += 1;
                    broken = true;
                    break;
                }
                Err(e) => return Err(GetError::Other(e).into()),
            }
        }
        if !broken {
            if off != end {
                return Err(GetError::Changed.into());
            }
            return Ok(first.expect("set above"));
        }
    }
}

/// One ranged GET, whole, with retries.
async fn part(
    client: &Client,
    bucket: &str,
    obj: &Listed,
    from: u64,
    to: u64,
    fetched: &AtomicU64,
) -> std::result::Result<(ObjectHead, Bytes), GetError> {
    let (head, b) = crate::source::retry("get", || async {
        let (head, resp) = client
            .get(bucket, &obj.key, from, Some(to), obj.etag.as_deref())
            .await?;
        Ok::<_, GetError>((head, resp.bytes().await?))
    })
    .await?;
    if b.len() as u64 != to - from {
        return Err(GetError::Changed);
    }
    fetched.fetch_add(b.len() as u64, Ordering::Relaxed);
    Ok((head, b))
}

async fn by_parts(
    client: &Client,
    bucket: &str,
    obj: &Listed,
    (start, end): (u64, u64),
    cfg: &FetchConfig,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    fetched: &AtomicU64,
) -> std::result::Result<ObjectHead, Stop> {
    let n = (end - start).div_ceil(cfg.part_size);
    let mut parts = futures::stream::iter(0..n)
        .map(|i| {
            let from = start + i * cfg.part_size;
            let to = (from + cfg.part_size).min(end);
            part(client, bucket, obj, from, to, fetched)
        })
        .buffered(cfg.parts_in_flight.max(1));
    let mut first: Option<ObjectHead> = None;
    while let Some(p) = parts.next().await {
        let (head, b) = p?;
        match &first {
            None => {
                first = Some(head);
                if let Some(h) = &cfg.after_first_part {
                    h();
                }
            }
            Some(f) if f.version_id != head.version_id => return Err(GetError::Changed.into()),
            Some(_) => {}
        }
        if tx.send(Ok(b)).await.is_err() {
            return Err(Stop::Consumer);
        }
    }
    Ok(first.unwrap_or_default())
}
