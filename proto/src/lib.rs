//! The ds sync and task protocols: generated gRPC types and services, plus
//! the protocol constants both sides agree on.
//!
//! The schema is `proto/ds/sync/v1/sync.proto`; its comments are the
//! protocol's documentation. Generated code lives in `v1`. Hand-written code
//! here is limited to limits and id packing, so client and hub cannot drift.
#![forbid(unsafe_code)]

mod ids;
pub mod json;
pub mod mounts;
pub mod upload;
pub use ids::{BadName, RunnerName, TaskId};

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("ds.sync.v1");
}

/// The task protocol (`proto/ds/runner/v1/runner.proto`): runners, tasks,
/// logs.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod runner {
    tonic::include_proto!("ds.runner.v1");
}

/// Where the docker executor mounts the workspace in a container (the
/// workload's `$HOME` and working directory).
pub const HOME_IN_CONTAINER: &str = "/home/ds";

/// The task protocol's version.
pub const TASK_PROTOCOL: u32 = 1;
/// Most lines in one `LogBatch`, and most bytes of text in one.
pub const MAX_LOG_BATCH_LINES: usize = 4096;
pub const MAX_LOG_BATCH_BYTES: usize = 1 << 20;
/// Longest log line kept whole; a longer one is split into several lines of
/// this size (never dropped).
pub const MAX_LOG_LINE: usize = 256 << 10;
/// Bytes of a relayed connection a runner may have sent and the hub not
/// yet passed on (see `TunnelFrame.acked`).
pub const TUNNEL_CREDIT: u64 = 128 << 10;
/// Largest message on the task stream and the task calls.
pub const MAX_TASK_MESSAGE: usize = 4 << 20;

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;
/// Largest gRPC message either side accepts (decoding), in bytes.
pub const MAX_MESSAGE: usize = 8 << 20;
/// Size of the data pieces of a pack upload.
pub const UPLOAD_PIECE: usize = 1 << 20;
/// Most ids in one `Have` or `GetObjects` request (32 bytes each: 2 MiB).
pub const MAX_BATCH: usize = 1 << 16;
/// Largest pack the hub accepts.
pub const MAX_PACK: u64 = 256 << 20;
/// HTTP/2 flow-control windows both sides advertise (the 64 KiB default
/// would let a few windows of a pack travel per round trip).
pub const STREAM_WINDOW: u32 = 16 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Target bytes of objects in one `GetObjects` reply message.
pub const REPLY_TARGET: usize = 4 << 20;

/// Splits concatenated 32-byte ids; `None` if the length is not a multiple.
pub fn split_ids(b: &[u8]) -> Option<Vec<[u8; 32]>> {
    if !b.len().is_multiple_of(32) {
        return None;
    }
    Some(
        b.chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunk"))
            .collect(),
    )
}

/// Concatenates ids for a request.
pub fn join_ids<'a>(ids: impl IntoIterator<Item = &'a [u8; 32]>) -> Vec<u8> {
    ids.into_iter().flat_map(|i| i.iter().copied()).collect()
}

/// One bit per id, least significant bit first.
pub fn bitmap(bits: impl IntoIterator<Item = bool>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, b) in bits.into_iter().enumerate() {
        if i % 8 == 0 {
            out.push(0);
        }
        if b {
            *out.last_mut().expect("pushed above") |= 1 << (i % 8);
        }
    }
    out
}

/// Reads bit `i` of a bitmap (missing bytes read as 0).
pub fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_round_trips() {
        let bits: Vec<bool> = (0..21).map(|i| i % 3 == 0).collect();
        let m = bitmap(bits.iter().copied());
        assert_eq!(m.len(), 3);
        for (i, b) in bits.iter().enumerate() {
            assert_eq!(bit(&m, i), *b);
        }
        assert!(!bit(&m, 100));
    }

    #[test]
    fn ids_round_trip_and_reject_ragged_input() {
        let ids = [[1u8; 32], [2u8; 32]];
        assert_eq!(split_ids(&join_ids(&ids)).unwrap(), ids);
        assert!(split_ids(&[0u8; 33]).is_none());
    }
}
