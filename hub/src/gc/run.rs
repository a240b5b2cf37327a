//! One hub gc: `ds gc --hub URL [--grace D] [--dry-run]`.
//!
//! A round lists refs, then every pack and its index object, and computes
//! two closures over the object graph (objects found through the packs'
//! own index objects, never the hub's cache, and rehashed when read):
//!
//! - **kept**: what the refs reach, plus every object of packs younger
//!   than the grace or revived by a hub — and, because `Have` promises a
//!   whole subtree, every object of any pack holding a kept object and
//!   everything below those. Live packs outside it are condemned.
//! - **touchable**: kept, plus everything below every pack not condemned
//!   before this round. A pack condemned at least `max(grace, SETTLE)` ago
//!   and outside it is deleted; condemned packs inside **kept** are rescued.
//!
//! Keeping packs whole would keep garbage that merely shares a pack with
//! something live, and everything below it. So packs in which more than
//! `max_unused` of the bytes is not reached from refs are **repacked**
//! first: the kept closure does not expand them, the objects of theirs it
//! does reach are copied (rehashed) into new packs, committed before the
//! old packs are condemned.
//!
//! Deletion goes condemned → deleting (state written) → revive markers
//! checked → index objects and packs deleted → deleted (state written).
//! With a grace under the settle time ([`super::SETTLE`]), a second round
//! runs after it, so `--grace 0s` deletes in one call what no ref reaches.
//! The gc lease is renewed in the background while the rounds run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ds_format::check::{children, decode_stored};
use ds_format::pack::PackEntry;
use ds_format::{ObjectId, ObjectKind, PackId};
use ds_proto::v1::GcReply;
use ds_store::index::Location;
use futures::{StreamExt, TryStreamExt};

use super::{Condemned, DELETED_RETENTION_SECS, Deleted, now_unix};
use crate::error::{HubError, Result};
use crate::service::SyncService;
use crate::storage::PackFile;

/// Index objects read at once.
const PARALLEL_READS: usize = 16;

/// Pack bytes without an index object are deleted once this much older
/// than the grace (an upload commits seconds after storing its bytes).
const ORPHAN_AGE_SECS: i64 = 3600;

/// The default of `Options::max_unused`.
pub const MAX_UNUSED: f64 = 0.5;

/// New packs written by repacking are cut at this size.
const REPACK_TARGET: u64 = 64 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub grace: Duration,
    pub dry_run: bool,
    /// Repack packs with more than this fraction of bytes unreached.
    pub max_unused: f64,
}

/// Runs hub gc; see the module doc.
pub(crate) async fn collect(svc: &SyncService, o: Options) -> Result<GcReply> {
    let storage = svc.storage();
    let grace = o.grace;
    if o.dry_run {
        let mut rep = GcReply::default();
        round(svc, o, &mut rep).await?;
        return Ok(rep);
    }
    let settle = svc.gc_view().settle();
    let lease = svc.gc_view().lease().as_secs().max(1) as i64;
    storage.take_gc_lease(lease, false).await?;
    let renewer = {
        let storage = storage.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(settle * 2).await;
                if storage.take_gc_lease(lease, true).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut rep = GcReply::default();
    let r = async {
        let condemned = round(svc, o, &mut rep).await?;
        if condemned > 0 && grace < settle {
            tokio::time::sleep(settle).await;
            round(svc, o, &mut rep).await?;
        }
        Ok::<_, HubError>(())
    }
    .await;
    renewer.abort();
    let released = storage.release_gc_lease().await;
    r?;
    released?;
    // The hub running gc sees its own deletions at once.
    svc.gc_view().fresh().await?;
    Ok(rep)
}

/// Everything a round knows about the bucket.
struct Bucket {
    files: Vec<PackFile>,
    /// Entries of committed packs, by position in `files`.
    entries: Vec<Vec<PackEntry>>,
    /// Object → (pack, entry) positions of every copy of it.
    holders: HashMap<ObjectId, Vec<(u32, u32)>>,
}

impl Bucket {
    async fn list(svc: &SyncService) -> Result<Bucket> {
        let storage = svc.storage();
        let files = storage.list_pack_files().await?;
        let committed: Vec<(usize, PackId)> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.committed.is_some() && f.data.is_some())
            .map(|(i, f)| (i, f.id))
            .collect();
        let read: Vec<(usize, Vec<PackEntry>)> = futures::stream::iter(committed)
            .map(|(i, id)| async move { Ok::<_, HubError>((i, storage.pack_entries(&id).await?)) })
            .buffer_unordered(PARALLEL_READS)
            .try_collect()
            .await?;
        let mut entries = vec![Vec::new(); files.len()];
        let mut holders: HashMap<ObjectId, Vec<(u32, u32)>> = HashMap::new();
        for (i, es) in read {
            for (j, e) in es.iter().enumerate() {
                holders.entry(e.id).or_default().push((i as u32, j as u32));
            }
            entries[i] = es;
        }
        Ok(Bucket {
            files,
            entries,
            holders,
        })
    }

    fn bytes(&self, i: usize) -> u64 {
        self.files[i].data.map_or(0, |(s, _)| s)
    }
}

