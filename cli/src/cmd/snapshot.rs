//! `ds snapshot DIR`: records a directory in a workspace, creating the store
//! on first use. A live read-write mount is handed to its own process
//! instead, since only that process holds the mount's dirty layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use ds_store::ingest::{self, SnapshotOptions};

use super::json::{SnapshotJson, snapshot_json};
use super::print_json;
use crate::fmt;
use crate::progress::Bar;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Directory to snapshot
    path: PathBuf,
    /// Workspace to record the snapshot in (created on first use)
    #[arg(long, short)]
    workspace: String,
    /// Message describing the snapshot
    #[arg(long, short, default_value = "")]
    message: String,
    /// Metadata to attach, as KEY=VALUE (repeatable)
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_kv)]
    meta: Vec<(String, String)>,
    /// Read every file, ignoring the stat cache
    #[arg(long)]
    no_cache: bool,
    /// Print JSON on stdout instead of text
    #[arg(long)]
    json: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

pub(super) fn snapshot(store_path: &Path, a: SnapshotArgs) -> Result<ExitCode> {
    // A live read-write mount is snapshotted by its own process (it holds the dirty layer).
    if let Some(code) = crate::mount::snapshot_of_mount(
        store_path,
        &a.path,
        &a.workspace,
        &a.message,
        &a.meta,
        a.json,
    )? {
        return Ok(code);
    }
    let store = crate::open::open_or_init(store_path)?;
    let mut metadata = BTreeMap::new();
    for (k, v) in a.meta {
        metadata.insert(k, v);
    }
    // Runs the directory's workloads wrote to .ds/runs/ since the last
    // snapshot are recorded with this one.
    let parent = match store.refs().get(&a.workspace)? {
        Some(h) => Some(store.load_snapshot(&h)?),
        None => None,
    };
    let home = std::fs::canonicalize(&a.path).unwrap_or_else(|_| a.path.clone());
    let (runs, run_warnings) =
        ds_store::runs::pending(&store, &a.path, parent.as_ref(), &home.to_string_lossy())?;
    for w in &run_warnings {
        eprintln!("ds: warning: {w}");
    }
    let opts = SnapshotOptions {
        workspace: a.workspace,
        message: a.message,
        metadata,
        no_cache: a.no_cache,
        runs,
    };
    let t = Instant::now();
    let bar = Bar::new("snapshot");
    let r = ingest::snapshot(&store, &a.path, &opts, &bar.progress);
    drop(bar);
    let r = r?;
    let secs = t.elapsed().as_secs_f64();
    for w in &r.warnings {
        eprintln!("ds: warning: {w}");
    }
    let s = &r.snapshot;
    if a.json {
        print_json(&snapshot_json(&SnapshotJson {
            id: r.id,
            snapshot: s,
            parent: r.parent,
            files_read: r.files_read,
            files_unchanged: r.files_cached,
            bytes_read: r.bytes_read,
            written: &r.written,
            seconds: secs,
            warnings: &r.warnings,
        }))?;
    } else {
        println!(
            "snapshot {} of {} saved to workspace {}",
            r.id.short(),
            String::from_utf8_lossy(&s.source),
            s.workspace
        );
        if !s.runs.is_empty() {
            println!(
                "  {} runs recorded from {}",
                s.runs.len(),
                ds_store::runs::RUNS_DIR
            );
        }
        println!(
            "  {} files ({}), {} read, {} unchanged; {} added in {} objects; {:.2}s",
            s.stats.files,
            fmt::bytes(s.stats.bytes),
            fmt::bytes(r.bytes_read),
            r.files_cached,
            fmt::bytes(r.written.stored_bytes),
            r.written.objects,
            secs
        );
    }
    Ok(ExitCode::SUCCESS)
}
