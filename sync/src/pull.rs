//! Pull (and clone): fetch the objects of the hub's head that this store
//! lacks, verify each against its id, write them children-first in one
//! store transaction, then move the local ref by compare-and-swap.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ds_format::pack::{MAX_OBJECT, Stored};
use ds_format::{ObjectId, ObjectKind};
use ds_proto::v1::StoredObject;
use ds_store::refs::WorkspaceName;
use ds_store::txn::{Target, Transaction};
use ds_store::writer::{PackWriter, Payload};
use ds_store::{Store, dag};

use crate::descent::Descent;
use crate::remote::Remote;
use crate::{Event, Progress, Result, Side, SyncError, SyncReport, blocking, local_head};

/// Pulls workspace `ws` from the hub into `store` (opened for writing).
/// Refuses, unless `force`, when the local workspace has snapshots the
/// hub's does not descend from; the fetched objects stay (gc removes them).
pub async fn pull(
    store: Arc<Store>,
    remote: &mut Remote,
    ws: &WorkspaceName,
    force: bool,
    progress: Progress<'_>,
) -> Result<SyncReport> {
    let theirs = remote
        .get_ref(ws)
        .await?
        .ok_or_else(|| SyncError::NoWorkspace {
            workspace: ws.to_string(),
            side: Side::Hub,
        })?;
    let ours = local_head(&store, ws).await?;
    let mut rep = SyncReport {
        workspace: ws.to_string(),
        snapshot: theirs,
        previous: ours,
        forced: force,
        ..Default::default()
    };
    if ours == Some(theirs) {
        rep.up_to_date = true;
        rep.round_trips = remote.round_trips;
        return Ok(rep);
    }
    let txn = transfer(&store, remote, theirs, &mut rep, progress).await?;
    let st = store.clone();
    let ws2 = ws.to_string();
    blocking(move || {
        let done = txn.finish()?;
        if let Some(o) = ours
            && !force
            && !dag::is_ancestor(&st, &o, &theirs)?
        {
            return Err(SyncError::Diverged {
                workspace: ws2.clone(),
                ours: o,
                theirs,
                message: format!(
                    "your {ws2} is at {}, which the hub's {ws2} ({}) does not descend from: you \
                     have snapshots the hub does not; push them (after pulling into another \
                     workspace to compare), or pull --force to replace your {ws2} with the \
                     hub's (your snapshots stay in the store until gc)",
                    o.short(),
                    theirs.short()
                ),
            });
        }
        done.swap_ref(&ws2, ours, theirs)?;
        Ok(())
    })
    .await?;
    rep.round_trips = remote.round_trips;
    Ok(rep)
}

/// The tree objects (snapshot, directories, file nodes) under `root` that
/// `store` lacks, fetched and verified but not stored, by id: a lazy
/// mount's ([`ds_store::Lazy`]), which fetches chunks only as they are
/// read ([`fetch_object`]). A tree `store` holds is not descended (it
/// holds the subtree).
pub async fn fetch_trees(
    store: Arc<Store>,
    remote: &mut Remote,
    root: ObjectId,
) -> Result<HashMap<ObjectId, (ObjectKind, Vec<u8>)>> {
    let mut walk = Descent::new(root);
    let mut trees = HashMap::new();
    while let Some((_, objs)) = walk.next_level() {
        // Chunks are not asked about: the lazy mount reads each from the
        // store or the hub when it is read.
        let objs: Vec<(ObjectId, ObjectKind)> = objs
            .into_iter()
            .filter(|(_, k)| *k != ObjectKind::Chunk)
            .collect();
        let st = store.clone();
        let want: Vec<(ObjectId, ObjectKind)> = blocking(move || {
            let ids: Vec<ObjectId> = objs.iter().map(|(i, _)| *i).collect();
            let held = st.holds_each(&ids)?;
            Ok(objs
                .into_iter()
                .zip(held)
                .filter_map(|(o, h)| (!h).then_some(o))
                .collect())
        })
        .await?;
        let kinds: HashMap<ObjectId, ObjectKind> = want.iter().copied().collect();
        let ids: Vec<ObjectId> = want.iter().map(|(i, _)| *i).collect();
        for batch in ids.chunks(remote.max_batch()) {
            let mut replies = remote.get_objects(batch).await?;
            while let Some(reply) = replies.message().await? {
                for o in reply.objects {
                    let (id, kind) = claim(&o, &kinds)?;
                    let (_, raw, _) = decode(id, kind, o)?;
                    walk.expand(id, kind, &raw)?;
                    if trees.insert(id, (kind, raw)).is_some() {
                        return Err(SyncError::Protocol(format!("the hub sent {id} twice")));
                    }
                }
            }
        }
        if let Some(id) = ids.iter().find(|i| !trees.contains_key(i)) {
            return Err(SyncError::Protocol(format!("the hub did not send {id}")));
        }
    }
    Ok(trees)
}