/// A growing closure: packs kept and objects visited.
struct Closure {
    kept: Vec<bool>,
    visited: HashSet<ObjectId>,
    policy: Policy,
    /// Reached objects whose only copies are in packs being repacked:
    /// (object, pack, entry).
    copy: Vec<(ObjectId, usize, usize)>,
}

/// Which holders of a reached object are kept whole.
struct Policy {
    /// Packs kept whole in preference (live ones, not being repacked).
    preferred: Vec<bool>,
    /// Packs whose reached objects are copied instead.
    repack: Vec<bool>,
    /// With no preferred holder and none to copy from: keep every holder
    /// (a condemned pack still needed is rescued).
    fallback: bool,
}

impl Closure {
    fn new(b: &Bucket, policy: Policy) -> Closure {
        Closure {
            kept: vec![false; b.files.len()],
            visited: HashSet::new(),
            policy,
            copy: Vec::new(),
        }
    }

    /// Decides what keeps `id` (held by `hs`) and queues what that adds.
    fn hold(&mut self, b: &Bucket, id: ObjectId, hs: &[(u32, u32)], into: &mut Vec<ObjectId>) {
        if hs.iter().any(|(p, _)| self.kept[*p as usize]) {
            return;
        }
        let preferred: Vec<usize> = hs
            .iter()
            .map(|(p, _)| *p as usize)
            .filter(|&p| self.policy.preferred[p])
            .collect();
        if !preferred.is_empty() {
            for p in preferred {
                self.keep(b, p, into);
            }
        } else if let Some(&(p, j)) = hs.iter().find(|(p, _)| self.policy.repack[*p as usize]) {
            self.copy.push((id, p as usize, j as usize));
        } else if self.policy.fallback {
            for &(p, _) in hs {
                self.keep(b, p as usize, into);
            }
        }
    }

    /// Extends the closure from `roots` and every object of `packs`.
    async fn grow(
        &mut self,
        svc: &SyncService,
        b: &Bucket,
        roots: Vec<ObjectId>,
        packs: impl IntoIterator<Item = usize>,
    ) -> Result<()> {
        let mut frontier = roots;
        for p in packs {
            self.keep(b, p, &mut frontier);
        }
        while !frontier.is_empty() {
            let mut next = Vec::new();
            let mut fetch: Vec<(ObjectId, Location)> = Vec::new();
            for id in std::mem::take(&mut frontier) {
                if !self.visited.insert(id) {
                    continue;
                }
                let Some(hs) = b.holders.get(&id) else {
                    return Err(HubError::Corrupt(format!(
                        "object {id} is reachable but no pack in the bucket holds it; hub gc \
                         deleted nothing (run `ds verify` against a clone to see what is lost)"
                    )));
                };
                self.hold(b, id, hs, &mut next);
                let (p, j) = (hs[0].0 as usize, hs[0].1 as usize);
                let e = &b.entries[p][j];
                if e.kind != ObjectKind::Chunk {
                    fetch.push((id, Location::of(b.files[p].id, e)));
                }
            }
            for w in fetch.chunks(ds_proto::MAX_BATCH) {
                let (ids, locs): (Vec<ObjectId>, Vec<Location>) = w.iter().copied().unzip();
                let objs = svc.fetch(&ids, &locs).await.map_err(HubError::from)?;
                let mut kids = Vec::new();
                for (o, l) in objs.iter().zip(&locs) {
                    let id = ObjectId::from_slice(&o.id).expect("fetch returns the ids asked");
                    let raw = decode_stored(l.stored, &o.data, l.raw_len)?;
                    if l.kind.hash(&raw) != id {
                        return Err(HubError::Corrupt(format!(
                            "{} {id} in pack {} does not match its id; hub gc deleted nothing",
                            l.kind.name(),
                            l.pack
                        )));
                    }
                    kids.clear();
                    children(l.kind, &raw, &mut kids)?;
                    next.extend(kids.iter().map(|(c, _)| *c));
                }
            }
            frontier = next;
        }
        Ok(())
    }

