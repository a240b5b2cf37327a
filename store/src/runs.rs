//! Runs as a store holds them: listed from the snapshot chain, found by id,
//! and picked up from `.ds/runs/*.json` files in a directory.
//!
//! A run is a record carried by the snapshot made when it was recorded
//! (`ds_format::run`). Listing a workspace's runs walks only its snapshot
//! objects (every parent, not just the first) and reads the run records
//! they name; no tree is read. Declared inputs and outputs are stored as
//! paths and resolved to content ids against the carrying snapshot when a
//! run is shown ([`content`]), which is a path lookup, not a walk.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ds_format::ObjectId;
use ds_format::manifest::FileRef;
use ds_format::run::{MAX_META, Origin, Run};
use ds_format::snapshot::Snapshot;
use ds_format::tree::{DirRef, EntryData};
use rayon::prelude::*;

use crate::{IoContext, Result, Store, StoreError};

/// Where runs live in a workspace, for workloads that write them as files.
pub const RUNS_DIR: &str = ".ds/runs";

/// A run and the snapshot that carries it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: ObjectId,
    pub snapshot: ObjectId,
    pub snapshot_time_ns: i64,
    pub run: Run,
}

/// The runs recorded in `head`'s history, newest first (by the carrying
/// snapshot's time, then the order within it, last first). History the
/// store does not hold ends the walk there.
pub fn history(store: &Store, head: ObjectId) -> Result<Vec<Listed>> {
    let mut seen = HashSet::new();
    let mut todo = vec![head];
    // (carrying snapshot's time, index in it, snapshot, run id)
    let mut found: Vec<(i64, usize, ObjectId, ObjectId)> = Vec::new();
    while let Some(s) = todo.pop() {
        if !seen.insert(s) {
            continue;
        }
        let snap = match store.load_snapshot(&s) {
            Ok(snap) => snap,
            Err(StoreError::Missing { .. }) if s != head => continue,
            Err(e) => return Err(e),
        };
        found.extend(
            snap.runs
                .iter()
                .enumerate()
                .map(|(i, r)| (snap.time_ns, i, s, *r)),
        );
        todo.extend(snap.parents);
    }
    found.sort_by_key(|f| std::cmp::Reverse((f.0, f.1)));
    // Records lie side by side in packs: read in batches (one read per
    // run of neighbours), on every core.
    let batches: Vec<Vec<Listed>> = found
        .par_chunks(2048)
        .map(|batch| {
            let ids: Vec<ObjectId> = batch.iter().map(|f| f.3).collect();
            let raws = store.read_objects(&ids, ds_format::ObjectKind::Run)?;
            batch
                .iter()
                .zip(raws)
                .map(|(&(t, _, snapshot, id), raw)| {
                    Ok(Listed {
                        id,
                        snapshot,
                        snapshot_time_ns: t,
                        run: Run::decode(&raw)?,
                    })
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    Ok(batches.into_iter().flatten().collect())
}

/// The runs of every workspace in the store, newest first; a run reached
/// from several workspaces (a clone) is listed once, under the first.
pub fn all(store: &Store) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (_, head) in store.refs().list()? {
        for l in history(store, head)? {
            if seen.insert((l.id, l.snapshot)) {
                out.push(l);
            }
        }
    }
    out.sort_by_key(|l| std::cmp::Reverse(l.snapshot_time_ns));
    Ok(out)
}

/// Finds one run among `runs` by a hex prefix of its id (≥ 4 digits) or
/// by the name the workload gave it.
pub fn find<'a>(runs: &'a [Listed], spec: &str) -> Result<&'a Listed> {
    let lower = spec.to_ascii_lowercase();
    let by_id: Vec<&Listed> = if lower.len() >= 4 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        runs.iter()
            .filter(|l| l.id.to_hex().starts_with(&lower))
            .collect()
    } else {
        Vec::new()
    };
    let hits = if by_id.is_empty() {
        runs.iter().filter(|l| l.run.name == spec).collect()
    } else {
        by_id
    };
    let mut ids: Vec<ObjectId> = hits.iter().map(|l| l.id).collect();
    ids.dedup();
    match ids.len() {
        0 => Err(StoreError::BadInput(format!("no run {spec:?}"))),
        1 => Ok(hits[0]),
        n => Err(StoreError::Ambiguous {
            prefix: spec.into(),
            count: n,
        }),
    }
}

/// Every model among `runs`: name → its runs, oldest (version 1) first.
/// A model is the line of runs whose labels name it (`model=NAME`, or
/// Dotscience's `artefact:NAME`; see `Run::models`).
pub fn models(runs: &[Listed]) -> BTreeMap<String, Vec<&Listed>> {
    let mut m: BTreeMap<String, Vec<&Listed>> = BTreeMap::new();
    for l in runs {
        for (name, _) in l.run.models() {
            m.entry(name.to_string()).or_default().push(l);
        }
    }
    for v in m.values_mut() {
        v.sort_by_key(|l| (l.run.recorded_ns, l.snapshot_time_ns, l.id));
        v.dedup_by_key(|l| l.id);
    }
    m
}

