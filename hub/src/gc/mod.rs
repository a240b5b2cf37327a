//! Hub gc's state in the bucket, and each hub's view of it.
//!
//! Hub gc (`run.rs`) never deletes a pack in one step. It first
//! **condemns** it — records it in `gc/state` and bumps the gc *epoch* —
//! and deletes it only in a later round, at least `max(grace, SETTLE)`
//! later, if it is still unreached, after recording it as **deleting**.
//! Every hub reads `gc/state` (at most [`VIEW_STALENESS`] old for answers,
//! afresh before a commit) and treats the objects of condemned and
//! deleting packs as not held: `Have` says no, an upload may not lean on
//! them, a ref may not move to them. Answers carry the epoch they were
//! given under, and a ref update whose answers predate a condemnation is
//! refused (ABORTED; the client pushes again). The argument that this
//! loses no acknowledged object is in ARCHITECTURE.md ("Hub gc").
//!
//! ```text
//! gc/state          JSON GcState, moved only by compare-and-swap
//! gc/lease          JSON Lease: one gc at a time, expiring
//! gc/revive/<pack>  written by a hub that took a condemned pack again
//!                   (a client re-uploaded it byte for byte)
//! gc/moves/<epoch>  where the still-needed objects of the packs condemned
//!                   at that epoch are found (a repacked copy or another
//!                   pack holding them): hubs repoint their caches, so that
//!                   nothing they serve is left pointing at a deleted pack
//! ```

pub(crate) mod run;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ds_format::PackId;
use ds_store::index::Location;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::cache::Cache;
use crate::docs::{Swap, Version};
use crate::error::{HubError, Result};
use crate::storage::Storage;

const STATE: &str = "gc/state";
const LEASE: &str = "gc/lease";
const REVIVE: &str = "gc/revive";
const MOVES: &str = "gc/moves";

/// How old a hub's view of `gc/state` may be when it answers `Have` or
/// checks an upload (commits read it afresh).
pub const VIEW_STALENESS: Duration = Duration::from_secs(2);

/// The least time between condemning a pack and deleting it, whatever the
/// grace (`ds hub --gc-settle`): a hub's write that follows a fresh read of
/// the state (an index object, a ref) is assumed to land within it.
pub const SETTLE: Duration = Duration::from_secs(10);

/// How long deletions stay listed, so that running hubs drop them from
/// their caches; a hub that missed more reconciles with a listing.
const DELETED_RETENTION_SECS: i64 = 7 * 86_400;

