//! `ds restore`: writes a snapshot, or one directory or file of it, into a
//! new or empty directory. Entries it refuses (such as symlinks escaping the
//! destination) are listed and make the exit status 1, while the rest is
//! still restored.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use ds_store::Store;
use ds_store::format::tree::{Entry, EntryData};
use ds_store::resolve::resolve;
use ds_store::restore::{self, RestoreOptions};

use super::json::RestoreJson;
use super::print_json;
use crate::fmt;
use crate::progress::Bar;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot: id, unique id prefix, workspace W, or W~N
    snap: String,
    /// Destination: must not exist, or be an empty directory
    dest: PathBuf,
    /// Restore only this directory or file of the snapshot
    #[arg(long)]
    path: Option<String>,
    /// Also restore symlinks that point outside DEST (never followed by ds)
    #[arg(long)]
    allow_escaping_symlinks: bool,
    /// Do not set recorded owners (they are only ever set when running as
    /// root; anyone else gets files owned by themselves)
    #[arg(long)]
    no_owners: bool,
    /// Do not set recorded extended attributes
    #[arg(long)]
    no_xattrs: bool,
    /// Print JSON on stdout
    #[arg(long)]
    json: bool,
}

pub(super) fn restore(store: &Store, a: RestoreArgs) -> Result<ExitCode> {
    let id = resolve(store, &a.snap)?;
    let snap = store.load_snapshot(&id)?;
    let opts = RestoreOptions {
        allow_escaping_symlinks: a.allow_escaping_symlinks,
        no_owners: a.no_owners,
        no_xattrs: a.no_xattrs,
    };
    let bar = Bar::new("restore");
    bar.progress
        .total_bytes
        .store(snap.stats.bytes, std::sync::atomic::Ordering::Relaxed);
    let report = match store.lookup(&snap.root, a.path.as_deref().unwrap_or("").as_bytes())? {
        None => restore::restore(store, &snap.root, &a.dest, opts, &bar.progress)?,
        Some(Entry {
            data: EntryData::Dir(d),
            ..
        }) => restore::restore(store, &d, &a.dest, opts, &bar.progress)?,
        Some(Entry {
            data: EntryData::File(f),
            ..
        }) => {
            restore::restore_file(store, &f, &a.dest)?;
            restore::RestoreReport {
                files: 1,
                bytes: f.size,
                ..Default::default()
            }
        }
        Some(e) => bail!(
            "--path names a {}; restore its directory instead",
            e.data.kind_name()
        ),
    };
    drop(bar);
    for e in &report.errors {
        eprintln!("ds: error: {e}");
    }
    for w in &report.warnings {
        eprintln!("ds: warning: {w}");
    }
    if a.json {
        print_json(&RestoreJson::new(&id, &a.dest, &report))?;
    } else {
        let mut extra = String::new();
        if report.specials > 0 {
            extra += &format!(", {} special files", report.specials);
        }
        if report.hardlinks > 0 {
            extra += &format!(", {} hard links", report.hardlinks);
        }
        println!(
            "restored {} files, {} dirs, {} symlinks{extra} ({}) from {} into {}",
            report.files,
            report.dirs,
            report.symlinks,
            fmt::bytes(report.bytes),
            id.short(),
            a.dest.display()
        );
    }
    if !report.errors.is_empty() {
        eprintln!(
            "ds: error: {} entries were not restored (listed above)",
            report.errors.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
