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
    let mut builder = ManifestBuilder::default();
    let mut carry: Vec<u8> = Vec::new();
    let mut first = true;
    let mut lens = Vec::new();
    let emit_node = |id, bytes| {
        // A failed writer also fails every later chunk put (which is
        // propagated) and `WriterSession::finish`, so nothing is lost here.
        let _ = writer.put(ObjectKind::FileNode, id, Payload::Owned(bytes));
    };
    let mut emit = emit_node;
    loop {
        let want = if first && size_hint < buf_size as u64 {
            size_hint as usize + 1
        } else {
            buf_size
        };
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
        }
        on_bytes(used as u64);
        if eof {
            debug_assert_eq!(used, buf.len());
            break;
        }
        carry = buf[used..].to_vec();
    }
    Ok(Ok(builder.finish(&mut emit)))
}
