//! The client end of sync: push, pull and clone between a local store and
//! a hub.
//!
//! Both directions first compare root hashes, then descend the object graph
//! one level per round trip ([`ds_store::dag`]), asking only about children
//! of objects the other side lacks. Objects are written children-first
//! (packs in order on push, [`dag::post_order`] on pull), so an interrupted
//! transfer leaves both sides holding only complete subtrees, and a retry
//! skips everything that landed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use ds_format::pack::Stored;
use ds_format::pack::{HEADER, PackEntry, encode_trailer};
use ds_format::{ObjectId, ObjectKind, PackId};
use ds_proto::v1::sync_client::SyncClient;
use ds_proto::v1::{
    CreateTokenRequest, GetObjectsRequest, GetRefRequest, HaveRequest, HelloRequest, PackHeader,
    UpdateRefRequest, UploadPackRequest, upload_pack_request,
};
use ds_proto::{MAX_MESSAGE, PROTOCOL, UPLOAD_PIECE, bit, join_ids};
use ds_store::writer::{self, Payload};
use ds_store::{Store, dag};
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::error::{HubError, Result};

/// Adds the bearer token to every request.
#[derive(Debug, Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    /// # Panics
    /// If the token holds characters an HTTP header cannot (tokens are hex).
    pub fn new(token: &str) -> Bearer {
        Bearer(
            format!("Bearer {token}")
                .parse()
                .expect("token is header-safe"),
        )
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A connection to a hub, counting round trips.
#[derive(Debug)]
pub struct Remote {
    client: SyncClient<InterceptedService<Channel, Bearer>>,
    max_batch: usize,
    pub round_trips: u64,
}

/// What the client says it is doing, for progress bars.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// Asked the other side about `asked` objects at depth `level`.
    Level { level: usize, asked: usize },
    /// About to transfer `objects` objects, `chunks` of them chunks.
    Transfer { objects: u64, chunks: u64 },
    /// Moved `bytes` more bytes and `chunks` more chunks.
    Moved { bytes: u64, chunks: u64 },
}

pub type Progress<'a> = &'a (dyn Fn(Event) + Sync);

fn rpc(e: Status) -> HubError {
    e.into()
}

