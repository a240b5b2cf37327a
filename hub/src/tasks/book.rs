//! The task book: every piece of task state, as documents in the bucket.
//!
//! ```text
//! tasks/<id>.json          the record (truth); moved by compare-and-swap
//! queue/<p>-<id>           a queued task (p = 0 for a retry, at the front;
//!                          1 otherwise); a hint, checked against the record
//! running/<id>             a running task, for the lease scanner; a hint
//! busy/<workspace>         the task running on a workspace (one at a time)
//! logs/<id>/<first>        one batch of output lines (a prost `LogBatch`),
//!                          named by its first line's number, zero-padded
//! runners/<name>           a runner's last hello and heartbeat (`RunnerInfo`)
//! ```
//!
//! Hints may be stale (a hub died between two writes): whoever reads one
//! checks the record and removes a hint that no longer holds.

use bytes::Bytes;
use ds_proto::TaskId;
use ds_proto::runner::{LogBatch, RunnerInfo};
use prost::Message;

use crate::docs::Swap;
use crate::error::{HubError, Result};
use crate::storage::Storage;
use crate::tasks::record::Record;

#[derive(Debug, Clone)]
pub struct Book {
    storage: Storage,
}

fn record_key(id: &str) -> String {
    format!("tasks/{id}.json")
}

