//! `ListRuns`: the run records in a workspace's history, read from the
//! bucket without walking any tree.
//!
//! The walk follows snapshot parents one level per step (every snapshot of
//! a level fetched in one coalesced read), and reads the run objects the
//! snapshots name in bulk. Every object is rehashed against its id before
//! use, as on every read path. Run records are read and sent a batch at a
//! time, so a listing holds its list of ids, not its records. Snapshots
//! never change, so what the walk
//! learns of each (time, parents, runs) is kept in a bounded in-memory map:
//! a second listing of a growing workspace reads only its new snapshots.

// gRPC handlers and their helpers return tonic::Status, which is large by design.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ds_format::check::decode_stored;
use ds_format::snapshot::Snapshot;
use ds_format::{ObjectId, ObjectKind};
use ds_proto::REPLY_TARGET;
use ds_proto::v1::{ListRunsReply, RunEntry, StoredObject};
use tonic::Status;

use crate::service::SyncService;

/// How many snapshots' summaries the hub keeps (about 100 bytes each,
/// plus their run ids).
const SUMMARIES: usize = 1 << 18;

/// What a listing needs of one snapshot.
#[derive(Debug)]
pub(crate) struct Summary {
    time_ns: i64,
    parents: Vec<ObjectId>,
    runs: Vec<ObjectId>,
}

/// Snapshot summaries already read, shared by every call.
#[derive(Debug, Default, Clone)]
pub(crate) struct Summaries(Arc<Mutex<HashMap<ObjectId, Arc<Summary>>>>);

impl Summaries {
    fn get(&self, id: &ObjectId) -> Option<Arc<Summary>> {
        self.0.lock().expect("not poisoned").get(id).cloned()
    }

    fn put(&self, id: ObjectId, s: Arc<Summary>) {
        let mut m = self.0.lock().expect("not poisoned");
        if m.len() >= SUMMARIES {
            // Immutable facts: forgetting them costs a re-read, nothing else.
            m.clear();
        }
        m.insert(id, s);
    }
}

/// The plaintext of fetched objects, each checked against its id.
pub(crate) fn plaintexts(
    objs: Vec<StoredObject>,
    kind: ObjectKind,
) -> Result<Vec<(ObjectId, Vec<u8>)>, Status> {
    objs.into_iter()
        .map(|o| {
            let id = ObjectId::from_slice(&o.id)
                .ok_or_else(|| Status::internal("an object without an id"))?;
            let stored = match o.stored {
                0 => ds_format::pack::Stored::Raw,
                _ => ds_format::pack::Stored::Zstd,
            };
            let raw = decode_stored(stored, &o.data, o.raw_len)
                .map_err(|e| Status::data_loss(format!("{} {id}: {e}", kind.name())))?;
            if kind.hash(&raw) != id || o.kind != u32::from(kind as u8) {
                return Err(Status::data_loss(format!(
                    "{} {id} in the bucket does not match its id",
                    kind.name()
                )));
            }
            Ok((id, raw))
        })
        .collect()
}

impl SyncService {
    /// Every run in the history of `heads`, newest first: (carrying
    /// snapshot, its time, run id). Only snapshot objects are read.
    pub(crate) async fn runs_of(
        &self,
        heads: Vec<ObjectId>,
    ) -> Result<Vec<(ObjectId, i64, ObjectId)>, Status> {
        let mut seen: HashSet<ObjectId> = HashSet::new();
        let mut level = heads;
        let mut found: Vec<(i64, usize, ObjectId, ObjectId)> = Vec::new();
        while !level.is_empty() {
            level.retain(|id| seen.insert(*id));
            let mut known = Vec::new();
            let mut unknown = Vec::new();
            for id in level.drain(..) {
                match self.summaries.get(&id) {
                    Some(s) => known.push((id, s)),
                    None => unknown.push(id),
                }
            }
            if !unknown.is_empty() {
                // History the hub does not hold ends the walk there.
                let held = self.locate_some(&unknown).await?;
                let (ids, locs): (Vec<_>, Vec<_>) = unknown
                    .iter()
                    .zip(held)
                    .filter_map(|(id, l)| {
                        l.filter(|l| l.kind == ObjectKind::Snapshot)
                            .map(|l| (*id, l))
                    })
                    .unzip();
                let objs = self.fetch(&ids, &locs).await?;
                for (id, raw) in plaintexts(objs, ObjectKind::Snapshot)? {
                    let s = Snapshot::decode(&raw)
                        .map_err(|e| Status::data_loss(format!("snapshot {id}: {e}")))?;
                    let sum = Arc::new(Summary {
                        time_ns: s.time_ns,
                        parents: s.parents,
                        runs: s.runs,
                    });
                    self.summaries.put(id, sum.clone());
                    known.push((id, sum));
                }
            }
            for (id, s) in known {
                for (i, r) in s.runs.iter().enumerate() {
                    found.push((s.time_ns, i, id, *r));
                }
                level.extend(s.parents.iter().copied());
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse((f.0, f.1)));
        Ok(found
            .into_iter()
            .map(|(t, _, snap, run)| (snap, t, run))
            .collect())
    }

    /// Sends the records of `runs` (in order) as replies of about
    /// [`REPLY_TARGET`] bytes, each record read as its reply is built and
    /// checked against its id.
    pub(crate) async fn send_runs(
        &self,
        runs: Vec<(ObjectId, i64, ObjectId)>,
        tx: tokio::sync::mpsc::Sender<Result<ListRunsReply, Status>>,
    ) {
        if runs.is_empty() {
            let _ = tx.send(Ok(ListRunsReply::default())).await;
            return;
        }
        for window in runs.chunks(ds_proto::MAX_BATCH) {
            let ids: Vec<ObjectId> = window.iter().map(|r| r.2).collect();
            let locs = match self.locate_all(&ids).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut start = 0;
            while start < window.len() {
                let mut end = start;
                let mut bytes = 0usize;
                while end < window.len() && (end == start || bytes < REPLY_TARGET) {
                    bytes += locs[end].raw_len as usize;
                    end += 1;
                }
                let reply = self
                    .fetch(&ids[start..end], &locs[start..end])
                    .await
                    .and_then(|objs| plaintexts(objs, ObjectKind::Run))
                    .map(|bodies| ListRunsReply {
                        runs: window[start..end]
                            .iter()
                            .zip(bodies)
                            .map(|((snap, t, _), (_, run))| RunEntry {
                                snapshot: snap.0.to_vec(),
                                snapshot_time_ns: *t,
                                run,
                            })
                            .collect(),
                    });
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
                start = end;
            }
        }
    }
}

impl SyncService {
    /// The records of `runs` (as [`SyncService::runs_of`] lists them), in
    /// order, each checked against its id.
    pub(crate) async fn run_records(
        &self,
        runs: &[(ObjectId, i64, ObjectId)],
    ) -> Result<Vec<ds_format::run::Run>, Status> {
        let ids: Vec<ObjectId> = runs.iter().map(|r| r.2).collect();
        let mut out = Vec::with_capacity(ids.len());
        for w in ids.chunks(ds_proto::MAX_BATCH) {
            let locs = self.locate_all(w).await?;
            for (id, raw) in plaintexts(self.fetch(w, &locs).await?, ObjectKind::Run)? {
                out.push(
                    ds_format::run::Run::decode(&raw)
                        .map_err(|e| Status::data_loss(format!("run {id}: {e}")))?,
                );
            }
        }
        Ok(out)
    }
}
