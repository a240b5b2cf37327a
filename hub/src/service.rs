//! The gRPC service: each method checks the token, then works against the
//! bucket ([`Storage`]) and the local [`Cache`] of where objects are.

// gRPC handlers and their helpers return tonic::Status, which is large by design.
#![allow(clippy::result_large_err)]

use crate::metrics::METRICS;
use ds_proto::upload::Assembler;
use std::sync::Arc;

use bytes::Bytes;
use ds_format::{ObjectId, ObjectKind, PackId};
use ds_proto::v1::sync_server::Sync;
use ds_proto::v1::{
    CreateTokenReply, CreateTokenRequest, DeleteRefReply, DeleteRefRequest, GetObjectsReply,
    GetObjectsRequest, GetRefReply, GetRefRequest, HaveReply, HaveRequest, HelloReply,
    HelloRequest, ListRunsReply, ListRunsRequest, StoredObject, UpdateRefReply, UpdateRefRequest,
    UploadPackReply, UploadPackRequest,
};
use ds_proto::{MAX_BATCH, MAX_MESSAGE, MAX_PACK, PROTOCOL, REPLY_TARGET, bitmap, split_ids};
use ds_store::index::Location;
use ds_store::refs::validate_workspace;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, Grant, new_token};
use crate::cache::Cache;
use crate::error::HubError;
use crate::gc::GcView;
use crate::storage::Storage;
use crate::verify::verify_pack;

/// Ranges of one pack closer than this are fetched in one read.
const COALESCE_GAP: u64 = 256 << 10;
/// Stored bytes fetched from the bucket per step of a download.
const WINDOW: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct SyncService {
    storage: Storage,
    cache: Cache,
    gc: GcView,
    auth: Arc<Auth>,
    pub(crate) summaries: crate::runs::Summaries,
    uploads: Arc<crate::limits::Uploads>,
    downloads: Arc<crate::limits::Downloads>,
}

/// The one place a hub error becomes a gRPC status (see `error.rs`).
pub(crate) fn status(e: HubError) -> Status {
    use ds_store::StoreError as S;
    let m = e.to_string();
    match e {
        HubError::Refused(_) | HubError::Format(_) => Status::invalid_argument(m),
        HubError::RefConflict { .. } | HubError::GcBusy(_) => Status::failed_precondition(m),
        HubError::Stale(_) => Status::aborted(m),
        HubError::Corrupt(_) => Status::data_loss(m),
        HubError::Storage(_) | HubError::Transport(_) | HubError::Unreachable(_) => {
            Status::unavailable(m)
        }
        HubError::Rpc(s) => *s,
        HubError::Store(s) => match s {
            S::BadInput(_) | S::BadWorkspace { .. } | S::NoSuchPath(_) => {
                Status::invalid_argument(m)
            }
            S::Conflict(_) | S::RefConflict { .. } => Status::failed_precondition(m),
            S::Locked(_) => Status::unavailable(m),
            S::Missing { .. } | S::UnknownSnapshot(_) | S::UnknownWorkspace(_) => {
                Status::not_found(m)
            }
            S::Damaged { .. } | S::DamagedPack { .. } | S::Corrupt(_) => Status::data_loss(m),
            _ => Status::internal(m),
        },
        _ => Status::internal(m),
    }
}

fn ids_of(b: &[u8]) -> Result<Vec<ObjectId>, Status> {
    let ids = split_ids(b)
        .ok_or_else(|| Status::invalid_argument("ids must be a multiple of 32 bytes"))?;
    if ids.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "{} ids in one request; the limit is {MAX_BATCH}",
            ids.len()
        )));
    }
    Ok(ids.into_iter().map(ObjectId).collect())
}

fn one_id(b: &[u8], what: &str) -> Result<ObjectId, Status> {
    ObjectId::from_slice(b)
        .ok_or_else(|| Status::invalid_argument(format!("{what} must be a 32-byte id")))
}

fn opt_id(b: &[u8], what: &str) -> Result<Option<ObjectId>, Status> {
    if b.is_empty() {
        Ok(None)
    } else {
        one_id(b, what).map(Some)
    }
}

