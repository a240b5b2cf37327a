//! The hub's local index of what the bucket holds: a ds-store RocksDB
//! [`Index`] (object id → pack location), filled from the packs' index
//! objects. It is only a cache — delete it and the hub rebuilds it from the
//! bucket — and it may lag behind packs another hub stored: a stale "don't
//! have" costs a re-upload, never a wrong answer. Lookups that must not
//! miss (a ref update, a download) refresh it first.
//!
//! Only hub gc deletes packs, never without condemning them first (see
//! `gc`): the hub forgets a deleted pack's key here, an object whose
//! recorded pack is forgotten, condemned or being deleted does not count
//! as held, and gc's moves repoint objects that are still needed at their
//! other copy (a re-upload, which writes a new pack, repoints them too).
//!
//! Every RocksDB call runs on tokio's blocking pool, a batch of ids per
//! call, so a slow disk never stalls the executor serving other clients.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ds_format::pack::PackEntry;
use ds_format::{ObjectId, PackId};
use ds_store::index::{Index, IndexMode, Location};
use tokio::sync::Mutex;

use crate::error::{HubError, Result};
use crate::gc::Sight;
use crate::storage::Storage;

/// Whether packs are known, asked once per pack in a batch; and the one
/// rule of what the hub holds.
#[derive(Default)]
pub(crate) struct PackMemo(std::collections::HashMap<PackId, bool>);

impl PackMemo {
    fn known(&mut self, ix: &Index, p: &PackId) -> Result<bool> {
        if let Some(k) = self.0.get(p) {
            return Ok(*k);
        }
        let k = ix.has_pack(p)?;
        self.0.insert(*p, k);
        Ok(k)
    }

    /// Whether an object recorded at `l` counts as held: its pack is one
    /// this cache knows (not deleted) and `sight` lets the hub rely on it.
    pub(crate) fn held_at(&mut self, ix: &Index, sight: &Sight, l: &Location) -> Result<bool> {
        Ok(sight.usable(&l.pack) && self.known(ix, &l.pack)?)
    }

    /// The location of `id` if it points into a pack this cache forgot.
    fn stale(&mut self, ix: &Index, id: &ObjectId) -> Result<Option<Location>> {
        Ok(match ix.get(id)? {
            Some(l) if !self.known(ix, &l.pack)? => Some(l),
            _ => None,
        })
    }
}

/// How stale an answer to `Have` may be before the bucket is listed again.
const HAVE_STALENESS: Duration = Duration::from_secs(2);

/// How often a lookup that found only pointers into deleted packs may
/// re-read every index object in the bucket.
const REINDEX_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Cache {
    index: Arc<Index>,
    last_refresh: Arc<Mutex<Option<Instant>>>,
    last_reindex: Arc<Mutex<Option<Instant>>>,
    /// Packs hub gc condemned or is deleting (kept by `GcView`): indexed
    /// before the others, so that where an object has several copies the
    /// pointer lands on one that stays.
    unusable: Arc<std::sync::RwLock<std::collections::HashSet<PackId>>>,
}

