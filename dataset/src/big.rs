//! Objects bigger than a batch, stored in pieces so that an interrupted
//! mirror resumes inside them: a 50 GiB checkpoint killed at 40 GiB is
//! read on from about 40 GiB, not from its start.
//!
//! Each piece (about a batch's bytes) is read from where the last one
//! ended, chunked until the first cut past its size, and stored in a
//! transaction of its own; once that is finished (durable, indexed) its
//! chunks are journaled ([`Piece`]). The object's last piece is read by
//! the batch like any object, with the earlier pieces' chunks as the
//! prefix of its manifest. Pieces end at cuts, where chunking starts
//! afresh, so the chunks are those one uninterrupted read gives (tested in
//! `store/tests/it/stream.rs`). Every piece's GET carries `If-Match` with
//! the same ETag, and a rerun uses pieces only of that size and ETag whose
//! chunks are all still in the store, so no object is stored mixed.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use ds_format::ObjectId;
use ds_store::Store;
use ds_store::txn::{Target, Transaction};

use crate::fetch::{self, FetchConfig, Outcome, Segment};
use crate::journal::{Journal, Piece};
use crate::s3::{Client, Listed};
use crate::{DatasetError, Result};

/// Where the pieces of `obj` an earlier run journaled end, and their
/// chunks: usable if they are of this version, contiguous from byte 0,
/// and every chunk is still in the store.
pub fn resumed(store: &Store, obj: &Listed, pieces: Option<&Vec<Piece>>) -> Result<Segment> {
    let mut seg = Segment::default();
    let Some(pieces) = pieces else {
        return Ok(seg);
    };
    if obj.etag.is_none() {
        return Ok(seg);
    }
    let mut chunks: Vec<(ObjectId, u64)> = Vec::new();
    for p in pieces {
        if p.size != obj.size || p.etag != obj.etag || p.from != seg.from {
            break;
        }
        let bytes: u64 = p.chunks.iter().map(|c| c.1).sum();
        let mut held = true;
        for (id, _) in &p.chunks {
            if store.index().get(id)?.is_none() {
                held = false;
                break;
            }
        }
        if !held || seg.from + bytes > obj.size {
            break;
        }
        chunks.extend_from_slice(&p.chunks);
        seg.from += bytes;
    }
    seg.prefix = Arc::new(chunks);
    Ok(seg)
}

/// What [`lead`] did.
#[derive(Debug)]
pub struct Lead {
    /// The last piece to read (in the batch's transaction).
    pub rest: Segment,
    /// Bytes already stored by an earlier run.
    pub resumed: u64,
}

/// Reads and stores every piece of `obj` but the last, resuming after
/// what `pieces` (an earlier run's) hold. None: the object changed or
/// went away meanwhile; the caller reads it whole, as any object.
#[allow(clippy::too_many_arguments)]
pub async fn lead(
    client: &Client,
    bucket: &str,
    obj: &Listed,
    pieces: Option<&Vec<Piece>>,
    store: &Arc<Store>,
    cfg: &FetchConfig,
    fetched: &Arc<AtomicU64>,
    journal: &mut Journal,
    piece_bytes: u64,
    after_piece: &(dyn Fn() + Sync),
) -> Result<Option<Lead>> {
    let mut seg = {
        let st = store.clone();
        let (o, p) = (obj.clone(), pieces.cloned());
        tokio::task::spawn_blocking(move || resumed(&st, &o, p.as_ref()))
            .await
            .map_err(|e| DatasetError::Internal(e.to_string()))??
    };
    let resumed = seg.from;
    // A piece reads up to two maximal chunks past its stop (`fetch.rs`):
    // what is left after it must be more than that.
    let slack = 2 * u64::from(store.chunker().params().max) + 1;
    while obj.size - seg.from > piece_bytes + slack {
        let txn = Transaction::begin(Target::Shared(store.clone()))?;
        let writer = txn.writer().clone();
        let piece = Segment {
            from: seg.from,
            prefix: Arc::default(),
            stop_after: Some(piece_bytes),
        };
        let out = fetch::fetch(client, bucket, obj, &piece, store, &writer, cfg, fetched).await?;
        drop(writer);
        let Outcome::Cut { chunks, bytes } = out else {
            // Changed, gone, or shorter than listed: nothing of it is used.
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || txn.finish().map(drop))
            .await
            .map_err(|e| DatasetError::Internal(e.to_string()))??;
        journal.append_piece(Piece {
            key: obj.key.clone(),
            size: obj.size,
            etag: obj.etag.clone(),
            from: seg.from,
            chunks: chunks.clone(),
        })?;
        let mut prefix = Arc::unwrap_or_clone(std::mem::take(&mut seg.prefix));
        prefix.extend(chunks);
        seg.prefix = Arc::new(prefix);
        seg.from += bytes;
        after_piece();
    }
    Ok(Some(Lead { rest: seg, resumed }))
}
