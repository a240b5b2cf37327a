//! Push: send a workspace's new objects to the hub as packs, then move
//! the hub's ref by compare-and-swap.

use std::collections::HashMap;
use std::sync::Arc;

use ds_format::pack::{Framing, HEADER};
use ds_format::{ObjectId, ObjectKind, PackId};
use ds_store::refs::WorkspaceName;
use ds_store::{Store, dag};

use crate::descent::Descent;
use crate::remote::Remote;
use crate::{Event, Progress, Result, Side, SyncError, SyncReport, blocking, local_head};

/// How many times a push starts over when hub gc ran during it (after
/// 0.2 s, 0.4 s, … : the hub's next gc round is seconds away).
const GC_RETRIES: u32 = 5;

/// Pushes workspace `ws` of `store` to the hub. Refuses, unless `force`,
/// when the hub's head is not in the local history of `ws`.
///
/// If hub gc condemned packs while the push ran, the hub refuses the ref
/// update (ABORTED: the push's "the hub has these" answers may be stale);
/// the push then starts over, asking again, a few times.
pub async fn push(
    store: Arc<Store>,
    remote: &mut Remote,
    ws: &WorkspaceName,
    force: bool,
    progress: Progress<'_>,
) -> Result<SyncReport> {
    let mut tries = 0;
    loop {
        remote.forget_answers();
        match push_once(store.clone(), remote, ws, force, progress).await {
            Err(SyncError::Rpc(s)) if s.code() == tonic::Code::Aborted && tries < GC_RETRIES => {
                tokio::time::sleep(std::time::Duration::from_millis(200 << tries)).await;
                tries += 1;
            }
            r => return r,
        }
    }
}