impl Remote {
    /// Connects and checks the protocol version. `https://` URLs use TLS,
    /// trusting the system's CAs and `ca` (PEM) when given.
    pub async fn connect(url: &str, token: &str, ca: Option<&Path>) -> Result<Remote> {
        crate::install_crypto_provider();
        let mut ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| HubError::Invalid(format!("hub URL {url:?}: {e}")))?
            .initial_stream_window_size(ds_proto::STREAM_WINDOW)
            .initial_connection_window_size(ds_proto::CONNECTION_WINDOW)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            // The system's trust store, plus a private CA when given.
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = ca {
                let pem = std::fs::read(ca).map_err(|source| HubError::Io {
                    path: ca.to_path_buf(),
                    source,
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            ep = ep.tls_config(tls)?;
        }
        let channel = ep.connect().await.map_err(|e| {
            // tonic's own message is just "transport error": say why.
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            HubError::Invalid(format!("cannot reach the hub at {url}: {why}"))
        })?;
        let header = format!("Bearer {token}").parse().map_err(|_| {
            HubError::Invalid("the token contains characters a header cannot".into())
        })?;
        let client = SyncClient::with_interceptor(channel, Bearer(header))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut r = Remote {
            client,
            max_batch: ds_proto::MAX_BATCH,
            round_trips: 0,
        };
        let hello = r
            .client
            .hello(HelloRequest { protocol: PROTOCOL })
            .await
            .map_err(rpc)?
            .into_inner();
        r.round_trips += 1;
        r.max_batch = (hello.max_batch as usize).clamp(1, ds_proto::MAX_BATCH);
        Ok(r)
    }

    pub async fn get_ref(&mut self, workspace: &str) -> Result<Option<ObjectId>> {
        let r = self
            .client
            .get_ref(GetRefRequest {
                workspace: workspace.into(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        self.round_trips += 1;
        Ok(ObjectId::from_slice(&r.snapshot))
    }

    /// Which of `ids` the hub holds (with their subtrees).
    pub async fn have(&mut self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(self.max_batch) {
            let r = self
                .client
                .have(HaveRequest {
                    ids: join_ids(batch.iter().map(|i| &i.0)),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            self.round_trips += 1;
            out.extend((0..batch.len()).map(|i| bit(&r.bitmap, i)));
        }
        Ok(out)
    }

    /// Uploads one pack; returns whether the hub stored it (false: it had it).
    pub async fn upload_pack(&mut self, id: &PackId, pack: Vec<u8>) -> Result<bool> {
        let mut msgs = vec![UploadPackRequest {
            part: Some(upload_pack_request::Part::Header(PackHeader {
                id: id.0.to_vec(),
                size: pack.len() as u64,
            })),
        }];
        msgs.extend(pack.chunks(UPLOAD_PIECE).map(|p| UploadPackRequest {
            part: Some(upload_pack_request::Part::Data(p.to_vec())),
        }));
        let r = self
            .client
            .upload_pack(tokio_stream::iter(msgs))
            .await
            .map_err(rpc)?
            .into_inner();
        self.round_trips += 1;
        Ok(r.stored)
    }

    /// Downloads objects in stored form, calling `f` for each.
    pub async fn get_objects(
        &mut self,
        ids: &[ObjectId],
        f: &mut (dyn FnMut(ds_proto::v1::StoredObject) -> Result<()> + Send),
    ) -> Result<()> {
        for batch in ids.chunks(self.max_batch) {
            let mut s = self
                .client
                .get_objects(GetObjectsRequest {
                    ids: join_ids(batch.iter().map(|i| &i.0)),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            self.round_trips += 1;
            while let Some(reply) = s.message().await.map_err(rpc)? {
                for o in reply.objects {
                    f(o)?;
                }
            }
        }
        Ok(())
    }

    pub async fn update_ref(
        &mut self,
        workspace: &str,
        expected: Option<ObjectId>,
        new: ObjectId,
        force: bool,
    ) -> Result<Option<ObjectId>> {
        let r = self
            .client
            .update_ref(UpdateRefRequest {
                workspace: workspace.into(),
                expected: expected.map(|e| e.0.to_vec()).unwrap_or_default(),
                new: new.0.to_vec(),
                force,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        self.round_trips += 1;
        Ok(ObjectId::from_slice(&r.previous))
    }

    pub async fn create_token(
        &mut self,
        workspaces: Vec<String>,
        comment: String,
    ) -> Result<String> {
        let r = self
            .client
            .create_token(CreateTokenRequest {
                workspaces,
                comment,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        self.round_trips += 1;
        Ok(r.token)
    }
}

/// What a push or pull did (the `--json` output of the CLI).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub workspace: String,
    /// The snapshot the workspace is at afterwards, on both sides.
    pub snapshot: String,
    /// What the receiving side's ref pointed at before (null: nothing).
    pub previous: Option<String>,
    pub up_to_date: bool,
    pub forced: bool,
    /// Bytes on the wire for objects (packs on push, stored objects on pull).
    pub bytes_sent: u64,
    pub objects_sent: u64,
    pub chunks_sent: u64,
    /// Chunks the descent found the receiving side already held.
    pub chunks_skipped: u64,
    pub packs_sent: u64,
    pub round_trips: u64,
}

/// Pushes workspace `ws` of `store` to the hub.
pub async fn push(
    store: Arc<Store>,
    remote: &mut Remote,
    ws: &str,
    force: bool,
    progress: Progress<'_>,
) -> Result<SyncReport> {
    let head = store
        .refs()
        .get(ws)?
        .ok_or_else(|| HubError::Invalid(format!("there is no workspace {ws:?} in this store")))?;
    let theirs = remote.get_ref(ws).await?;
    let mut rep = SyncReport {
        workspace: ws.into(),
        snapshot: head.to_hex(),
        previous: theirs.map(|t| t.to_hex()),
        forced: force,
        ..Default::default()
    };
    if let Some(t) = theirs
        && t != head
        && !force
        && !dag::is_ancestor(&store, &t, &head)?
    {
        return Err(HubError::Invalid(format!(
            "the hub's {ws} is at {}, which is not in your history of {ws} (someone else pushed, \
             or you rewrote it); pull and redo your work on top, or push --force to replace the \
             hub's {ws} with yours (its snapshots stay on the hub but leave {ws}'s history)",
            t.short()
        )));
    }
    // Descend: only children of objects the hub lacks are asked about.
    let mut kinds: HashMap<ObjectId, ObjectKind> = HashMap::new();
    let mut edges: HashMap<ObjectId, Vec<ObjectId>> = HashMap::new();
    let mut seen: HashSet<ObjectId> = HashSet::from([head]);
    let mut frontier = vec![(head, ObjectKind::Snapshot)];
    let mut kids = Vec::new();
    let mut level = 0;
    while !frontier.is_empty() {
        let ids: Vec<ObjectId> = frontier.iter().map(|(i, _)| *i).collect();
        progress(Event::Level {
            level,
            asked: ids.len(),
        });
        let held = remote.have(&ids).await?;
        let mut next = Vec::new();
        for ((id, kind), h) in frontier.into_iter().zip(held) {
            if h {
                rep.chunks_skipped += u64::from(kind == ObjectKind::Chunk);
                continue;
            }
            kinds.insert(id, kind);
            if kind != ObjectKind::Chunk {
                let raw = store.read_object(&id, kind)?;
                kids.clear();
                dag::children(&id, kind, &raw, &mut kids)?;
                edges.insert(id, kids.iter().map(|(c, _)| *c).collect());
                for (c, k) in &kids {
                    if seen.insert(*c) {
                        next.push((*c, *k));
                    }
                }
            }
        }
        frontier = next;
        level += 1;
    }
    let order: Vec<(ObjectId, ObjectKind)> = dag::post_order(&[head], &edges)
        .into_iter()
        .filter_map(|id| kinds.get(&id).map(|k| (id, *k)))
        .collect();
    let chunks = order
        .iter()
        .filter(|(_, k)| *k == ObjectKind::Chunk)
        .count() as u64;
    progress(Event::Transfer {
        objects: order.len() as u64,
        chunks,
    });
    if !order.is_empty() {
        upload(&store, remote, order, &mut rep, progress).await?;
    }
    if theirs == Some(head) {
        rep.up_to_date = true;
    } else {
        remote.update_ref(ws, theirs, head, force).await?;
    }
    rep.round_trips = remote.round_trips;
    Ok(rep)
}

/// A pack built for upload.
struct Built {
    id: PackId,
    data: Vec<u8>,
    objects: u64,
    chunks: u64,
}

/// Builds packs from the local stored bytes on a thread (no recompression)
/// while the previous pack uploads; packs go up one at a time, in order.
async fn upload(
    store: &Arc<Store>,
    remote: &mut Remote,
    order: Vec<(ObjectId, ObjectKind)>,
    rep: &mut SyncReport,
    progress: Progress<'_>,
) -> Result<()> {
    let target = store.config().pack_size.min(ds_proto::MAX_PACK / 2) as usize;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Built>>(1);
    let st = store.clone();
    let producer = std::thread::spawn(move || {
        let mut data = HEADER.to_vec();
        let mut entries: Vec<PackEntry> = Vec::new();
        let mut chunks = 0;
        let flush = |data: &mut Vec<u8>, entries: &mut Vec<PackEntry>, chunks: &mut u64| {
            let (id, trailer) = encode_trailer(entries);
            data.extend_from_slice(&trailer);
            let b = Built {
                id,
                data: std::mem::replace(data, HEADER.to_vec()),
                objects: entries.len() as u64,
                chunks: std::mem::take(chunks),
            };
            entries.clear();
            tx.blocking_send(Ok(b)).is_ok()
        };
        for (id, kind) in order {
            let r = (|| {
                let loc = st.locate(&id)?.ok_or(ds_store::StoreError::Missing {
                    kind: kind.name(),
                    id,
                })?;
                let bytes = st
                    .packs()
                    .read_at(&loc.pack, loc.offset, loc.stored_len as usize)?;
                Ok::<_, ds_store::StoreError>((loc, bytes))
            })();
            let (loc, bytes) = match r {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.into()));
                    return;
                }
            };
            entries.push(PackEntry {
                id,
                kind,
                stored: loc.stored,
                offset: data.len() as u64,
                stored_len: loc.stored_len,
                raw_len: loc.raw_len,
            });
            data.extend_from_slice(&bytes);
            chunks += u64::from(kind == ObjectKind::Chunk);
            if data.len() >= target && !flush(&mut data, &mut entries, &mut chunks) {
                return;
            }
        }
        if !entries.is_empty() {
            flush(&mut data, &mut entries, &mut chunks);
        }
    });
    while let Some(b) = rx.recv().await {
        let b = b?;
        let len = b.data.len() as u64;
        remote.upload_pack(&b.id, b.data).await?;
        rep.bytes_sent += len;
        rep.packs_sent += 1;
        rep.objects_sent += b.objects;
        rep.chunks_sent += b.chunks;
        progress(Event::Moved {
            bytes: len,
            chunks: b.chunks,
        });
    }
    producer
        .join()
        .map_err(|_| HubError::Invalid("pack builder thread panicked".into()))?;
    Ok(())
}

/// Pulls workspace `ws` from the hub into `store` (opened for writing).
/// Refuses, unless `force`, when the local workspace has snapshots the hub's
/// does not descend from.
pub async fn pull(
    store: &Store,
    remote: &mut Remote,
    ws: &str,
    force: bool,
    progress: Progress<'_>,
) -> Result<SyncReport> {
    let theirs = remote
        .get_ref(ws)
        .await?
        .ok_or_else(|| HubError::Invalid(format!("the hub has no workspace {ws:?}")))?;
    let ours = store.refs().get(ws)?;
    let mut rep = SyncReport {
        workspace: ws.into(),
        snapshot: theirs.to_hex(),
        previous: ours.map(|o| o.to_hex()),
        forced: force,
        ..Default::default()
    };
    if ours == Some(theirs) {
        rep.up_to_date = true;
        rep.round_trips = remote.round_trips;
        return Ok(rep);
    }
    let session = writer::start(
        store.packs().clone(),
        store.index().clone(),
        store.config().compression,
        store.config().pack_size,
    );
    let w = session.writer().clone();
    let mut meta: HashMap<ObjectId, (ObjectKind, Vec<u8>)> = HashMap::new();
    let mut edges: HashMap<ObjectId, Vec<ObjectId>> = HashMap::new();
    let mut seen: HashSet<ObjectId> = HashSet::from([theirs]);
    let mut frontier = vec![(theirs, ObjectKind::Snapshot)];
    let mut level = 0;
    while !frontier.is_empty() {
        let mut want: Vec<ObjectId> = Vec::new();
        let mut kinds: HashMap<ObjectId, ObjectKind> = HashMap::new();
        for (id, k) in frontier {
            if store.locate(&id)?.is_some() {
                rep.chunks_skipped += u64::from(k == ObjectKind::Chunk);
            } else {
                want.push(id);
                kinds.insert(id, k);
            }
        }
        progress(Event::Level {
            level,
            asked: want.len(),
        });
        let mut next = Vec::new();
        let mut kids = Vec::new();
        let mut got: HashSet<ObjectId> = HashSet::with_capacity(want.len());
        remote
            .get_objects(&want, &mut |o| {
                let id = ObjectId::from_slice(&o.id)
                    .ok_or_else(|| HubError::Invalid("hub sent a malformed id".into()))?;
                let kind = *kinds.get(&id).ok_or_else(|| {
                    HubError::Invalid(format!("hub sent {id}, which was not asked for"))
                })?;
                if !got.insert(id) {
                    return Err(HubError::Invalid(format!("hub sent {id} twice")));
                }
                let stored = match o.stored {
                    0 => Stored::Raw,
                    1 => Stored::Zstd,
                    s => return Err(HubError::Invalid(format!("hub sent {id} with storage {s}"))),
                };
                if o.raw_len > ds_format::pack::MAX_OBJECT || u32::from(kind as u8) != o.kind {
                    return Err(HubError::Invalid(format!(
                        "hub sent {id} with a wrong header"
                    )));
                }
                let len = o.data.len() as u64;
                let raw = ds_store::decode_stored(stored, o.data, o.raw_len).map_err(|why| {
                    HubError::Invalid(format!("hub sent {id} undecodable: {why}"))
                })?;
                if kind.hash(&raw) != id {
                    return Err(HubError::Invalid(format!(
                        "hub sent {id} with content that does not match it (refused)"
                    )));
                }
                rep.bytes_sent += len;
                rep.objects_sent += 1;
                if kind == ObjectKind::Chunk {
                    rep.chunks_sent += 1;
                    progress(Event::Moved {
                        bytes: len,
                        chunks: 1,
                    });
                    w.put(kind, id, Payload::Owned(raw))?;
                } else {
                    progress(Event::Moved {
                        bytes: len,
                        chunks: 0,
                    });
                    kids.clear();
                    dag::children(&id, kind, &raw, &mut kids)?;
                    edges.insert(id, kids.iter().map(|(c, _)| *c).collect());
                    for (c, k) in &kids {
                        if seen.insert(*c) {
                            next.push((*c, *k));
                        }
                    }
                    meta.insert(id, (kind, raw));
                }
                Ok(())
            })
            .await?;
        // Every object asked for must arrive before anything above it is
        // written: a gap would break "holding an object means holding its
        // subtree".
        if let Some(id) = want.iter().find(|i| !got.contains(i)) {
            return Err(HubError::Invalid(format!("hub did not send {id}")));
        }
        frontier = next;
        level += 1;
    }
    // Tree nodes go in children-first, after their chunks (already queued).
    for id in dag::post_order(&[theirs], &edges) {
        if let Some((kind, raw)) = meta.remove(&id) {
            w.put(kind, id, Payload::Owned(raw))?;
        }
    }
    drop(w);
    session.finish()?;
    store.index().sync()?;
    if let Some(o) = ours
        && !force
        && !dag::is_ancestor(store, &o, &theirs)?
    {
        return Err(HubError::Invalid(format!(
            "your {ws} is at {}, which the hub's {ws} ({}) does not descend from: you have \
             snapshots the hub does not; push them (after pulling into another workspace to \
             compare), or pull --force to replace your {ws} with the hub's (your snapshots stay \
             in the store until gc)",
            o.short(),
            theirs.short()
        )));
    }
    store.refs().swap(ws, ours, theirs)?;
    rep.round_trips = remote.round_trips;
    Ok(rep)
}
