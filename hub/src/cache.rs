//! The hub's local index of what the bucket holds: a ds-store RocksDB
//! [`Index`] (object id → pack location), filled from the packs' index
//! objects. It is only a cache — delete it and the hub rebuilds it from the
//! bucket — and it may lag behind packs another hub stored: a stale "don't
//! have" costs a re-upload, never a wrong answer, because the bucket never
//! loses a committed pack. Lookups that must not miss (a ref update, a
//! download) refresh it first.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ds_format::ObjectId;
use ds_store::index::{Index, IndexMode, Location};
use tokio::sync::Mutex;

use crate::error::{HubError, Result};
use crate::storage::Storage;

/// How stale an answer to `Have` may be before the bucket is listed again.
const HAVE_STALENESS: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Cache {
    index: Arc<Index>,
    last_refresh: Arc<Mutex<Option<Instant>>>,
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
        })
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Indexes every pack in the bucket the cache does not know yet.
    /// Returns how many were added.
    pub async fn refresh(&self, storage: &Storage) -> Result<u64> {
        let mut last = self.last_refresh.lock().await;
        let mut added = 0;
        for id in storage.list_packs().await? {
            if self.index.has_pack(&id)? {
                continue;
            }
            let entries = storage.pack_entries(&id).await?;
            self.index.add_pack(&id, &entries)?;
            added += 1;
        }
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

    pub fn get(&self, id: &ObjectId) -> Result<Option<Location>> {
        Ok(self.index.get(id)?)
    }

    pub fn contains(&self, id: &ObjectId) -> Result<bool> {
        Ok(self.index.contains(id)?)
    }
}
