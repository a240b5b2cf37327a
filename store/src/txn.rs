//! The one way to add objects to a store and move a ref.
//!
//! Why one type: every writer (a directory snapshot, a mount's commit, a
//! pull, and later runners and dataset mirrors) must pass the same three
//! durability barriers of ARCHITECTURE.md in the same order:
//!
//! 1. packs committed: [`Transaction::finish`] closes the last pack and
//!    waits until every pack is fsynced, renamed and recorded;
//! 2. their records durable: the index synced (or, for a mount appending
//!    under the writer lock, the journal fsynced), also in `finish`;
//! 3. only then the ref moves, by compare-and-swap: [`Durable::swap_ref`].
//!
//! The type states make the order impossible to get wrong: a ref can only
//! be moved through a [`Durable`], which only `finish` returns. Dropping a
//! [`Transaction`] part-way leaves only unreferenced, complete packs, which
//! gc removes.
//!
//! It also builds the one snapshot object ([`Transaction::put_snapshot`]):
//! which host, when, and the encoding are decided here and nowhere else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ds_format::run::Run;
use ds_format::snapshot::{Snapshot, SnapshotStats};
use ds_format::tree::DirRef;
use ds_format::{ObjectId, ObjectKind};

use crate::writer::{self, Catalog, PackWriter, Payload, WriteStats, WriterSession};
use crate::{Appender, Result, Store};

/// Where a transaction writes.
#[derive(Debug)]
pub enum Target<'a> {
    /// A store this transaction owns, opened with `Access::Write`.
    Open(Box<Store>),
    /// A store opened with `Access::Write` (or `Exclusive`), borrowed.
    Borrowed(&'a Store),
    /// A shared store opened with `Access::Write`, for a transaction that
    /// must outlive its creator's stack frame (a blocking task).
    Shared(Arc<Store>),
    /// A reader store appending under the writer lock: new packs are
    /// recorded in the journal, not the index (see `journal.rs`).
    Append(Appender),
}

impl Target<'_> {
    /// The store written to.
    pub fn store(&self) -> &Store {
        match self {
            Target::Open(s) => s,
            Target::Borrowed(s) => s,
            Target::Shared(s) => s,
            Target::Append(a) => a.store(),
        }
    }

    fn catalog(&self) -> Arc<dyn Catalog> {
        match self {
            Target::Append(a) => a.catalog(),
            _ => self.store().index().clone(),
        }
    }

    /// Barrier 2: what the writer recorded is findable by every process.
    fn sync(&self) -> Result<()> {
        match self {
            Target::Append(a) => a.sync(),
            _ => self.store().index().sync(),
        }
    }
}

/// What a new snapshot records; the transaction adds the time (unless
/// given), the host and the encoding.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub root: DirRef,
    pub parent: Option<ObjectId>,
    pub workspace: String,
    /// What was snapshotted (a directory's path, a mountpoint).
    pub source: Vec<u8>,
    pub message: String,
    pub metadata: BTreeMap<String, String>,
    pub stats: SnapshotStats,
    /// When it was taken; `None`: now.
    pub time_ns: Option<i64>,
    /// Runs this snapshot records (it is their "after" snapshot). Their
    /// workspace, "before" snapshot and time are filled in here.
    pub runs: Vec<Run>,
}

/// Objects being added to a store.
#[derive(Debug)]
pub struct Transaction<'a> {
    target: Target<'a>,
    session: WriterSession,
}

impl<'a> Transaction<'a> {
    /// Starts writing to `target`. A non-appending target must have been
    /// opened for writing.
    pub fn begin(target: Target<'a>) -> Result<Transaction<'a>> {
        if !matches!(target, Target::Append(_)) {
            target.store().require_write()?;
        }
        let s = target.store();
        let session = writer::start_with(
            s.packs().clone(),
            target.catalog(),
            s.config().compression,
            s.config().pack_size,
        );
        Ok(Transaction { target, session })
    }

    /// The store written to.
    pub fn store(&self) -> &Store {
        self.target.store()
    }

    /// The pack writer, for handing over objects (it can be cloned into
    /// worker threads; every clone must be dropped before [`Self::finish`]).
    pub fn writer(&self) -> &PackWriter {
        self.session.writer()
    }

    /// Encodes and queues the snapshot object and the run records it
    /// carries (runs first: children before parents); returns its id and
    /// value.
    pub fn put_snapshot(&self, s: NewSnapshot) -> Result<(ObjectId, Snapshot)> {
        let time_ns = s.time_ns.unwrap_or_else(now_ns);
        if s.runs.len() as u64 > ds_format::snapshot::MAX_RUNS {
            return Err(crate::StoreError::BadInput(format!(
                "{} runs in one snapshot; at most {}",
                s.runs.len(),
                ds_format::snapshot::MAX_RUNS
            )));
        }
        let mut runs = Vec::with_capacity(s.runs.len());
        for mut r in s.runs {
            r.workspace = s.workspace.clone();
            r.before = s.parent;
            if r.recorded_ns == 0 {
                r.recorded_ns = time_ns;
            }
            if r.environment.host.is_none() {
                r.environment.host = Some(hostname()).filter(|h| !h.is_empty());
            }
            let bytes = r.encode();
            if bytes.len() > ds_format::run::MAX_RUN {
                return Err(crate::StoreError::Internal(format!(
                    "run {:?} is a record of {} bytes, over the 1 MiB limit",
                    r.name,
                    bytes.len()
                )));
            }
            let id = ObjectKind::Run.hash(&bytes);
            self.writer()
                .put(ObjectKind::Run, id, Payload::Owned(bytes))?;
            runs.push(id);
        }
        let snap = Snapshot {
            root: s.root,
            parents: s.parent.into_iter().collect(),
            runs,
            time_ns,
            workspace: s.workspace,
            source: s.source,
            hostname: hostname(),
            message: s.message,
            metadata: s.metadata,
            stats: s.stats,
        };
        let bytes = snap.encode();
        let id = ObjectKind::Snapshot.hash(&bytes);
        self.writer()
            .put(ObjectKind::Snapshot, id, Payload::Owned(bytes))?;
        Ok((id, snap))
    }

    /// Barriers 1 and 2: every queued object is in a committed pack and
    /// findable. Nothing is referenced yet.
    pub fn finish(self) -> Result<Durable<'a>> {
        let stats = self.session.finish()?;
        self.target.sync()?;
        Ok(Durable {
            target: self.target,
            stats,
        })
    }

    /// [`Self::finish`], then [`Durable::swap_ref`].
    pub fn commit(
        self,
        workspace: &str,
        expected: Option<ObjectId>,
        new: ObjectId,
    ) -> Result<WriteStats> {
        self.finish()?.swap_ref(workspace, expected, new)
    }
}

/// A finished transaction: its objects are durable and findable.
#[derive(Debug)]
pub struct Durable<'a> {
    target: Target<'a>,
    stats: WriteStats,
}

impl Durable<'_> {
    /// The store written to (e.g. to check ancestry before moving a ref).
    pub fn store(&self) -> &Store {
        self.target.store()
    }

    /// What was written.
    pub fn stats(&self) -> &WriteStats {
        &self.stats
    }

    /// Barrier 3: moves `workspace` from `expected` to `new` by
    /// compare-and-swap, and releases the target (an appender's lock).
    pub fn swap_ref(
        self,
        workspace: &str,
        expected: Option<ObjectId>,
        new: ObjectId,
    ) -> Result<WriteStats> {
        self.target.store().refs().swap(workspace, expected, new)?;
        Ok(self.stats)
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// This machine's name, as recorded in snapshots ("" if unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