/// Objects by id, each verified (a lazy mount's chunks as they are read,
/// with those that follow them). What the hub does not send is missing
/// from the answer.
pub async fn fetch_objects(
    remote: &mut Remote,
    want: &[(ObjectId, ObjectKind)],
) -> Result<HashMap<ObjectId, Vec<u8>>> {
    let kinds: HashMap<ObjectId, ObjectKind> = want.iter().copied().collect();
    let ids: Vec<ObjectId> = kinds.keys().copied().collect();
    let mut found = HashMap::with_capacity(ids.len());
    for batch in ids.chunks(remote.max_batch()) {
        let mut replies = remote.get_objects(batch).await?;
        while let Some(reply) = replies.message().await? {
            for o in reply.objects {
                let (id, kind) = claim(&o, &kinds)?;
                let (_, raw, _) = decode(id, kind, o)?;
                if found.insert(id, raw).is_some() {
                    return Err(SyncError::Protocol(format!("the hub sent {id} twice")));
                }
            }
        }
    }
    Ok(found)
}

/// Fetches the objects under `root` that `store` lacks, level by level,
/// into one transaction: chunks as they arrive, tree nodes at the end
/// children-first. Returns the transaction to finish.
async fn transfer(
    store: &Arc<Store>,
    remote: &mut Remote,
    root: ObjectId,
    rep: &mut SyncReport,
    progress: Progress<'_>,
) -> Result<Transaction<'static>> {
    let txn = {
        let st = store.clone();
        blocking(move || Ok(Transaction::begin(Target::Shared(st))?)).await?
    };
    let writer = txn.writer().clone();
    let mut walk = Descent::new(root);
    // Tree nodes wait here until their subtrees are complete.
    let mut nodes: HashMap<ObjectId, (ObjectKind, Vec<u8>)> = HashMap::new();
    while let Some((level, objs)) = walk.next_level() {
        let st = store.clone();
        let (want, skipped) = blocking(move || lacking(&st, objs)).await?;
        rep.chunks_skipped += skipped;
        progress(Event::Level {
            level,
            asked: want.len(),
        });
        let kinds: HashMap<ObjectId, ObjectKind> = want.iter().copied().collect();
        let ids: Vec<ObjectId> = want.iter().map(|(i, _)| *i).collect();
        let mut got: HashSet<ObjectId> = HashSet::with_capacity(ids.len());
        for batch in ids.chunks(remote.max_batch()) {
            let mut replies = remote.get_objects(batch).await?;
            while let Some(reply) = replies.message().await? {
                let mut checked = Vec::with_capacity(reply.objects.len());
                for o in reply.objects {
                    let (id, kind) = claim(&o, &kinds)?;
                    if !got.insert(id) {
                        return Err(SyncError::Protocol(format!("the hub sent {id} twice")));
                    }
                    rep.bytes_sent += o.data.len() as u64;
                    rep.objects_sent += 1;
                    rep.chunks_sent += u64::from(kind == ObjectKind::Chunk);
                    checked.push((id, kind, o));
                }
                let w = writer.clone();
                for (id, kind, raw, moved) in blocking(move || accept(&w, checked)).await? {
                    progress(Event::Moved {
                        bytes: moved,
                        chunks: u64::from(kind == ObjectKind::Chunk),
                    });
                    if let Some(raw) = raw {
                        walk.expand(id, kind, &raw)?;
                        nodes.insert(id, (kind, raw));
                    }
                }
            }
        }
        // Every object asked for must arrive before anything above it is
        // written: a gap would break "holding an object means holding its
        // subtree".
        if let Some(id) = ids.iter().find(|i| !got.contains(i)) {
            return Err(SyncError::Protocol(format!("the hub did not send {id}")));
        }
    }
    let order = walk.post_order();
    blocking(move || {
        // Tree nodes go in children-first, after their chunks (queued).
        for id in order {
            if let Some((kind, raw)) = nodes.remove(&id) {
                writer.put(kind, id, Payload::Owned(raw))?;
            }
        }
        drop(writer);
        Ok(txn)
    })
    .await
}

