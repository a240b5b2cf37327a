//! Chunking a byte stream into a transaction's packs: what a snapshot does
//! with one open file, and what a dataset mirror does with one object as it
//! downloads (never a full local copy).
//!
//! The stream is read in big buffers, cut by FastCDC on the calling thread,
//! and its chunks hashed and compressed in parallel (rayon); chunks reach the
//! pack writer as ranges of the shared buffer, never copied, and in stream
//! order, so a file's new chunks lie back to back in its packs (a mount then
//! serves a sequential read straight from the mapped pack, and a restore
//! reads packs in order). A chunk repeated within one buffer (a run of
//! zeros: a sparse file's hole) is compressed once.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Arc;

use ds_format::chunker::Chunker;
use ds_format::manifest::{FileRef, ManifestBuilder};
use ds_format::{ObjectId, ObjectKind};
use rayon::prelude::*;

use crate::Result;
use crate::writer::{Encoded, PackWriter, Payload};

/// The read buffer for a store's chunker: big enough that parallel hashing
/// pays, and several maximal chunks long.
pub fn buf_size(chunker: &Chunker) -> usize {
    (8 << 20).max(4 * chunker.params().max as usize)
}

/// Stores everything `r` yields as one file's content and returns its
/// manifest reference. `size_hint` (the expected length, or 0) only sizes
/// the first read. `on_bytes` is told of every buffer's bytes as they are
/// stored. The outer error is the store's (fatal); the inner one the
/// stream's (a read that failed: nothing referenced was written).
pub fn store_stream(
    writer: &PackWriter,
    chunker: &Chunker,
    r: &mut dyn Read,
    size_hint: u64,
    buf_size: usize,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<io::Result<FileRef>> {
    let whole = store_stream_from(writer, chunker, r, size_hint, buf_size, &[], None, on_bytes)?;
    Ok(whole.map(|s| match s {
        Streamed::Whole(f) => f,
        Streamed::Cut { .. } => unreachable!("no stop was asked for"),
    }))
}

/// How [`store_stream_from`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streamed {
    /// The stream's end: the file's manifest (prefix included).
    Whole(FileRef),
    /// Stopped at the first cut past `stop_after` bytes: the chunks stored
    /// in order and the bytes they hold. The rest of the stream is left
    /// (what was read past the cut is dropped).
    Cut {
        chunks: Vec<(ObjectId, u64)>,
        bytes: u64,
    },
}

/// [`store_stream`] for a file stored in pieces (a dataset mirror's big
/// object, each piece durable before the next): `prefix` is the file's
/// chunks before this stream, already stored (they go into the manifest,
/// and are not read); with `stop_after`, the stream stops at the first cut
/// past that many bytes. A cut is where chunking restarts, so a stream
/// resumed at a cut's offset is cut exactly as one uninterrupted stream.
#[allow(clippy::too_many_arguments)]
pub fn store_stream_from(
    writer: &PackWriter,
    chunker: &Chunker,
    r: &mut dyn Read,
    size_hint: u64,
    buf_size: usize,
    prefix: &[(ObjectId, u64)],
    stop_after: Option<u64>,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<io::Result<Streamed>> {
    let mut builder = ManifestBuilder::default();
    let mut piece: Vec<(ObjectId, u64)> = Vec::new();
    let mut stored = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    let mut first = true;
    let mut lens = Vec::new();
    let emit_node = |id, bytes| {
        // A failed writer also fails every later chunk put (which is
        // propagated) and `WriterSession::finish`, so nothing is lost here.
        let _ = writer.put(ObjectKind::FileNode, id, Payload::Owned(bytes));
    };
    let mut emit = emit_node;
    for (id, len) in prefix {
        builder.push(*id, *len, &mut emit);
    }
    loop {
        let mut want = if first && size_hint < buf_size as u64 {
            size_hint as usize + 1
        } else {
            buf_size
        };
        // A piece reads little past its stop: what reaches it, and one
        // maximal chunk more (enough to find the cut after it).
        if let Some(limit) = stop_after {
            let max = chunker.params().max as usize;
            let need = (limit.saturating_sub(stored) as usize).saturating_add(max);
            want = want.min(need.saturating_sub(carry.len()).max(max));
        }
        first = false;
        let mut buf = Vec::with_capacity(carry.len() + want);
        buf.append(&mut carry);
        let got = match r.take(want as u64).read_to_end(&mut buf) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        let eof = got < want;
        lens.clear();
        let used = chunker.split(&buf, eof, &mut lens);
        let buf = Arc::new(buf);
        let mut ranges = Vec::with_capacity(lens.len());
        let mut off = 0;
        for l in &lens {
            ranges.push(off..off + l);
            off += l;
        }
        let par = ranges.len() > 2;
        let hash = |r: &std::ops::Range<usize>| chunker.chunk_id(&buf[r.clone()]);
        let hashes: Vec<ObjectId> = if par {
            ranges.par_iter().map(hash).collect()
        } else {
            ranges.iter().map(hash).collect()
        };
        let mut seen = HashSet::new();
        let fresh: Vec<bool> = hashes.iter().map(|id| seen.insert(*id)).collect();
        let encode = |i: usize| -> Result<(ObjectId, Option<Encoded>)> {
            let (id, r) = (hashes[i], &ranges[i]);
            if !fresh[i] || writer.contains(&id)? {
                return Ok((id, None));
            }
            let payload = Payload::Shared(buf.clone(), r.clone());
            Ok((id, Some(writer.encode(ObjectKind::Chunk, id, payload)?)))
        };
        let ids: Vec<(ObjectId, Option<Encoded>)> = if par {
            (0..ranges.len())
                .into_par_iter()
                .map(encode)
                .collect::<Result<_>>()?
        } else {
            (0..ranges.len()).map(encode).collect::<Result<_>>()?
        };
        for ((id, obj), r) in ids.into_iter().zip(&ranges) {
            if let Some(obj) = obj {
                writer.put_encoded(obj)?;
            }
            builder.push(id, r.len() as u64, &mut emit);
            if stop_after.is_some() {
                piece.push((id, r.len() as u64));
            }
        }
        on_bytes(used as u64);
        stored += used as u64;
        if eof {
            debug_assert_eq!(used, buf.len());
            break;
        }
        if let Some(limit) = stop_after
            && stored >= limit
        {
            return Ok(Ok(Streamed::Cut {
                chunks: piece,
                bytes: stored,
            }));
        }
        carry = buf[used..].to_vec();
    }
    Ok(Ok(Streamed::Whole(builder.finish(&mut emit))))
}