    fn keep(&mut self, b: &Bucket, p: usize, into: &mut Vec<ObjectId>) {
        if !self.kept[p] {
            self.kept[p] = true;
            into.extend(b.entries[p].iter().map(|e| e.id));
        }
    }
}

/// One round; returns how many packs it condemned.
async fn round(svc: &SyncService, o: Options, rep: &mut GcReply) -> Result<u64> {
    let (grace, dry_run) = (o.grace, o.dry_run);
    let storage = svc.storage();
    let (mut state, version) = storage.gc_state().await?;
    // Refs before packs: every pack a listed ref needs is committed before
    // the ref moved, so the pack listing that follows has it.
    let refs = storage.list_refs().await?;
    let revived: HashSet<PackId> = storage.revive_marks().await?.into_iter().collect();
    let b = Bucket::list(svc).await?;
    let t0 = now_unix();
    let grace_s = grace.as_secs() as i64;
    let settle_s = svc.gc_view().settle().as_secs() as i64;

    let condemned: HashMap<PackId, Condemned> = state
        .condemned
        .iter()
        .map(|c| (c.pack, c.clone()))
        .collect();
    let deleting: HashSet<PackId> = state.deleting.iter().copied().collect();
    let committed = |i: usize| b.files[i].committed.is_some() && b.files[i].data.is_some();
    let live = |i: usize| {
        let id = &b.files[i].id;
        committed(i) && !condemned.contains_key(id) && !deleting.contains(id)
    };
    let heads: Vec<ObjectId> = refs.iter().map(|(_, h)| *h).collect();
    // Held whatever the refs say: packs younger than the grace, revived.
    let young: Vec<usize> = (0..b.files.len())
        .filter(|&i| {
            committed(i)
                && (b.files[i].committed.unwrap_or(0) > t0 - grace_s
                    || revived.contains(&b.files[i].id))
        })
        .collect();

    // What refs (and held packs) reach, object by object: how much of each
    // live pack is still needed decides whether it is repacked.
    let n = b.files.len();
    let mut needed = Closure::new(
        &b,
        Policy {
            preferred: vec![false; n],
            repack: vec![false; n],
            fallback: false,
        },
    );
    let roots: Vec<ObjectId> = heads
        .iter()
        .copied()
        .chain(
            young
                .iter()
                .flat_map(|&i| b.entries[i].iter().map(|e| e.id)),
        )
        .collect();
    needed.grow(svc, &b, roots, []).await?;
    let young_set: HashSet<usize> = young.iter().copied().collect();
    let repack: Vec<bool> = (0..n)
        .map(|i| {
            if !live(i) || young_set.contains(&i) {
                return false;
            }
            let (mut all, mut used) = (0u64, 0u64);
            for e in &b.entries[i] {
                all += u64::from(e.stored_len);
                if needed.visited.contains(&e.id) {
                    used += u64::from(e.stored_len);
                }
            }
            used > 0 && (all - used) as f64 > o.max_unused * all as f64
        })
        .collect();
    let kept_objects = needed.visited.len() as u64;
    drop(needed);

    // Kept: whole packs, preferring live ones not being repacked; objects
    // only in packs being repacked are copied; condemned packs still
    // needed are rescued.
    let mut c = Closure::new(
        &b,
        Policy {
            preferred: (0..n).map(|i| live(i) && !repack[i]).collect(),
            repack: repack.clone(),
            fallback: true,
        },
    );
    c.grow(svc, &b, heads, young).await?;
    let kept = c.kept.clone();
    let mut copy = std::mem::take(&mut c.copy);
    copy.sort_by_key(|&(_, p, j)| (p, b.entries[p][j].offset));
    let kept_visited = c.visited.clone();
    // Touchable: everything below every live pack too.
    c.policy = Policy {
        preferred: (0..n).map(live).collect(),
        repack: vec![false; n],
        fallback: true,
    };
    let others: Vec<usize> = (0..n).filter(|&i| live(i)).collect();
    c.grow(svc, &b, Vec::new(), others).await?;
    let touchable = c.kept;

    // Condemned or deleting packs the listing no longer has: deleted by a
    // gc that stopped before it could say so.
    let listed: HashSet<PackId> = (0..b.files.len())
        .filter(|&i| committed(i))
        .map(|i| b.files[i].id)
        .collect();
    let vanished: Vec<PackId> = condemned
        .keys()
        .chain(deleting.iter())
        .filter(|p| !listed.contains(p))
        .copied()
        .collect();
    let mut newly: Vec<usize> = Vec::new();
    let mut rescued: HashSet<PackId> = HashSet::new();
    let mut doomed: Vec<usize> = Vec::new();
    let mut pending = (0u64, 0u64, i64::MAX);
    for i in 0..b.files.len() {
        let id = b.files[i].id;
        if !committed(i) {
            continue;
        }
        if live(i) {
            if !kept[i] {
                newly.push(i);
            }
            continue;
        }
        if kept[i] {
            rescued.insert(id);
            continue;
        }
        let due = condemned
            .get(&id)
            .map_or(t0, |c| c.at + grace_s.max(settle_s));
        if (deleting.contains(&id) || due <= t0) && !touchable[i] {
            doomed.push(i);
        } else {
            pending.0 += 1;
            pending.1 += b.bytes(i);
            pending.2 = pending.2.min(due);
        }
    }
    rep.workspaces = refs.len() as u32;
    rep.packs = b.files.iter().filter(|f| f.committed.is_some()).count() as u64;
    rep.reachable_objects = kept_objects;
    rep.condemned += newly.len() as u64;
    rep.condemned_bytes += newly.iter().map(|&i| b.bytes(i)).sum::<u64>();
    rep.rescued += rescued.len() as u64;
    rep.pending = pending.0 + if dry_run { 0 } else { newly.len() as u64 };
    rep.pending_bytes = pending.1;
    if !dry_run && !newly.is_empty() {
        rep.pending_bytes += newly.iter().map(|&i| b.bytes(i)).sum::<u64>();
        pending.2 = pending.2.min(t0 + grace_s.max(settle_s));
    }
    rep.next_deletion_unix = if pending.2 == i64::MAX { 0 } else { pending.2 };
    if dry_run {
        // What a gc now would condemn, repack or delete.
        rep.repacked = (0..n).filter(|&i| repack[i] && !kept[i]).count() as u64;
        rep.repack_bytes_written = copy
            .iter()
            .map(|&(_, p, j)| u64::from(b.entries[p][j].stored_len))
            .sum();
        rep.deleted = doomed.len() as u64;
        rep.deleted_bytes = doomed.iter().map(|&i| b.bytes(i)).sum();
        rep.epoch = state.epoch;
        return Ok(newly.len() as u64);
    }

    // Nothing to condemn, rescue or delete: leave the state (and every
    // hub's reading of it) alone.
    if newly.is_empty() && rescued.is_empty() && doomed.is_empty() && vanished.is_empty() {
        rep.epoch = state.epoch;
        delete_orphans(storage, &b, t0 - grace_s - ORPHAN_AGE_SECS, rep).await?;
        return Ok(0);
    }

    // Copies first: committed before the packs they leave are condemned.
    let repacked = (0..n).filter(|&i| repack[i] && !kept[i]).count() as u64;
    rep.repacked += repacked;
    let mut moves = if copy.is_empty() {
        Vec::new()
    } else {
        write_copies(svc, &b, &copy, rep).await?
    };
    // Where hubs find the kept objects of packs condemned now: a copy
    // written above, or another pack that holds them (see `GcView`).
    let copied: HashSet<ObjectId> = moves.iter().map(|m| m.0).collect();
    for &i in &newly {
        for e in &b.entries[i] {
            if !kept_visited.contains(&e.id) || copied.contains(&e.id) {
                continue;
            }
            if let Some(&(p, j)) = b.holders[&e.id].iter().find(|(p, _)| kept[*p as usize]) {
                let (p, j) = (p as usize, j as usize);
                moves.push((e.id, Location::of(b.files[p].id, &b.entries[p][j])));
            }
        }
    }
    if !newly.is_empty() {
        storage.put_gc_moves(state.epoch + 1, &moves).await?;
        state.moved.push(super::Moved {
            epoch: state.epoch + 1,
            at: t0,
        });
    }

    // Condemn and rescue, and mark the doomed as deleting: one write.
    let mut doomed_ids: HashSet<PackId> = doomed.iter().map(|&i| b.files[i].id).collect();
    doomed_ids.extend(vanished.iter().copied());
    if !newly.is_empty() {
        state.epoch += 1;
    }
    state.generation += 1;
    state
        .condemned
        .retain(|c| !rescued.contains(&c.pack) && !doomed_ids.contains(&c.pack));
    state.condemned.extend(newly.iter().map(|&i| Condemned {
        pack: b.files[i].id,
        epoch: state.epoch,
        at: t0,
    }));
    state.deleting = doomed_ids.iter().copied().collect();
    state.deleting.sort();
    let version = storage.swap_gc_state(&state, version.as_ref()).await?;
    rep.epoch = state.epoch;

    // A hub that revived a doomed pack before seeing it deleting left a
    // marker first (GcView::revive): those packs live on.
    let late: HashSet<PackId> = storage.revive_marks().await?.into_iter().collect();
    let mut deleted = vanished;
    let go: Vec<usize> = doomed
        .iter()
        .copied()
        .filter(|&i| !late.contains(&b.files[i].id))
        .collect();
    let go_ids: Vec<PackId> = go.iter().map(|&i| b.files[i].id).collect();
    futures::stream::iter(go_ids)
        .map(|id| async move { storage.delete_pack(&id).await })
        .buffer_unordered(PARALLEL_READS)
        .try_collect::<Vec<()>>()
        .await?;
    for &i in &go {
        rep.deleted += 1;
        rep.deleted_bytes += b.bytes(i);
        deleted.push(b.files[i].id);
    }

    delete_orphans(storage, &b, t0 - grace_s - ORPHAN_AGE_SECS, rep).await?;

    state.generation += 1;
    state.deleting.clear();
    state.deleted.extend(deleted.iter().map(|p| Deleted {
        pack: *p,
        generation: state.generation,
        at: t0,
    }));
    let old = t0 - DELETED_RETENTION_SECS;
    if let Some(last) = state
        .deleted
        .iter()
        .filter(|d| d.at < old)
        .map(|d| d.generation)
        .max()
    {
        state.deleted.retain(|d| d.at >= old);
        state.deleted_since = state.deleted_since.max(last + 1);
    }
    // Moves stay while a pack they move from may exist, and a week.
    let oldest_condemned = state.condemned.iter().map(|c| c.epoch).min();
    let mut pruned = Vec::new();
    state.moved.retain(|m| {
        let keep = m.at >= old || oldest_condemned.is_some_and(|e| e <= m.epoch);
        if !keep {
            pruned.push(m.epoch);
        }
        keep
    });
    state.moves_since = state.moved.first().map_or(state.epoch + 1, |m| m.epoch);
    storage.swap_gc_state(&state, Some(&version)).await?;
    for e in pruned {
        storage.delete_gc_moves(e).await?;
    }

    // Markers are done with once their packs are live or gone.
    let still: HashSet<PackId> = state.condemned.iter().map(|c| c.pack).collect();
    for p in revived.iter().chain(late.iter()) {
        if !still.contains(p) {
            storage.clear_revive_mark(p).await?;
        }
    }
    Ok(newly.len() as u64)
}