fn workspace_ok(ws: &str) -> Result<(), Status> {
    validate_workspace(ws).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl SyncService {
    pub fn new(storage: Storage, cache: Cache, auth: Arc<Auth>) -> Self {
        SyncService {
            gc: GcView::new(storage.clone(), cache.clone(), crate::gc::SETTLE),
            storage,
            cache,
            auth,
            summaries: Default::default(),
            uploads: Default::default(),
            downloads: Default::default(),
        }
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Sets hub gc's settle time (`ds hub --gc-settle`; see `gc::SETTLE`).
    pub fn with_gc_settle(mut self, settle: std::time::Duration) -> Self {
        self.gc = GcView::new(self.storage.clone(), self.cache.clone(), settle);
        self
    }

    /// Records a pack this hub wrote itself (hub gc's repacking).
    pub(crate) async fn add_to_cache(
        &self,
        id: PackId,
        entries: Vec<ds_format::pack::PackEntry>,
    ) -> crate::Result<()> {
        self.cache.add_pack(id, entries).await
    }

    pub(crate) fn gc_view(&self) -> &GcView {
        &self.gc
    }

    /// Locations of `ids` (None: not on the hub), refreshing the cache once
    /// if any is unknown.
    pub(crate) async fn locate_some(
        &self,
        ids: &[ObjectId],
    ) -> Result<Vec<Option<Location>>, Status> {
        // Deletions and moves by hub gc reach this cache through the view.
        self.gc.current().await.map_err(status)?;
        let mut found = self.cache.get_all(ids.to_vec()).await.map_err(status)?;
        if found.iter().any(Option::is_none) {
            self.cache.refresh(&self.storage).await.map_err(status)?;
            found = self.cache.get_all(ids.to_vec()).await.map_err(status)?;
        }
        if found.iter().any(Option::is_none) {
            // A pointer into a pack hub gc deleted, another copy elsewhere?
            let missing = ids
                .iter()
                .zip(&found)
                .filter(|(_, l)| l.is_none())
                .map(|(i, _)| *i)
                .collect();
            self.cache
                .reindex_for(&self.storage, missing)
                .await
                .map_err(status)?;
            found = self.cache.get_all(ids.to_vec()).await.map_err(status)?;
        }
        Ok(found)
    }

    pub(crate) async fn locate_all(&self, ids: &[ObjectId]) -> Result<Vec<Location>, Status> {
        self.locate(ids).await
    }

    /// The stored form of objects at known locations. A pack found gone
    /// (hub gc deleted it after this hub last read gc's state) is
    /// forgotten, and the objects are located again, once.
    pub(crate) async fn fetch(
        &self,
        ids: &[ObjectId],
        locs: &[Location],
    ) -> Result<Vec<StoredObject>, Status> {
        match fetch_window_raw(&self.storage, ids, locs).await {
            Ok(o) => Ok(o),
            Err(Fetch::Failed(s)) => Err(s),
            Err(Fetch::Gone(p)) => {
                self.gc.fresh().await.map_err(status)?;
                self.cache.forget_packs(vec![p]).await.map_err(status)?;
                let locs = self.locate(ids).await?;
                fetch_window(&self.storage, ids, &locs).await
            }
        }
    }

    /// Locations of `ids`, refreshing the cache once if any is unknown.
    async fn locate(&self, ids: &[ObjectId]) -> Result<Vec<Location>, Status> {
        let found = self.locate_some(ids).await?;
        ids.iter()
            .zip(found)
            .map(|(id, loc)| {
                loc.ok_or_else(|| Status::not_found(format!("the hub has no object {id}")))
            })
            .collect()
    }
}

/// The next message of an upload; an upload that sends nothing for
/// [`crate::limits::UPLOAD_IDLE`] is dropped.
async fn next_part(
    s: &mut Streaming<UploadPackRequest>,
) -> Result<Option<UploadPackRequest>, Status> {
    let idle = crate::limits::UPLOAD_IDLE;
    tokio::time::timeout(idle, s.message()).await.map_err(|_| {
        Status::deadline_exceeded(format!("the upload sent nothing for {} s", idle.as_secs()))
    })?
}

/// Why a window could not be read.
enum Fetch {
    /// The pack is not in the bucket (any more).
    Gone(PackId),
    Failed(Status),
}

async fn fetch_window(
    storage: &Storage,
    ids: &[ObjectId],
    locs: &[Location],
) -> Result<Vec<StoredObject>, Status> {
    fetch_window_raw(storage, ids, locs)
        .await
        .map_err(|f| match f {
            Fetch::Gone(p) => Status::unavailable(format!("pack {p} is gone (hub gc deleted it)")),
            Fetch::Failed(s) => s,
        })
}

/// Reads one window of objects from the bucket, coalescing nearby ranges of
/// the same pack into single reads.
async fn fetch_window_raw(
    storage: &Storage,
    ids: &[ObjectId],
    locs: &[Location],
) -> Result<Vec<StoredObject>, Fetch> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (locs[i].pack, locs[i].offset));
    let mut data: Vec<Option<Bytes>> = vec![None; ids.len()];
    let mut i = 0;
    while i < order.len() {
        let pack: PackId = locs[order[i]].pack;
        let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
        let mut members: Vec<(usize, usize)> = Vec::new(); // (object, range index)
        while i < order.len() && locs[order[i]].pack == pack {
            let l = &locs[order[i]];
            let (s, e) = (l.offset, l.offset + u64::from(l.stored_len));
            match ranges.last_mut() {
                Some(r) if s <= r.end + COALESCE_GAP => r.end = r.end.max(e),
                _ => ranges.push(s..e),
            }
            members.push((order[i], ranges.len() - 1));
            i += 1;
        }
        let got = storage
            .read_ranges(&pack, &ranges)
            .await
            .map_err(|e| match e {
                HubError::Storage(object_store::Error::NotFound { .. }) => Fetch::Gone(pack),
                e => Fetch::Failed(Status::unavailable(format!("reading pack {pack}: {e}"))),
            })?;
        for (obj, r) in members {
            let l = &locs[obj];
            let base = ranges[r].start;
            let s = (l.offset - base) as usize;
            let e = s + l.stored_len as usize;
            if e > got[r].len() {
                return Err(Fetch::Failed(Status::data_loss(format!(
                    "pack {pack} is shorter than its index"
                ))));
            }
            data[obj] = Some(got[r].slice(s..e));
        }
    }
    Ok(ids
        .iter()
        .zip(locs)
        .zip(data)
        .map(|((id, l), d)| StoredObject {
            id: id.0.to_vec(),
            kind: u32::from(l.kind as u8),
            stored: u32::from(l.stored as u8),
            raw_len: l.raw_len,
            data: d.expect("every object fetched").to_vec(),
        })
        .collect())
}