async fn push_once(
    store: Arc<Store>,
    remote: &mut Remote,
    ws: &WorkspaceName,
    force: bool,
    progress: Progress<'_>,
) -> Result<SyncReport> {
    let head = local_head(&store, ws)
        .await?
        .ok_or_else(|| SyncError::NoWorkspace {
            workspace: ws.to_string(),
            side: Side::Local,
        })?;
    let theirs = remote.get_ref(ws).await?;
    let mut rep = SyncReport {
        workspace: ws.to_string(),
        snapshot: head,
        previous: theirs,
        forced: force,
        ..Default::default()
    };
    if let Some(t) = theirs
        && t != head
        && !force
    {
        let st = store.clone();
        if !blocking(move || Ok(dag::is_ancestor(&st, &t, &head)?)).await? {
            return Err(SyncError::Diverged {
                workspace: ws.to_string(),
                ours: head,
                theirs: t,
                message: format!(
                    "the hub's {ws} is at {}, which is not in your history of {ws} (someone \
                     else pushed, or you rewrote it); pull and redo your work on top, or push \
                     --force to replace the hub's {ws} with yours (its snapshots stay on the hub \
                     but leave {ws}'s history)",
                    t.short()
                ),
            });
        }
    }
    // Descend: only children of objects the hub lacks are asked about.
    let mut walk = Descent::new(head);
    let mut lacking: HashMap<ObjectId, ObjectKind> = HashMap::new();
    while let Some((level, objs)) = walk.next_level() {
        progress(Event::Level {
            level,
            asked: objs.len(),
        });
        let ids: Vec<ObjectId> = objs.iter().map(|(i, _)| *i).collect();
        let held = remote.have(&ids).await?;
        let mut nodes = Vec::new();
        for ((id, kind), h) in objs.into_iter().zip(held) {
            if h {
                rep.chunks_skipped += u64::from(kind == ObjectKind::Chunk);
                continue;
            }
            lacking.insert(id, kind);
            if kind != ObjectKind::Chunk {
                nodes.push((id, kind));
            }
        }
        let st = store.clone();
        let raws = blocking(move || {
            nodes
                .into_iter()
                .map(|(id, kind)| Ok((id, kind, st.read_object(&id, kind)?)))
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        for (id, kind, raw) in raws {
            walk.expand(id, kind, &raw)?;
        }
    }
    let order: Vec<(ObjectId, ObjectKind)> = walk
        .post_order()
        .into_iter()
        .filter_map(|id| lacking.get(&id).map(|k| (id, *k)))
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

/// Chunk packs uploading at once. Chunks have no children, so a chunk
/// pack is complete whatever else is in flight; tree nodes follow, one
/// pack at a time, once every chunk pack is acknowledged.
const CHUNK_PACKS_IN_FLIGHT: usize = 3;

/// Builds packs from the local stored bytes on a thread (no
/// recompression) while earlier packs upload: first packs of chunks,
/// several in flight, then packs of tree nodes in children-first order,
/// one at a time — so the hub holds only complete subtrees at any moment.
async fn upload(
    store: &Arc<Store>,
    remote: &mut Remote,
    order: Vec<(ObjectId, ObjectKind)>,
    rep: &mut SyncReport,
    progress: Progress<'_>,
) -> Result<()> {
    let target = store.config().pack_size.min(ds_proto::MAX_PACK / 2);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Built>>(2);
    let st = store.clone();
    let producer = std::thread::Builder::new()
        .name("ds-push-packer".into())
        .spawn(move || {
            let (chunks, nodes): (Vec<_>, Vec<_>) = order
                .into_iter()
                .partition(|(_, k)| *k == ObjectKind::Chunk);
            for part in [chunks, nodes] {
                let mut pack = PackBuilder::new(target);
                for (id, kind) in part {
                    if let Err(e) = pack.add(&st, id, kind) {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                    if pack.framing.len() >= target && tx.blocking_send(Ok(pack.build())).is_err() {
                        return;
                    }
                }
                if !pack.framing.is_empty() && tx.blocking_send(Ok(pack.build())).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| SyncError::Internal(format!("starting the pack builder: {e}")))?;
    let mut flying: tokio::task::JoinSet<(Result<ds_proto::v1::UploadPackReply>, (u64, u64, u64))> =
        tokio::task::JoinSet::new();
    let mut done = |remote: &mut Remote, r: ds_proto::v1::UploadPackReply, b: (u64, u64, u64)| {
        remote.note_upload(&r);
        let (len, objects, chunks) = b;
        rep.bytes_sent += len;
        rep.packs_sent += 1;
        rep.objects_sent += objects;
        rep.chunks_sent += chunks;
        progress(Event::Moved { bytes: len, chunks });
    };
    let result = async {
        while let Some(b) = rx.recv().await {
            let b = b?;
            let sizes = (b.data.len() as u64, b.objects, b.chunks);
            let only_chunks = b.chunks == b.objects;
            if !only_chunks {
                // Tree nodes lean on every chunk: all of those first.
                while let Some(j) = flying.join_next().await {
                    let (r, sizes) = j?;
                    done(remote, r?, sizes);
                }
            }
            let up = remote.uploader();
            flying.spawn(async move { (upload_patiently(up, b.id, b.data).await, sizes) });
            let limit = if only_chunks {
                CHUNK_PACKS_IN_FLIGHT
            } else {
                1
            };
            while flying.len() >= limit {
                let (r, sizes) = flying.join_next().await.expect("an upload is in flight")?;
                done(remote, r?, sizes);
            }
        }
        while let Some(j) = flying.join_next().await {
            let (r, sizes) = j?;
            done(remote, r?, sizes);
        }
        Ok(())
    }
    .await;
    drop(rx);
    producer
        .join()
        .map_err(|_| SyncError::Internal("the pack builder thread panicked".into()))?;
    result
}

/// Uploads one pack, waiting and trying again while the hub says the
/// token has too many uploads in flight (other clients on the same token).
async fn upload_patiently(
    up: crate::remote::Uploader,
    id: PackId,
    data: Vec<u8>,
) -> Result<ds_proto::v1::UploadPackReply> {
    let data = Arc::new(data);
    let mut tries = 0u32;
    loop {
        match up.clone().upload_pack(id, data.clone()).await {
            Err(SyncError::Rpc(s))
                if s.code() == tonic::Code::ResourceExhausted
                    && s.message().contains("in flight")
                    && tries < 8 =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100 << tries.min(5))).await;
                tries += 1;
            }
            r => return r,
        }
    }
}

/// One pack being assembled from stored bytes.
struct PackBuilder {
    data: Vec<u8>,
    framing: Framing,
    chunks: u64,
    target: u64,
}

impl PackBuilder {
    /// A pack to fill to about `target` bytes: its buffer is reserved
    /// once (growing by doubling copied each pack several times).
    fn new(target: u64) -> Self {
        let mut data = Vec::with_capacity(target as usize + (1 << 20));
        data.extend_from_slice(&HEADER);
        PackBuilder {
            data,
            framing: Framing::new(),
            chunks: 0,
            target,
        }
    }

    fn add(&mut self, store: &Store, id: ObjectId, kind: ObjectKind) -> Result<()> {
        let (loc, bytes) = store.read_stored(&id, kind)?;
        self.framing
            .push(id, kind, loc.stored, loc.stored_len, loc.raw_len);
        self.data.extend_from_slice(&bytes);
        self.chunks += u64::from(kind == ObjectKind::Chunk);
        Ok(())
    }

    /// The finished pack; leaves an empty one in its place.
    fn build(&mut self) -> Built {
        let next = PackBuilder::new(self.target);
        let PackBuilder {
            mut data,
            framing,
            chunks,
            ..
        } = std::mem::replace(self, next);
        let (id, trailer, entries) = framing.seal();
        data.extend_from_slice(&trailer);
        Built {
            id,
            data,
            objects: entries.len() as u64,
            chunks,
        }
    }
}