/// Copies objects (each rehashed) out of packs being repacked into new
/// packs, commits them, and tells this hub's cache. Returns the bytes and
/// packs written.
async fn write_copies(
    svc: &SyncService,
    b: &Bucket,
    copy: &[(ObjectId, usize, usize)],
    rep: &mut GcReply,
) -> Result<Vec<(ObjectId, Location)>> {
    let (mut bytes, mut packs) = (0u64, 0u64);
    let mut moved = Vec::with_capacity(copy.len());
    let mut data = ds_format::pack::HEADER.to_vec();
    let mut framing = ds_format::pack::Framing::new();
    let mut flush = |data: &mut Vec<u8>, framing: &mut ds_format::pack::Framing| {
        let (id, trailer, entries) = std::mem::take(framing).seal();
        let mut pack = std::mem::replace(data, ds_format::pack::HEADER.to_vec());
        let len = pack.len() as u64;
        pack.extend_from_slice(&trailer);
        bytes += len;
        packs += 1;
        (id, pack, trailer, entries)
    };
    for w in copy.chunks(ds_proto::MAX_BATCH) {
        let ids: Vec<ObjectId> = w.iter().map(|c| c.0).collect();
        let locs: Vec<Location> = w
            .iter()
            .map(|&(_, p, j)| Location::of(b.files[p].id, &b.entries[p][j]))
            .collect();
        let objs = svc.fetch(&ids, &locs).await.map_err(HubError::from)?;
        for (o, l) in objs.iter().zip(&locs) {
            let id = ObjectId::from_slice(&o.id).expect("fetch returns the ids asked");
            let raw = decode_stored(l.stored, &o.data, l.raw_len)?;
            if l.kind.hash(&raw) != id {
                return Err(HubError::Corrupt(format!(
                    "{} {id} in pack {} does not match its id; hub gc stopped before \
                     condemning anything",
                    l.kind.name(),
                    l.pack
                )));
            }
            framing.push(id, l.kind, l.stored, l.stored_len, l.raw_len);
            data.extend_from_slice(&o.data);
            if framing.len() >= REPACK_TARGET {
                let (id, pack, trailer, entries) = flush(&mut data, &mut framing);
                moved.extend(entries.iter().map(|e| (e.id, Location::of(id, e))));
                commit_copy(svc, id, pack, &trailer, entries).await?;
            }
        }
    }
    if !framing.is_empty() {
        let (id, pack, trailer, entries) = flush(&mut data, &mut framing);
        moved.extend(entries.iter().map(|e| (e.id, Location::of(id, e))));
        commit_copy(svc, id, pack, &trailer, entries).await?;
    }
    rep.repack_bytes_written += bytes;
    rep.repack_packs_written += packs;
    Ok(moved)
}

async fn commit_copy(
    svc: &SyncService,
    id: PackId,
    pack: Vec<u8>,
    trailer: &[u8],
    entries: Vec<PackEntry>,
) -> Result<()> {
    svc.storage()
        .put_pack(&id, bytes::Bytes::from(pack), trailer)
        .await?;
    svc.add_to_cache(id, entries).await
}

/// Bytes never committed, from before `before`: no upload is at them.
async fn delete_orphans(
    storage: &crate::storage::Storage,
    b: &Bucket,
    before: i64,
    rep: &mut GcReply,
) -> Result<()> {
    for f in &b.files {
        if f.committed.is_none()
            && let Some((_, when)) = f.data
            && when < before
        {
            storage.delete_pack(&f.id).await?;
            rep.orphans_deleted += 1;
        }
    }
    Ok(())
}