/// Finds `NAME` (its latest version) or `NAME@V` among the models of
/// `runs`: (name, version, number of versions, the version's run).
pub fn find_model<'a>(runs: &'a [Listed], spec: &str) -> Result<(String, u32, u32, &'a Listed)> {
    let (name, v) = match spec.rsplit_once('@') {
        Some((n, v)) => (
            n,
            Some(v.parse::<u32>().map_err(|_| {
                StoreError::BadInput(format!("{spec:?}: the version after @ must be a number"))
            })?),
        ),
        None => (spec, None),
    };
    let all = models(runs);
    let versions = all
        .get(name)
        .ok_or_else(|| StoreError::BadInput(format!("no model {name:?} (ds models lists them)")))?;
    let n = versions.len() as u32;
    let v = v.unwrap_or(n);
    if v == 0 || v > n {
        return Err(StoreError::BadInput(format!(
            "model {name:?} has versions 1 to {n}, not {v}"
        )));
    }
    Ok((name.to_string(), v, n, versions[v as usize - 1]))
}

/// The file at workspace-relative `path` in `root`: its content id (the
/// root of its chunk tree) and size. None: no such file.
pub fn content(store: &Store, root: &DirRef, path: &str) -> Result<Option<FileRef>> {
    match store.lookup(root, path.as_bytes()) {
        Ok(Some(e)) => Ok(match e.data {
            EntryData::File(f) => Some(f),
            _ => None,
        }),
        Ok(None) | Err(StoreError::NoSuchPath(_)) | Err(StoreError::BadInput(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `.ds/runs/*.json` files in `dir` that are new or changed since
/// `parent` (compared by size and mtime, then by content), read as runs.
/// Absolute paths they declare are taken as under `home` (the directory
/// as the workload saw it). A file that is not valid run metadata is a warning, never an error: the
/// snapshot goes ahead and the file stays for the user to fix.
pub fn pending(
    store: &Store,
    dir: &Path,
    parent: Option<&Snapshot>,
    home: &str,
) -> Result<(Vec<Run>, Vec<String>)> {
    let runs_dir = dir.join(RUNS_DIR);
    let rd = match fs::read_dir(&runs_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e).at(&runs_dir),
    };
    let old: BTreeMap<Vec<u8>, (u64, i64, FileRef)> = match parent {
        Some(p) => match store.lookup(&p.root, RUNS_DIR.as_bytes()) {
            Ok(Some(ds_format::tree::Entry {
                data: EntryData::Dir(d),
                ..
            })) => store
                .dir_entries(&d)?
                .into_iter()
                .filter_map(|e| match e.data {
                    EntryData::File(f) => Some((e.name, (f.size, e.mtime_ns, f))),
                    _ => None,
                })
                .collect(),
            Ok(_) | Err(StoreError::NoSuchPath(_)) => BTreeMap::new(),
            Err(e) => return Err(e),
        },
        None => BTreeMap::new(),
    };
    let mut names: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    names.sort_by_key(|e| e.file_name());
    let (mut runs, mut warnings) = (Vec::new(), Vec::new());
    for e in names {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let path = e.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let before = old.get(name.as_encoded_bytes());
        if before.is_some_and(|(size, mt, _)| *size == meta.len() && *mt == mtime_ns) {
            continue;
        }
        let show = format!("{RUNS_DIR}/{}", name.to_string_lossy());
        if meta.len() > MAX_META as u64 {
            warnings.push(format!(
                "{show}: {} bytes of run metadata is over the {MAX_META} byte limit; not recorded",
                meta.len()
            ));
            continue;
        }
        let mut bytes = Vec::new();
        if let Err(err) =
            fs::File::open(&path).and_then(|f| f.take(MAX_META as u64 + 1).read_to_end(&mut bytes))
        {
            warnings.push(format!("{show}: cannot read: {err}"));
            continue;
        }
        if let Some((size, _, f)) = before
            && *size == bytes.len() as u64
        {
            let mut was = Vec::new();
            store.read_file(f, &mut was)?;
            if was == bytes {
                continue;
            }
        }
        if runs.len() as u64 == ds_format::snapshot::MAX_RUNS {
            warnings.push(format!(
                "more than {} new run files: the rest are recorded with the next snapshot",
                ds_format::snapshot::MAX_RUNS
            ));
            break;
        }
        match Run::from_workload(stem, Origin::File, &bytes) {
            Ok(mut r) => {
                r.relativize(home);
                runs.push(r);
            }
            Err(why) => warnings.push(format!("{show}: {why}; not recorded")),
        }
    }
    Ok((runs, warnings))
}
