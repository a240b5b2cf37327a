//! `ds dataset mirror`: one pass over a bucket prefix into a new snapshot.
//!
//! 1. The previous snapshot's tree says what was mirrored (`tree.rs`).
//! 2. The source is listed (`source.rs`); the time the listing began is
//!    recorded in the snapshot (`dataset.listed_at`).
//! 3. An object whose size and ETag match the previous snapshot's is not
//!    read (its mtime follows the listing: an object rewritten with the
//!    same bytes keeps its content). One an interrupted run already stored
//!    comes from the journal (`journal.rs`). Every other one is read and
//!    chunked as it downloads (`fetch.rs`): a changed ETag with unchanged
//!    bytes adds no data, only the chunks are compared.
//! 4. Reads run `jobs` at a time in batches; each batch's transaction is
//!    finished and journaled before the next, so a SIGKILL loses at most
//!    one batch of work. An object bigger than a batch is a batch of its
//!    own, stored in pieces, each durable and journaled (`big.rs`).
//! 5. An object that changed while being read is read again at the version
//!    a HEAD then shows (three times at most; then the previous version, if
//!    any, is kept, with a warning). One deleted since the listing is left
//!    out, with a warning. No object is ever stored mixed.
//! 6. The tree is built, and the dataset's ref moved by compare-and-swap
//!    from the snapshot step 1 read. If nothing changed, no snapshot is made.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ds_format::ObjectId;
use ds_format::tree::Entry;
use ds_store::Store;
use ds_store::progress::Progress;
use ds_store::txn::{NewSnapshot, Target, Transaction, now_ns};
use futures::StreamExt;

use crate::big;
use crate::fetch::{self, FetchConfig, Outcome, Segment};
use crate::journal::{Journal, Stored};
use crate::s3::{Client, Listed, ObjectHead};
use crate::source::{self, SourceUrl};
use crate::tree::{self, Recorded};
use crate::{DatasetError, Result, keymap};

/// Snapshot metadata keys of a dataset snapshot.
pub const META_KIND: &str = "ds.kind";
pub const KIND_DATASET: &str = "dataset";
pub const META_SOURCE: &str = "dataset.source";
pub const META_ENDPOINT: &str = "dataset.endpoint";
pub const META_LISTED_AT: &str = "dataset.listed_at";
pub const META_OBJECTS: &str = "dataset.objects";

/// What to mirror, and how.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    pub source: SourceUrl,
    pub dataset: String,
    pub message: String,
    /// Objects read at once.
    pub jobs: usize,
    /// Prefixes listed at once.
    pub list_jobs: usize,
    /// A batch ends at this many bytes or objects (then it is made durable
    /// and journaled).
    pub batch_bytes: u64,
    pub batch_objects: usize,
    pub fetch: FetchConfig,
}

impl MirrorOptions {
    pub fn new(source: SourceUrl, dataset: String) -> MirrorOptions {
        MirrorOptions {
            source,
            dataset,
            message: String::new(),
            jobs: 16,
            list_jobs: 16,
            batch_bytes: 256 << 20,
            batch_objects: 1000,
            fetch: FetchConfig::default(),
        }
    }
}

/// A key that is not a valid path, and the path it was given.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub key: String,
    pub path: String,
}

/// What a mirror did.
#[derive(Debug, Clone, Default)]
pub struct MirrorReport {
    /// The dataset's snapshot now (the previous one when nothing changed).
    pub id: Option<ObjectId>,
    pub parent: Option<ObjectId>,
    /// A new snapshot was made.
    pub changed: bool,
    pub objects: u64,
    pub bytes: u64,
    pub objects_fetched: u64,
    pub bytes_fetched: u64,
    pub objects_unchanged: u64,
    pub objects_resumed: u64,
    /// Bytes of big objects an interrupted run had stored in pieces, not
    /// downloaded again.
    pub bytes_resumed: u64,
    pub objects_added: u64,
    pub objects_modified: u64,
    pub objects_removed: u64,
    /// Skipped: deleted after the listing, or changing on every read.
    pub objects_skipped: u64,
    pub bytes_written: u64,
    pub listed_at_ns: i64,
    pub list_seconds: f64,
    pub seconds: f64,
    pub mapped: Vec<Mapped>,
    pub warnings: Vec<String>,
}