/// Which of a level's objects this store lacks, and how many chunks it
/// already holds.
fn lacking(
    store: &Store,
    objs: Vec<(ObjectId, ObjectKind)>,
) -> Result<(Vec<(ObjectId, ObjectKind)>, u64)> {
    let mut want = Vec::new();
    let mut skipped = 0;
    for (id, kind) in objs {
        if store.locate(&id)?.is_some() {
            skipped += u64::from(kind == ObjectKind::Chunk);
        } else {
            want.push((id, kind));
        }
    }
    Ok((want, skipped))
}

/// The id and kind of a sent object, if it was asked for and its header
/// is sane.
fn claim(
    o: &StoredObject,
    kinds: &HashMap<ObjectId, ObjectKind>,
) -> Result<(ObjectId, ObjectKind)> {
    let id = ObjectId::from_slice(&o.id)
        .ok_or_else(|| SyncError::Protocol("the hub sent a malformed id".into()))?;
    let kind = *kinds.get(&id).ok_or_else(|| {
        SyncError::Protocol(format!("the hub sent {id}, which was not asked for"))
    })?;
    if o.raw_len > MAX_OBJECT || u32::from(kind as u8) != o.kind {
        return Err(SyncError::Protocol(format!(
            "the hub sent {id} with a wrong header"
        )));
    }
    Ok((id, kind))
}

/// A sent object's storage, plaintext (verified against `id`) and bytes
/// as sent.
fn decode(id: ObjectId, kind: ObjectKind, o: StoredObject) -> Result<(Stored, Vec<u8>, Vec<u8>)> {
    let stored = match o.stored {
        0 => Stored::Raw,
        1 => Stored::Zstd,
        s => {
            return Err(SyncError::Protocol(format!(
                "the hub sent {id} with storage {s}"
            )));
        }
    };
    let bytes = o.data;
    let raw = ds_format::check::decode_stored(stored, &bytes, o.raw_len)
        .map_err(|why| SyncError::Protocol(format!("the hub sent {id} undecodable: {why}")))?;
    if kind.hash(&raw) != id {
        return Err(SyncError::Protocol(format!(
            "the hub sent {id} with content that does not match it (refused)"
        )));
    }
    Ok((stored, raw, bytes))
}

/// Decodes and verifies sent objects (on a blocking thread), queues chunks
/// to the writer, and returns each object's kind, its plaintext if it is a
/// tree node (written later, children-first) and its bytes on the wire.
#[allow(clippy::type_complexity)]
fn accept(
    w: &PackWriter,
    objs: Vec<(ObjectId, ObjectKind, StoredObject)>,
) -> Result<Vec<(ObjectId, ObjectKind, Option<Vec<u8>>, u64)>> {
    let mut out = Vec::with_capacity(objs.len());
    for (id, kind, o) in objs {
        let moved = o.data.len() as u64;
        let (stored, raw, bytes) = decode(id, kind, o)?;
        if kind == ObjectKind::Chunk {
            // Kept as the hub stored it: no second compression.
            let raw_len = raw.len() as u32;
            if stored == Stored::Raw {
                w.put_stored(kind, id, stored, raw_len, raw, Vec::new)?;
            } else {
                w.put_stored(kind, id, stored, raw_len, bytes, move || raw)?;
            }
            out.push((id, kind, None, moved));
        } else {
            out.push((id, kind, Some(raw), moved));
        }
    }
    Ok(out)
}