#[tonic::async_trait]
impl Sync for SyncService {
    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.auth.check(&req).await?;
        let v = req.get_ref().protocol;
        if v != PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "client speaks protocol {v}, this hub speaks {PROTOCOL}; upgrade the older side"
            )));
        }
        Ok(Response::new(HelloReply {
            protocol: PROTOCOL,
            max_message: MAX_MESSAGE as u64,
            max_batch: MAX_BATCH as u32,
            max_pack: MAX_PACK,
            max_object_plain: ds_format::check::MAX_PLAIN_OBJECT,
            max_plain_per_byte: ds_format::check::MAX_RATIO,
            hub_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn get_ref(&self, req: Request<GetRefRequest>) -> Result<Response<GetRefReply>, Status> {
        let grant = self.auth.check(&req).await?;
        let ws = &req.get_ref().workspace;
        workspace_ok(ws)?;
        grant.require(ws)?;
        let id = self.storage.get_ref(ws).await.map_err(status)?;
        Ok(Response::new(GetRefReply {
            snapshot: id.map(|i| i.0.to_vec()).unwrap_or_default(),
        }))
    }

    async fn have(&self, req: Request<HaveRequest>) -> Result<Response<HaveReply>, Status> {
        self.auth.check(&req).await?;
        let ids = ids_of(&req.get_ref().ids)?;
        let sight = self.gc.current().await.map_err(status)?;
        let mut bits = self
            .cache
            .held_all(ids.clone(), sight.clone())
            .await
            .map_err(status)?;
        if bits.iter().any(|b| !b) {
            // Another hub may have stored them since we last looked.
            self.cache
                .refresh_if_stale(&self.storage)
                .await
                .map_err(status)?;
            bits = self
                .cache
                .held_all(ids, sight.clone())
                .await
                .map_err(status)?;
        }
        Ok(Response::new(HaveReply {
            bitmap: bitmap(bits),
            gc_epoch: sight.epoch,
        }))
    }

    async fn upload_pack(
        &self,
        req: Request<Streaming<UploadPackRequest>>,
    ) -> Result<Response<UploadPackReply>, Status> {
        self.auth.check(&req).await?;
        let caller = crate::auth::bearer_hash(&req).unwrap_or_default();
        let mut stream = req.into_inner();
        let refused = |e: ds_proto::upload::UploadError| Status::invalid_argument(e.to_string());
        let mut upload = Assembler::start(next_part(&mut stream).await?).map_err(refused)?;
        // Room for it before a byte of it is read (see limits.rs).
        let _admitted = self.uploads.admit(&caller, upload.size()).await?;
        while let Some(m) = next_part(&mut stream).await? {
            upload.push(m).map_err(refused)?;
        }
        let (id, data) = upload.finish().map_err(refused)?;
        let size = data.len() as u64;
        let index = self.cache.index().clone();
        let sight = self.gc.current().await.map_err(status)?;
        let (data, verified) = tokio::task::spawn_blocking(move || {
            let v = verify_pack(&id, &data, &index, &sight);
            (data, v)
        })
        .await
        .map_err(|e| Status::internal(format!("verification task: {e}")))?;
        let verified = verified.map_err(|e| {
            METRICS.inc("ds_packs_refused_total", &[]);
            status(e)
        })?;
        METRICS.inc("ds_packs_verified_total", &[]);
        METRICS.add("ds_pack_bytes_total", &[], size);
        let unavailable = |e: HubError| Status::unavailable(format!("storing pack {id}: {e}"));
        let had = self.storage.has_pack(&id).await.map_err(unavailable)?;
        if !had {
            self.storage
                .put_pack_data(&id, Bytes::from(data))
                .await
                .map_err(unavailable)?;
        }
        // Afresh before committing: gc may have condemned what the pack
        // leans on since the view it was checked under (see gc/mod.rs).
        let mut sight = self.gc.fresh().await.map_err(status)?;
        if let Some(p) = verified.leaned_on.iter().find(|p| !sight.usable(p)) {
            return Err(status(HubError::Stale(format!(
                "hub gc condemned pack {} while pack {} that refers into it was uploading; \
                 push again",
                p.short(),
                id.short()
            ))));
        }
        if had && !sight.usable(&id) {
            sight = self.gc.revive(id).await.map_err(status)?;
        }
        if !had {
            self.storage
                .commit_pack(&id, size, &verified.trailer)
                .await
                .map_err(unavailable)?;
        }
        let objects = verified.entries.len() as u64;
        self.cache
            .add_pack(id, verified.entries)
            .await
            .map_err(status)?;
        Ok(Response::new(UploadPackReply {
            objects,
            stored: !had,
            gc_epoch: sight.epoch,
        }))
    }

    type GetObjectsStream = ReceiverStream<Result<GetObjectsReply, Status>>;

    async fn get_objects(
        &self,
        req: Request<GetObjectsRequest>,
    ) -> Result<Response<Self::GetObjectsStream>, Status> {
        self.auth.check(&req).await?;
        let ids = ids_of(&req.get_ref().ids)?;
        // Bounded work per byte requested: each object once per request
        // (clients never ask twice; ds_sync treats a repeat as a protocol
        // error), or 32 bytes of request would buy a whole object each.
        let mut distinct = std::collections::HashSet::with_capacity(ids.len());
        if let Some(dup) = ids.iter().find(|i| !distinct.insert(**i)) {
            return Err(Status::invalid_argument(format!(
                "object {dup} is asked for more than once in one request"
            )));
        }
        let open = self
            .downloads
            .open(&crate::auth::bearer_hash(&req).unwrap_or_default())?;
        let locs = self.locate(&ids).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let svc = self.clone();
        // A client that takes no reply for DOWNLOAD_STALL loses the stream.
        let send = move |tx: tokio::sync::mpsc::Sender<Result<GetObjectsReply, Status>>,
                         r: Result<GetObjectsReply, Status>| async move {
            matches!(
                tokio::time::timeout(crate::limits::DOWNLOAD_STALL, tx.send(r)).await,
                Ok(Ok(()))
            )
        };
        tokio::spawn(async move {
            let _open = open;
            let mut start = 0;
            while start < ids.len() {
                let mut end = start;
                let mut bytes = 0u64;
                while end < ids.len() && (end == start || bytes < WINDOW) {
                    bytes += u64::from(locs[end].stored_len);
                    end += 1;
                }
                let objs = match svc.fetch(&ids[start..end], &locs[start..end]).await {
                    Ok(o) => o,
                    Err(e) => {
                        send(tx, Err(e)).await;
                        return;
                    }
                };
                let mut reply = GetObjectsReply::default();
                let mut size = 0;
                for o in objs {
                    size += o.data.len() + 64;
                    reply.objects.push(o);
                    if size >= REPLY_TARGET {
                        if !send(tx.clone(), Ok(std::mem::take(&mut reply))).await {
                            return;
                        }
                        size = 0;
                    }
                }
                if !reply.objects.is_empty() && !send(tx.clone(), Ok(reply)).await {
                    return;
                }
                start = end;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn update_ref(
        &self,
        req: Request<UpdateRefRequest>,
    ) -> Result<Response<UpdateRefReply>, Status> {
        let grant = self.auth.check(&req).await?;
        let r = req.get_ref();
        workspace_ok(&r.workspace)?;
        grant.require(&r.workspace)?;
        let new = one_id(&r.new, "new")?;
        let expected = opt_id(&r.expected, "expected")?;
        // The fence against hub gc (gc/mod.rs): answers given before a
        // condemnation may name objects that are about to go.
        let sight = self.gc.fresh().await.map_err(status)?;
        if r.gc_epoch < sight.epoch {
            return Err(status(HubError::Stale(format!(
                "hub gc condemned unreachable packs while this push ran (gc epoch {} → {}); \
                 push again (ds push does so by itself)",
                r.gc_epoch, sight.epoch
            ))));
        }
        let missing = || {
            Status::failed_precondition(format!(
                "the hub does not hold snapshot {new}: upload its objects before moving a ref to it"
            ))
        };
        let loc = self.locate(&[new]).await.map_err(|_| missing())?;
        if !sight.usable(&loc[0].pack) {
            return Err(missing());
        }
        if loc[0].kind != ObjectKind::Snapshot {
            return Err(Status::invalid_argument(format!("{new} is not a snapshot")));
        }
        let prev = self
            .storage
            .swap_ref(&r.workspace, expected, new, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateRefReply {
            previous: prev.map(|p| p.0.to_vec()).unwrap_or_default(),
        }))
    }

    async fn gc(
        &self,
        req: Request<ds_proto::v1::GcRequest>,
    ) -> Result<Response<ds_proto::v1::GcReply>, Status> {
        let grant = self.auth.check(&req).await?;
        grant.require_admin()?;
        let r = req.get_ref();
        let grace = std::time::Duration::from_secs(r.grace_seconds);
        // On its own task: a client that goes away does not stop a gc
        // half way (it would finish on a rerun, but hold the lease meanwhile).
        let svc = self.clone();
        let opts = crate::gc::run::Options {
            grace,
            dry_run: r.dry_run,
            max_unused: match r.max_unused {
                m if m > 0.0 && m <= 1.0 => m,
                0.0 => crate::gc::run::MAX_UNUSED,
                m => {
                    return Err(Status::invalid_argument(format!(
                        "max_unused must be a fraction in (0, 1], not {m}"
                    )));
                }
            },
        };
        let rep = tokio::spawn(async move { crate::gc::run::collect(&svc, opts).await })
            .await
            .map_err(|e| Status::internal(format!("the gc task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(rep))
    }

    async fn delete_ref(
        &self,
        req: Request<DeleteRefRequest>,
    ) -> Result<Response<DeleteRefReply>, Status> {
        let grant = self.auth.check(&req).await?;
        grant.require_admin()?;
        let r = req.get_ref();
        workspace_ok(&r.workspace)?;
        let expected = one_id(&r.expected, "expected")?;
        self.storage
            .delete_ref(&r.workspace, expected)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteRefReply {}))
    }

    type ListRunsStream = ReceiverStream<Result<ListRunsReply, Status>>;

    async fn list_runs(
        &self,
        req: Request<ListRunsRequest>,
    ) -> Result<Response<Self::ListRunsStream>, Status> {
        let grant = self.auth.check(&req).await?;
        let ws = &req.get_ref().workspace;
        let heads = if ws.is_empty() {
            self.storage
                .list_refs()
                .await
                .map_err(status)?
                .into_iter()
                .filter(|(w, _)| grant.may_use(w))
                .map(|(_, h)| h)
                .collect()
        } else {
            workspace_ok(ws)?;
            grant.require(ws)?;
            match self.storage.get_ref(ws).await.map_err(status)? {
                Some(h) => vec![h],
                None => {
                    return Err(Status::not_found(format!(
                        "the hub has no workspace {ws:?}"
                    )));
                }
            }
        };
        let runs = self.runs_of(heads).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let svc = self.clone();
        tokio::spawn(async move { svc.send_runs(runs, tx).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenReply>, Status> {
        self.auth.check(&req).await?.require_admin()?;
        let r = req.get_ref();
        let runner = if r.runner.is_empty() {
            None
        } else {
            let name = ds_proto::RunnerName::new(&r.runner)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !r.workspaces.is_empty() {
                return Err(Status::invalid_argument(
                    "a runner token names no workspaces (each task brings its own token)",
                ));
            }
            Some(name.to_string())
        };
        if runner.is_none() && r.workspaces.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one workspace (or *)",
            ));
        }
        for w in &r.workspaces {
            if w != "*" {
                workspace_ok(w)?;
            }
        }
        let token = new_token().map_err(status)?;
        let grant = Grant {
            admin: false,
            workspaces: r.workspaces.clone(),
            comment: r.comment.clone(),
            runner,
        };
        self.auth.register(&token, &grant).await.map_err(status)?;
        Ok(Response::new(CreateTokenReply { token }))
    }
}