enum Ready {
    Entry(Entry),
    Skipped,
}

/// Mirrors `opts.source` into dataset `opts.dataset` of `store` (opened for
/// writing).
pub async fn mirror(
    store: Arc<Store>,
    client: &Client,
    opts: &MirrorOptions,
    progress: &Progress,
    after_list: &(dyn Fn() + Sync),
) -> Result<MirrorReport> {
    let t0 = Instant::now();
    ds_store::refs::validate_workspace(&opts.dataset)?;
    let mut report = MirrorReport::default();
    let head = store.refs().get(&opts.dataset)?;
    report.parent = head;
    let previous: HashMap<String, Recorded> = match head {
        None => HashMap::new(),
        Some(h) => {
            let snap = store.load_snapshot(&h)?;
            if snap.metadata.get(META_KIND).map(String::as_str) != Some(KIND_DATASET) {
                return Err(DatasetError::BadInput(format!(
                    "{} is a workspace, not a dataset; mirror into another name",
                    opts.dataset
                )));
            }
            let s = store.clone();
            tokio::task::spawn_blocking(move || tree::recorded(&s, &snap.root))
                .await
                .map_err(|e| DatasetError::Internal(e.to_string()))??
        }
    };

    report.listed_at_ns = now_ns();
    let listed = source::list(client, &opts.source, opts.list_jobs).await?;
    report.list_seconds = t0.elapsed().as_secs_f64();
    after_list();
    let plen = opts.source.prefix.len();
    let rel: Vec<&str> = listed.iter().map(|o| &o.key[plen..]).collect();
    let paths = keymap::map_all(rel.iter().copied());
    report.objects = listed.len() as u64;
    report.bytes = listed.iter().map(|o| o.size).sum();
    progress.total_bytes.store(report.bytes, Ordering::Relaxed);

    let jpath = store.layout().dataset_journal(&opts.dataset);
    let (mut journal, resumable) = Journal::open(&jpath, &opts.source.url(), &opts.dataset)?;

    let mapped: Vec<bool> = (0..listed.len())
        .map(|i| !keymap::is_identity(rel[i], &paths[i]))
        .collect();
    // Object i's file entry (named by the last component of its path).
    let entry = |i: usize, file, last_modified_ns, etag: Option<&str>, version: Option<&str>| {
        let name = paths[i].last().expect("a path has a name").clone();
        tree::object_entry(
            name,
            rel[i],
            mapped[i],
            file,
            last_modified_ns,
            etag,
            version,
        )
    };

    let mut ready: Vec<Option<Ready>> = (0..listed.len()).map(|_| None).collect();
    let mut to_fetch: Vec<usize> = Vec::new();
    for (i, o) in listed.iter().enumerate() {
        if let Some(p) = previous.get(rel[i])
            && let Some(f) = p.file()
            && f.size == o.size
            && p.etag == o.etag
            && (o.etag.is_some() || p.entry.mtime_ns == o.last_modified_ns)
        {
            let e = entry(
                i,
                f,
                o.last_modified_ns,
                o.etag.as_deref(),
                p.version_id.as_deref(),
            );
            ready[i] = Some(Ready::Entry(e));
            report.objects_unchanged += 1;
            progress.add(1, o.size);
            continue;
        }
        if let Some(s) = resumable.done.get(&o.key)
            && s.size == o.size
            && s.etag == o.etag
            && s.etag.is_some()
            && store.index().has_content(&s.file())?
        {
            let e = entry(
                i,
                s.file(),
                o.last_modified_ns,
                o.etag.as_deref(),
                s.version_id.as_deref(),
            );
            ready[i] = Some(Ready::Entry(e));
            report.objects_resumed += 1;
            progress.add(1, o.size);
            continue;
        }
        to_fetch.push(i);
    }

    let fetched = Arc::new(AtomicU64::new(0));
    let mut start = 0;
    while start < to_fetch.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < to_fetch.len()
            && end - start < opts.batch_objects
            && (end == start || bytes + listed[to_fetch[end]].size <= opts.batch_bytes)
        {
            bytes += listed[to_fetch[end]].size;
            end += 1;
        }
        let batch = &to_fetch[start..end];
        start = end;
        // An object bigger than a batch is a batch of its own: all but its
        // last piece are stored (and journaled) first, each durable alone.
        let mut rest: HashMap<usize, Segment> = HashMap::new();
        if let [i] = *batch
            && listed[i].size > opts.batch_bytes
            && let Some(lead) = big::lead(
                client,
                &opts.source.bucket,
                &listed[i],
                resumable.pieces.get(&listed[i].key),
                &store,
                &opts.fetch,
                &fetched,
                &mut journal,
                opts.batch_bytes,
                &|| {
                    if let Some(h) = &opts.fetch.after_piece {
                        h()
                    }
                },
            )
            .await?
        {
            report.bytes_resumed += lead.resumed;
            rest.insert(i, lead.rest);
        }
        let txn = Transaction::begin(Target::Shared(store.clone()))?;
        let writer = txn.writer().clone();
        let results: Vec<(usize, Result<(Listed, Outcome)>)> =
            futures::stream::iter(batch.iter().copied())
                .map(|i| {
                    let (store, writer, fetched, listed) = (&store, &writer, &fetched, &listed);
                    let seg = rest.remove(&i).unwrap_or_default();
                    async move {
                        let r = read_object(
                            client,
                            &opts.source.bucket,
                            &listed[i],
                            seg,
                            store,
                            writer,
                            &opts.fetch,
                            fetched,
                        )
                        .await;
                        (i, r)
                    }
                })
                .buffer_unordered(opts.jobs.max(1))
                .collect()
                .await;
        drop(writer);
        let durable = tokio::task::spawn_blocking(move || txn.finish().map(|d| *d.stats()))
            .await
            .map_err(|e| DatasetError::Internal(e.to_string()))??;
        report.bytes_written += durable.stored_bytes;
        let mut lines = Vec::new();
        for (i, r) in results {
            let (o, outcome) = r?;
            let full = format!("s3://{}/{}", opts.source.bucket, o.key);
            match outcome {
                Outcome::Stored { file, head } => {
                    let ObjectHead {
                        etag, version_id, ..
                    } = head;
                    let etag = o.etag.clone().or(etag);
                    lines.push(Stored {
                        key: o.key.clone(),
                        size: o.size,
                        etag: etag.clone(),
                        version_id: version_id.clone(),
                        last_modified_ns: o.last_modified_ns,
                        file_height: file.height,
                        file_root: file.root,
                    });
                    report.objects_fetched += 1;
                    if previous.contains_key(rel[i]) {
                        report.objects_modified += 1;
                    } else {
                        report.objects_added += 1;
                    }
                    progress.add(1, o.size);
                    let e = entry(
                        i,
                        file,
                        o.last_modified_ns,
                        etag.as_deref(),
                        version_id.as_deref(),
                    );
                    ready[i] = Some(Ready::Entry(e));
                }
                Outcome::Cut { .. } => {
                    return Err(DatasetError::Internal(
                        "an object's read ended at a piece".into(),
                    ));
                }
                Outcome::Gone => {
                    report
                        .warnings
                        .push(format!("{full}: deleted while mirroring; left out"));
                    report.objects_skipped += 1;
                    ready[i] = Some(Ready::Skipped);
                }
                Outcome::Changed => {
                    report.objects_skipped += 1;
                    match previous.get(rel[i]) {
                        Some(p) => {
                            report.warnings.push(format!(
                                "{full}: changed on every read (3 tries); the previous version is kept"
                            ));
                            let mut e = p.entry.clone();
                            e.name = paths[i]
                                .last()
                                .expect("a path has a name")
                                .as_bytes()
                                .to_vec();
                            ready[i] = Some(Ready::Entry(e));
                        }
                        None => {
                            report
                                .warnings
                                .push(format!("{full}: changed on every read (3 tries); left out"));
                            ready[i] = Some(Ready::Skipped);
                        }
                    }
                }
            }
        }
        journal.append(&lines)?;
    }
    report.bytes_fetched = fetched.load(Ordering::Relaxed);

    let mut files = Vec::with_capacity(listed.len());
    for (i, r) in ready.into_iter().enumerate() {
        match r.expect("every object is decided") {
            Ready::Entry(e) => {
                if mapped[i] {
                    report.mapped.push(Mapped {
                        key: listed[i].key.clone(),
                        path: paths[i].join("/"),
                    });
                }
                files.push((paths[i].clone(), e));
            }
            Ready::Skipped => {}
        }
    }
    let kept: std::collections::HashSet<&str> = rel.iter().copied().collect();
    report.objects_removed = previous
        .keys()
        .filter(|k| !kept.contains(k.as_str()))
        .count() as u64;

    let txn = Transaction::begin(Target::Shared(store.clone()))?;
    let (root, stats) = tree::build(txn.writer(), files)?;
    if let Some(h) = head
        && store.load_snapshot(&h)?.root == root
    {
        drop(txn);
        journal.remove()?;
        report.id = head;
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    let mut metadata = BTreeMap::new();
    metadata.insert(META_KIND.to_string(), KIND_DATASET.to_string());
    metadata.insert(META_SOURCE.to_string(), opts.source.url());
    metadata.insert(
        META_ENDPOINT.to_string(),
        client
            .config()
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("aws:{}", client.config().region)),
    );
    metadata.insert(
        META_LISTED_AT.to_string(),
        crate::s3::xml::format_iso8601(report.listed_at_ns),
    );
    metadata.insert(META_OBJECTS.to_string(), stats.files.to_string());
    let (id, _) = txn.put_snapshot(NewSnapshot {
        root,
        parent: head,
        workspace: opts.dataset.clone(),
        source: opts.source.url().into_bytes(),
        message: opts.message.clone(),
        metadata,
        stats,
        time_ns: None,
        runs: Vec::new(),
    })?;
    let name = opts.dataset.clone();
    let written = tokio::task::spawn_blocking(move || txn.commit(&name, head, id))
        .await
        .map_err(|e| DatasetError::Internal(e.to_string()))??;
    report.bytes_written += written.stored_bytes;
    journal.remove()?;
    report.id = Some(id);
    report.changed = true;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads one object (from `seg`: the rest of a big one), following it