impl Book {
    pub fn new(storage: Storage) -> Book {
        Book { storage }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub async fn load(&self, id: &TaskId) -> Result<Option<Record>> {
        Ok(self.load_versioned(id).await?.map(|(r, _)| r))
    }

    async fn load_versioned(&self, id: &TaskId) -> Result<Option<(Record, crate::docs::Version)>> {
        let Some((b, v)) = self.storage.get_doc(&record_key(id)).await? else {
            return Ok(None);
        };
        let r: Record = serde_json::from_slice(&b)
            .map_err(|e| HubError::Corrupt(format!("task record {id} is corrupt: {e}")))?;
        Ok(Some((r, v)))
    }

    /// Stores a new record; refuses an id that exists.
    pub async fn create(&self, r: &Record) -> Result<()> {
        if self
            .storage
            .create_doc(&record_key(&r.id), r.to_json())
            .await?
        {
            Ok(())
        } else {
            Err(HubError::Internal(format!("task id {} is taken", r.id)))
        }
    }

    /// Applies `change` to the current record and swaps it in, reading
    /// again and re-applying after a lost race. `change` returns false to
    /// leave the record as it is. Returns the record as it ends up and
    /// whether this call changed it; `None` if there is no such task.
    pub async fn update(
        &self,
        id: &TaskId,
        mut change: impl FnMut(&mut Record) -> bool,
    ) -> Result<Option<(Record, bool)>> {
        loop {
            let Some((mut r, v)) = self.load_versioned(id).await? else {
                return Ok(None);
            };
            if !change(&mut r) {
                return Ok(Some((r, false)));
            }
            match self
                .storage
                .swap_doc(&record_key(id), Some(&v), r.to_json())
                .await?
            {
                Swap::Done(_) => return Ok(Some((r, true))),
                Swap::Lost => continue,
            }
        }
    }

    /// Every task id, oldest first (ids sort by submission time).
    pub async fn task_ids(&self) -> Result<Vec<TaskId>> {
        Ok(self
            .storage
            .list_docs("tasks")
            .await?
            .iter()
            .filter_map(|n| TaskId::new(n.strip_suffix(".json")?).ok())
            .collect())
    }

    pub async fn enqueue(&self, id: &TaskId, front: bool) -> Result<()> {
        let p = if front { 0 } else { 1 };
        self.storage
            .put_doc(&format!("queue/{p}-{id}"), Bytes::new())
            .await
    }

    /// The queue in dispatch order: (marker name, task).
    pub async fn queued(&self) -> Result<Vec<(String, TaskId)>> {
        Ok(self
            .storage
            .list_docs("queue")
            .await?
            .into_iter()
            .filter_map(|n| {
                let id = TaskId::new(n.split_once('-')?.1).ok()?;
                Some((n, id))
            })
            .collect())
    }

    pub async fn dequeue(&self, marker: &str) -> Result<()> {
        self.storage.delete_doc(&format!("queue/{marker}")).await
    }

    pub async fn mark_running(&self, id: &TaskId, running: bool) -> Result<()> {
        let key = format!("running/{id}");
        if running {
            self.storage.put_doc(&key, Bytes::new()).await
        } else {
            self.storage.delete_doc(&key).await
        }
    }

    pub async fn running(&self) -> Result<Vec<TaskId>> {
        Ok(self
            .storage
            .list_docs("running")
            .await?
            .iter()
            .filter_map(|n| TaskId::new(n).ok())
            .collect())
    }

    /// Takes workspace `ws` for task `id`. False when another task that
    /// has not ended holds it; a holder that ended (or vanished) without
    /// letting go is replaced.
    pub async fn lock_workspace(&self, ws: &str, id: &TaskId) -> Result<bool> {
        let key = format!("busy/{ws}");
        loop {
            let Some((b, v)) = self.storage.get_doc(&key).await? else {
                if self
                    .storage
                    .create_doc(&key, Bytes::from(id.to_string()))
                    .await?
                {
                    return Ok(true);
                }
                continue;
            };
            let holder = std::str::from_utf8(&b)
                .ok()
                .and_then(|s| TaskId::new(s).ok());
            if holder.as_ref() == Some(id) {
                return Ok(true);
            }
            if let Some(h) = &holder
                && let Some(r) = self.load(h).await?
                && !r.state.is_final()
            {
                return Ok(false);
            }
            match self
                .storage
                .swap_doc(&key, Some(&v), Bytes::from(id.to_string()))
                .await?
            {
                Swap::Done(_) => return Ok(true),
                Swap::Lost => continue,
            }
        }
    }

    /// Lets go of `ws` if task `id` holds it.
    pub async fn unlock_workspace(&self, ws: &str, id: &TaskId) -> Result<()> {
        let key = format!("busy/{ws}");
        if let Some((b, _)) = self.storage.get_doc(&key).await?
            && b == id.as_bytes()
        {
            self.storage.delete_doc(&key).await?;
        }
        Ok(())
    }

    /// Stores one batch of output; a batch stored before (a runner resent
    /// it after a reconnect) is kept as it was.
    pub async fn put_logs(&self, id: &TaskId, batch: &LogBatch) -> Result<()> {
        let key = format!("logs/{id}/{:012}", batch.first);
        self.storage
            .create_doc(&key, Bytes::from(batch.encode_to_vec()))
            .await?;
        Ok(())
    }

    /// First line numbers of a task's stored batches, in order.
    pub async fn log_batches(&self, id: &TaskId) -> Result<Vec<u64>> {
        Ok(self
            .storage
            .list_docs(&format!("logs/{id}"))
            .await?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect())
    }

    pub async fn get_logs(&self, id: &TaskId, first: u64) -> Result<LogBatch> {
        let key = format!("logs/{id}/{first:012}");
        let (b, _) = self
            .storage
            .get_doc(&key)
            .await?
            .ok_or_else(|| HubError::Corrupt(format!("log batch {key} vanished")))?;
        LogBatch::decode(b).map_err(|e| HubError::Corrupt(format!("log batch {key}: {e}")))
    }

    pub async fn put_runner(&self, r: &RunnerInfo) -> Result<()> {
        self.storage
            .put_doc(
                &format!("runners/{}", r.name),
                Bytes::from(r.encode_to_vec()),
            )
            .await
    }

    /// One runner's last recorded presence.
    pub async fn runner(&self, name: &str) -> Result<Option<RunnerInfo>> {
        match self.storage.get_doc(&format!("runners/{name}")).await? {
            None => Ok(None),
            Some((b, _)) => RunnerInfo::decode(b)
                .map(Some)
                .map_err(|e| HubError::Corrupt(format!("runner record {name} is corrupt: {e}"))),
        }
    }

    pub async fn runners(&self) -> Result<Vec<RunnerInfo>> {
        let mut out = Vec::new();
        for n in self.storage.list_docs("runners").await? {
            if let Some((b, _)) = self.storage.get_doc(&format!("runners/{n}")).await? {
                out.push(RunnerInfo::decode(b).map_err(|e| {
                    HubError::Corrupt(format!("runner record {n} is corrupt: {e}"))
                })?);
            }
        }
        Ok(out)
    }
}
