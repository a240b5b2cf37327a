//! Snapshots read on the hub for the REST API: a workspace's log, newest
//! first, a page at a time.
//!
//! The walk is git log's: a queue ordered by time, the newest popped, its
//! parents read (all of them in one batched read) and queued. Every object
//! is checked against its id ([`crate::runs::plaintexts`]). History the
//! hub does not hold (a push that sent only part of it cannot happen, but a
//! hub may have lost a pack) ends the walk there instead of failing it.

// gRPC handlers and their helpers return tonic::Status, which is large by design.
#![allow(clippy::result_large_err)]

use std::collections::{BinaryHeap, HashMap, HashSet};

use ds_format::snapshot::Snapshot;
use ds_format::{ObjectId, ObjectKind};
use tonic::Status;

use crate::runs::plaintexts;
use crate::service::SyncService;

/// Most snapshots in one page.
pub const MAX_PAGE: usize = 1000;

impl SyncService {
    /// The snapshots among `ids` the hub holds, decoded, in `ids`' order.
    pub(crate) async fn snapshots(
        &self,
        ids: &[ObjectId],
    ) -> Result<Vec<(ObjectId, Snapshot)>, Status> {
        let held = self.locate_some(ids).await?;
        let (want, locs): (Vec<_>, Vec<_>) = ids
            .iter()
            .zip(held)
            .filter_map(|(id, l)| {
                l.filter(|l| l.kind == ObjectKind::Snapshot)
                    .map(|l| (*id, l))
            })
            .unzip();
        let mut out = Vec::with_capacity(want.len());
        for w in (0..want.len()).step_by(ds_proto::MAX_BATCH) {
            let end = (w + ds_proto::MAX_BATCH).min(want.len());
            let objs = self.fetch(&want[w..end], &locs[w..end]).await?;
            for (id, raw) in plaintexts(objs, ObjectKind::Snapshot)? {
                let s = Snapshot::decode(&raw)
                    .map_err(|e| Status::data_loss(format!("snapshot {id}: {e}")))?;
                out.push((id, s));
            }
        }
        Ok(out)
    }

    /// Up to `limit` snapshots of the history from `head`, newest first,
    /// starting after snapshot `after` (None: from the newest); and whether
    /// there are more.
    pub(crate) async fn log(
        &self,
        head: ObjectId,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<(Vec<(ObjectId, Snapshot)>, bool), Status> {
        let mut seen = HashSet::from([head]);
        let mut queue: BinaryHeap<(i64, ObjectId)> = BinaryHeap::new();
        let mut read: HashMap<ObjectId, Snapshot> = HashMap::new();
        for (id, s) in self.snapshots(&[head]).await? {
            queue.push((s.time_ns, id));
            read.insert(id, s);
        }
        let mut skipping = after.is_some();
        let mut page = Vec::new();
        while let Some((_, id)) = queue.pop() {
            if page.len() == limit {
                return Ok((page, true));
            }
            let s = read.remove(&id).expect("queued snapshots were read");
            let parents: Vec<ObjectId> = s
                .parents
                .iter()
                .copied()
                .filter(|p| seen.insert(*p))
                .collect();
            if !parents.is_empty() {
                for (pid, p) in self.snapshots(&parents).await? {
                    queue.push((p.time_ns, pid));
                    read.insert(pid, p);
                }
            }
            if skipping {
                skipping = Some(id) != after;
                continue;
            }
            page.push((id, s));
        }
        if skipping {
            return Err(Status::invalid_argument(format!(
                "snapshot {} is not in this history (a stale page cursor?)",
                after.map(|a| a.to_hex()).unwrap_or_default()
            )));
        }
        Ok((page, false))
    }
}

/// Most snapshots of a history searched for a `--dataset NAME@PREFIX`.
const MAX_RESOLVE: usize = 100_000;

impl SyncService {
    /// The snapshot `at` names in workspace `name`'s history: its head when
    /// `at` is empty, else the one snapshot of the history whose id starts
    /// with `at` (a task may only name versions of what it was allowed).
    pub(crate) async fn resolve_in(&self, name: &str, at: &str) -> Result<ObjectId, Status> {
        let head = self
            .storage()
            .get_ref(name)
            .await
            .map_err(crate::service::status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "the hub has no dataset {name:?} (mirror it with `ds dataset mirror … \
                     --dataset {name}` and push it)"
                ))
            })?;
        if at.is_empty() {
            return Ok(head);
        }
        let want = at.to_ascii_lowercase();
        let (page, more) = self.log(head, None, MAX_RESOLVE).await?;
        let found: Vec<ObjectId> = page
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| id.to_hex().starts_with(&want))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] if more => Err(Status::not_found(format!(
                "no snapshot {at} among the newest {MAX_RESOLVE} of {name:?}: give the full id"
            ))),
            [] => Err(Status::not_found(format!(
                "dataset {name:?} has no snapshot {at} (see `ds log {name}`)"
            ))),
            many => Err(Status::invalid_argument(format!(
                "{at} is ambiguous in {name:?}: {} snapshots start with it; give more digits",
                many.len()
            ))),
        }
    }
}