/// A gc lease lasts this many settle times unless renewed (every two):
/// a gc that died frees the lease after it.
const LEASE_SETTLES: u32 = 6;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcState {
    /// Bumped by every round that condemns something.
    pub epoch: u64,
    /// Bumped by every change.
    pub generation: u64,
    #[serde(default)]
    pub condemned: Vec<Condemned>,
    /// Packs being deleted now: never revived, never leaned on.
    #[serde(default)]
    pub deleting: Vec<PackId>,
    #[serde(default)]
    pub deleted: Vec<Deleted>,
    /// Every deletion of a generation at least this one is in `deleted`.
    #[serde(default)]
    pub deleted_since: u64,
    /// Epochs whose moves document is kept.
    #[serde(default)]
    pub moved: Vec<Moved>,
    /// Every epoch at least this one has its moves document (or moved
    /// nothing).
    #[serde(default)]
    pub moves_since: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moved {
    pub epoch: u64,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condemned {
    pub pack: PackId,
    pub epoch: u64,
    /// Unix seconds.
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub pack: PackId,
    pub generation: u64,
    pub at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    expires: i64,
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn corrupt(e: serde_json::Error) -> HubError {
    HubError::Corrupt(format!("{STATE} in the bucket is not valid: {e}"))
}

impl Storage {
    /// The gc state and its version (none before the first gc).
    pub async fn gc_state(&self) -> Result<(GcState, Option<Version>)> {
        match self.get_doc(STATE).await? {
            None => Ok((GcState::default(), None)),
            Some((b, v)) => Ok((serde_json::from_slice(&b).map_err(corrupt)?, Some(v))),
        }
    }

    /// The gc state if it changed since `seen` (`None`: unchanged).
    pub(crate) async fn gc_state_if_changed(
        &self,
        seen: Option<&Version>,
    ) -> Result<Option<(GcState, Option<Version>)>> {
        Ok(match self.get_doc_if_changed(STATE, seen).await? {
            None => None,
            Some(None) => Some((GcState::default(), None)),
            Some(Some((b, v))) => Some((serde_json::from_slice(&b).map_err(corrupt)?, Some(v))),
        })
    }

    /// Writes the gc state if it is still at `expected`.
    pub(crate) async fn swap_gc_state(
        &self,
        st: &GcState,
        expected: Option<&Version>,
    ) -> Result<Version> {
        let body = Bytes::from(serde_json::to_vec(st).map_err(corrupt)?);
        match self.swap_doc(STATE, expected, body).await? {
            Swap::Done(v) => Ok(v),
            Swap::Lost => Err(HubError::GcBusy(
                "the hub gc state changed under this gc (another gc ran?); nothing more was \
                 changed: run it again"
                    .into(),
            )),
        }
    }

    /// Writes where the objects of packs condemned at `epoch` now are.
    pub(crate) async fn put_gc_moves(
        &self,
        epoch: u64,
        moves: &[(ds_format::ObjectId, Location)],
    ) -> Result<()> {
        let mut b = Vec::with_capacity(moves.len() * (32 + Location::SIZE));
        for (id, l) in moves {
            b.extend_from_slice(&id.0);
            b.extend_from_slice(&l.encode());
        }
        self.put_doc(&format!("{MOVES}/{epoch}"), Bytes::from(b))
            .await
    }

    pub(crate) async fn gc_moves(
        &self,
        epoch: u64,
    ) -> Result<Option<Vec<(ds_format::ObjectId, Location)>>> {
        let Some((b, _)) = self.get_doc(&format!("{MOVES}/{epoch}")).await? else {
            return Ok(None);
        };
        let bad = || HubError::Corrupt(format!("{MOVES}/{epoch} in the bucket is not valid"));
        let rec = 32 + Location::SIZE;
        if b.len() % rec != 0 {
            return Err(bad());
        }
        b.chunks(rec)
            .map(|r| {
                let id = ds_format::ObjectId::from_slice(&r[..32]).ok_or_else(bad)?;
                let l = Location::decode(&r[32..]).ok_or_else(bad)?;
                Ok((id, l))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub(crate) async fn delete_gc_moves(&self, epoch: u64) -> Result<()> {
        self.delete_doc(&format!("{MOVES}/{epoch}")).await
    }

    pub(crate) async fn mark_revived(&self, pack: &PackId) -> Result<()> {
        self.put_doc(&format!("{REVIVE}/{}", pack.to_hex()), Bytes::new())
            .await
    }

    pub(crate) async fn revive_marks(&self) -> Result<Vec<PackId>> {
        Ok(self
            .list_docs(REVIVE)
            .await?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect())
    }

    pub(crate) async fn clear_revive_mark(&self, pack: &PackId) -> Result<()> {
        self.delete_doc(&format!("{REVIVE}/{}", pack.to_hex()))
            .await
    }

    /// Takes the gc lease for `secs`, or says who holds it. `renew`:
    /// extend the lease this process holds.
    pub(crate) async fn take_gc_lease(&self, secs: i64, renew: bool) -> Result<()> {
        let holder = format!(
            "{} pid {}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "a hub".into()),
            std::process::id()
        );
        let mine = Lease {
            holder,
            expires: now_unix() + secs,
        };
        let body = Bytes::from(serde_json::to_vec(&mine).map_err(corrupt)?);
        if self.create_doc(LEASE, body.clone()).await? {
            return Ok(());
        }
        if let Some((b, v)) = self.get_doc(LEASE).await? {
            let held: Lease = serde_json::from_slice(&b).map_err(corrupt)?;
            if held.expires > now_unix() && !(renew && held.holder == mine.holder) {
                return Err(HubError::GcBusy(format!(
                    "a hub gc is already running ({}); its lease ends in {} s unless it finishes",
                    held.holder,
                    held.expires - now_unix()
                )));
            }
            if let Swap::Done(_) = self.swap_doc(LEASE, Some(&v), body).await? {
                return Ok(());
            }
        }
        Err(HubError::GcBusy(
            "another hub gc took the lease just now".into(),
        ))
    }

    pub(crate) async fn release_gc_lease(&self) -> Result<()> {
        self.delete_doc(LEASE).await
    }
}

/// What a hub may rely on, as of one reading of `gc/state`.
#[derive(Debug, Default)]
pub struct Sight {
    pub epoch: u64,
    /// Condemned (and not revived here) or deleting.
    unusable: HashSet<PackId>,
    deleting: HashSet<PackId>,
}

impl Sight {
    /// Whether objects in `pack` may count as held.
    pub fn usable(&self, pack: &PackId) -> bool {
        !self.unusable.contains(pack)
    }
}

#[derive(Debug, Default)]
struct ViewState {
    /// When the last reading began.
    read_at: Option<Instant>,
    version: Option<Version>,
    generation: Option<u64>,
    state: GcState,
    /// Condemned packs this hub took again (a marker is in the bucket).
    revived: HashSet<PackId>,
    sight: Arc<Sight>,
}

/// One hub's view of the gc state.
#[derive(Debug, Clone)]
pub struct GcView {
    storage: Storage,
    cache: Cache,
    settle: Duration,
    inner: Arc<Mutex<ViewState>>,
}

impl GcView {
    pub fn new(storage: Storage, cache: Cache, settle: Duration) -> GcView {
        GcView {
            storage,
            cache,
            settle,
            inner: Default::default(),
        }
    }

    /// See [`SETTLE`].
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// How long a gc lease lasts.
    pub fn lease(&self) -> Duration {
        self.settle * LEASE_SETTLES
    }

    /// A view at most [`VIEW_STALENESS`] old.
    pub async fn current(&self) -> Result<Arc<Sight>> {
        let mut v = self.inner.lock().await;
        if v.read_at.is_none_or(|t| t.elapsed() >= VIEW_STALENESS) {
            self.reload(&mut v).await?;
        }
        Ok(v.sight.clone())
    }

    /// The view as the bucket has it now: from a reading that began after
    /// this call did (callers waiting together share one).
    pub async fn fresh(&self) -> Result<Arc<Sight>> {
        let asked = Instant::now();
        let mut v = self.inner.lock().await;
        if v.read_at.is_none_or(|t| t < asked) {
            self.reload(&mut v).await?;
        }
        Ok(v.sight.clone())
    }

    async fn reload(&self, v: &mut ViewState) -> Result<()> {
        let began = Instant::now();
        let changed = self.storage.gc_state_if_changed(v.version.as_ref()).await?;
        v.read_at = Some(began);
        let Some((st, version)) = changed else {
            return Ok(());
        };
        v.version = version;
        if v.generation == Some(st.generation) {
            return Ok(());
        }
        // Deleted packs leave the cache: those deleted since the last
        // reading, and those being deleted. A hub that may have missed some
        // (it just started, or slept through the retention) reconciles its
        // cache with a listing of the bucket instead. Forgetting a pack
        // that was uploaded again since costs a re-upload, never an answer.
        let gap = v.generation.is_none_or(|g| g + 1 < st.deleted_since);
        let last = v.generation.unwrap_or(0);
        if gap {
            self.cache.reconcile(&self.storage).await?;
        }
        let gone: Vec<PackId> = st
            .deleting
            .iter()
            .copied()
            .chain(
                st.deleted
                    .iter()
                    .filter(|d| !gap && d.generation > last)
                    .map(|d| d.pack),
            )
            .collect();
        self.cache.forget_packs(gone).await?;
        let condemned: HashSet<PackId> = st.condemned.iter().map(|c| c.pack).collect();
        // Repoint what moved: at start every kept moves document (the
        // cache may point anywhere), else those since the last reading.
        let last_epoch = v.state.epoch;
        let from = if gap || last_epoch + 1 < st.moves_since {
            st.moves_since.max(1)
        } else {
            last_epoch + 1
        };
        if from <= st.epoch {
            self.cache.refresh(&self.storage).await?;
            let mut unusable = condemned.clone();
            unusable.extend(st.deleting.iter().copied());
            for e in from..=st.epoch {
                if let Some(moves) = self.storage.gc_moves(e).await? {
                    self.cache.repoint(moves, unusable.clone()).await?;
                }
            }
        }
        v.revived.retain(|p| condemned.contains(p));
        let deleting: HashSet<PackId> = st.deleting.iter().copied().collect();
        v.generation = Some(st.generation);
        v.state = st;
        Self::resight(&self.cache, v, condemned, deleting);
        Ok(())
    }

    fn resight(
        cache: &Cache,
        v: &mut ViewState,
        condemned: HashSet<PackId>,
        deleting: HashSet<PackId>,
    ) {
        let unusable: HashSet<PackId> = condemned
            .difference(&v.revived)
            .copied()
            .chain(deleting.iter().copied())
            .collect();
        cache.set_unusable(unusable.clone());
        v.sight = Arc::new(Sight {
            epoch: v.state.epoch,
            unusable,
            deleting,
        });
    }

    /// Takes a condemned pack again (a client uploaded it byte for byte):
    /// leaves a marker that gc honours, then checks afresh that gc has not
    /// begun deleting it. Returns the view to answer under, or refuses.
    pub async fn revive(&self, pack: PackId) -> Result<Arc<Sight>> {
        self.storage.mark_revived(&pack).await?;
        let mut v = self.inner.lock().await;
        self.reload(&mut v).await?;
        // Not deleting now: gc will see the marker before it could start.
        // Still there: gc did not finish deleting it before that.
        if v.sight.deleting.contains(&pack) || !self.storage.has_pack(&pack).await? {
            return Err(HubError::Stale(format!(
                "pack {} is being deleted by hub gc right now; push again in a moment",
                pack.short()
            )));
        }
        v.revived.insert(pack);
        let condemned = v.state.condemned.iter().map(|c| c.pack).collect();
        let deleting = v.sight.deleting.clone();
        Self::resight(&self.cache, &mut v, condemned, deleting);
        Ok(v.sight.clone())
    }
}