impl Cache {
    pub fn open(dir: &Path) -> Result<Cache> {
        std::fs::create_dir_all(dir).map_err(|source| HubError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Cache {
            index: Arc::new(Index::open(dir, IndexMode::Primary)?),
            last_refresh: Arc::new(Mutex::new(None)),
            last_reindex: Arc::new(Mutex::new(None)),
            unusable: Default::default(),
        })
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Records which packs hub gc condemned or is deleting.
    pub(crate) fn set_unusable(&self, packs: std::collections::HashSet<PackId>) {
        *self.unusable.write().expect("poisoned") = packs;
    }

    /// Indexes `packs` from their index objects, unusable ones first so
    /// that where an object has several copies the pointer lands on one
    /// that stays; a pack listed, then deleted by hub gc, is skipped.
    /// Returns how many were indexed.
    async fn index_packs(&self, storage: &Storage, mut packs: Vec<PackId>) -> Result<u64> {
        {
            let u = self.unusable.read().expect("poisoned");
            packs.sort_by_key(|p| !u.contains(p));
        }
        let mut added = 0;
        for id in packs {
            if let Some(entries) = storage.pack_entries_if_present(&id).await? {
                self.add_pack(id, entries).await?;
                added += 1;
            }
        }
        Ok(added)
    }

    /// Lookups found only pointers into packs that are gone (hub gc
    /// deleted a copy, another copy lives in a pack this cache indexed
    /// earlier): re-reads every index object, usable packs last, and drops
    /// the pointers of `ids` that still lead nowhere. At most every
    /// [`REINDEX_EVERY`].
    pub async fn reindex_for(&self, storage: &Storage, ids: Vec<ObjectId>) -> Result<()> {
        let stale = self
            .with_index({
                let ids = ids.clone();
                move |ix| {
                    let mut packs = PackMemo::default();
                    for id in &ids {
                        if packs.stale(ix, id)?.is_some() {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
            })
            .await?;
        if !stale {
            return Ok(());
        }
        let mut last = self.last_reindex.lock().await;
        if last.is_some_and(|t| t.elapsed() < REINDEX_EVERY) {
            return Ok(());
        }
        let listed = storage.list_packs().await?;
        self.index_packs(storage, listed).await?;
        *last = Some(Instant::now());
        self.with_index(move |ix| {
            let mut packs = PackMemo::default();
            for id in &ids {
                if let Some(l) = packs.stale(ix, id)? {
                    ix.remove_pack(&l.pack, &[*id])?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Runs `f` on the index off the executor.
    async fn with_index<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Index) -> Result<T> + Send + 'static,
    {
        let ix = self.index.clone();
        tokio::task::spawn_blocking(move || f(&ix))
            .await
            .map_err(|e| HubError::Internal(format!("an index task failed: {e}")))?
    }

    /// Indexes every pack in the bucket the cache does not know yet.
    /// Returns how many were added.
    pub async fn refresh(&self, storage: &Storage) -> Result<u64> {
        let mut last = self.last_refresh.lock().await;
        let listed = storage.list_packs().await?;
        let new: Vec<_> = self
            .with_index(move |ix| {
                let mut new = Vec::new();
                for id in listed {
                    if !ix.has_pack(&id)? {
                        new.push(id);
                    }
                }
                Ok(new)
            })
            .await?;
        let added = self.index_packs(storage, new).await?;
        *last = Some(Instant::now());
        Ok(added)
    }

    /// Refreshes unless that happened within `HAVE_STALENESS`.
    pub async fn refresh_if_stale(&self, storage: &Storage) -> Result<()> {
        let fresh = self
            .last_refresh
            .lock()
            .await
            .is_some_and(|t| t.elapsed() < HAVE_STALENESS);
        if !fresh {
            self.refresh(storage).await?;
        }
        Ok(())
    }

    /// Where each of `ids` is, if the cache knows (in a pack not deleted).
    pub async fn get_all(&self, ids: Vec<ObjectId>) -> Result<Vec<Option<Location>>> {
        self.with_index(move |ix| {
            let mut packs = PackMemo::default();
            ids.iter()
                .map(|id| {
                    Ok(match ix.get(id)? {
                        Some(l) if packs.known(ix, &l.pack)? => Some(l),
                        _ => None,
                    })
                })
                .collect()
        })
        .await
    }

    /// Whether each of `ids` is held: in a pack the cache knows and `sight`
    /// lets the hub rely on.
    pub async fn held_all(&self, ids: Vec<ObjectId>, sight: Arc<Sight>) -> Result<Vec<bool>> {
        self.with_index(move |ix| {
            let mut packs = PackMemo::default();
            ids.iter()
                .map(|id| {
                    Ok(match ix.get(id)? {
                        Some(l) => packs.held_at(ix, &sight, &l)?,
                        None => false,
                    })
                })
                .collect()
        })
        .await
    }

    /// Points objects whose recorded pack is `unusable` or unknown at the
    /// locations hub gc moved them to (when this cache knows those packs).
    pub async fn repoint(
        &self,
        moves: Vec<(ObjectId, Location)>,
        unusable: std::collections::HashSet<PackId>,
    ) -> Result<()> {
        self.with_index(move |ix| {
            let mut packs = PackMemo::default();
            let mut set = Vec::new();
            for (id, to) in moves {
                let stale = match ix.get(&id)? {
                    Some(l) => unusable.contains(&l.pack) || !packs.known(ix, &l.pack)?,
                    None => true,
                };
                if stale && !unusable.contains(&to.pack) && packs.known(ix, &to.pack)? {
                    set.push((id, to));
                }
            }
            Ok(ix.set_locations(&set)?)
        })
        .await
    }

    /// Forgets packs hub gc deleted (or is deleting).
    pub async fn forget_packs(&self, packs: Vec<PackId>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        self.with_index(move |ix| {
            for p in &packs {
                if ix.has_pack(p)? {
                    ix.remove_pack(p, &[])?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Forgets every pack the bucket no longer lists, then indexes the
    /// ones it does not know.
    pub async fn reconcile(&self, storage: &Storage) -> Result<()> {
        let listed: std::collections::HashSet<PackId> =
            storage.list_packs().await?.into_iter().collect();
        let known = self.with_index(|ix| Ok(ix.packs()?)).await?;
        let gone = known.into_iter().filter(|p| !listed.contains(p)).collect();
        self.forget_packs(gone).await?;
        self.refresh(storage).await?;
        Ok(())
    }

    /// Records a stored pack's objects.
    pub async fn add_pack(&self, id: PackId, entries: Vec<PackEntry>) -> Result<()> {
        self.with_index(move |ix| Ok(ix.add_pack(&id, &entries)?))
            .await
    }
}