/// when it changes mid-read (3 tries, each of the whole new version).
#[allow(clippy::too_many_arguments)]
async fn read_object(
    client: &Client,
    bucket: &str,
    listed: &Listed,
    mut seg: Segment,
    store: &Arc<Store>,
    writer: &ds_store::writer::PackWriter,
    cfg: &FetchConfig,
    fetched: &Arc<AtomicU64>,
) -> Result<(Listed, Outcome)> {
    let mut o = listed.clone();
    for _ in 0..3 {
        let s = std::mem::take(&mut seg);
        match fetch::fetch(client, bucket, &o, &s, store, writer, cfg, fetched).await? {
            Outcome::Changed => {}
            Outcome::Cut { .. } => {
                return Err(DatasetError::Internal(
                    "a whole read stopped at a piece".into(),
                ));
            }
            done => return Ok((o, done)),
        }
        let key = o.key.clone();
        match source::retry("head", || client.head(bucket, &key)).await? {
            None => return Ok((o, Outcome::Gone)),
            Some(h) => {
                o = Listed {
                    key: o.key,
                    size: h.size.unwrap_or(0),
                    etag: h.etag,
                    last_modified_ns: h.last_modified_ns.unwrap_or(o.last_modified_ns),
                };
            }
        }
    }
    Ok((o, Outcome::Changed))
}
