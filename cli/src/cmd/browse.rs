//! The read-only commands that look inside a store: `log`, `workspaces`,
//! `ls`, `cat` and `diff`. They only ever open the store for reading, so
//! they run beside snapshots and mounts.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use ds_store::Store;
use ds_store::diff::{self, ChangeKind};
use ds_store::format::tree::{Entry, EntryData, EntryType};
use ds_store::resolve::{head, resolve};
use ds_store::restore;

use super::json::{DiffJson, EntryJson, SnapshotInfoJson};
use super::{JsonArgs, lossy, print_json};
use crate::fmt;

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Workspace
    workspace: String,
    /// Show at most N snapshots
    #[arg(long, short = 'n')]
    limit: Option<usize>,
    /// Print JSON (an array, newest first) on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot: id, unique id prefix, workspace W, or W~N
    snap: String,
    /// Directory (or file) inside the snapshot
    path: Option<String>,
    /// Print JSON on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// Snapshot: id, unique id prefix, workspace W, or W~N
    snap: String,
    /// File inside the snapshot
    path: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Older snapshot
    a: String,
    /// Newer snapshot
    b: String,
    /// Print JSON on stdout: {"changes": [{"path", "kind", ...}]}
    #[arg(long)]
    json: bool,
}

pub(super) fn log(store: &Store, a: LogArgs) -> Result<ExitCode> {
    let mut next = Some(head(store, &a.workspace)?);
    let mut out = Vec::new();
    while let Some(id) = next.take() {
        if a.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let s = store.load_snapshot(&id)?;
        next = s.parents.first().copied();
        out.push((id, s));
    }
    if a.json {
        let list: Vec<_> = out
            .iter()
            .map(|(i, s)| SnapshotInfoJson::new(i, s))
            .collect();
        print_json(&list)?;
    } else {
        for (i, (id, s)) in out.iter().enumerate() {
            let runs = match s.runs.len() {
                0 => String::new(),
                1 => " [1 run]".to_string(),
                n => format!(" [{n} runs]"),
            };
            println!(
                "{}  {}~{i}  {}  {} files, {}  {}{runs}",
                id.short(),
                a.workspace,
                fmt::time(s.time_ns),
                s.stats.files,
                fmt::bytes(s.stats.bytes),
                s.message
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn workspaces(store: &Store, a: JsonArgs) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for (name, id) in store.refs().list()? {
        let s = store.load_snapshot(&id)?;
        rows.push((name, id, s));
    }
    if a.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(_, i, s)| SnapshotInfoJson::new(i, s))
            .collect();
        print_json(&list)?;
    } else {
        for (name, id, s) in rows {
            println!(
                "{name}\t{}\t{}\t{}",
                id.short(),
                fmt::time(s.time_ns),
                s.message
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn ls(store: &Store, a: LsArgs) -> Result<ExitCode> {
    let id = resolve(store, &a.snap)?;
    let snap = store.load_snapshot(&id)?;
    let entries = match store.lookup(&snap.root, a.path.as_deref().unwrap_or("").as_bytes())? {
        None => store.dir_entries(&snap.root)?,
        Some(Entry {
            data: EntryData::Dir(d),
            ..
        }) => store.dir_entries(&d)?,
        Some(e) => vec![e],
    };
    if a.json {
        let list: Vec<_> = entries.iter().map(EntryJson::new).collect();
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for e in &entries {
        let k = match e.data {
            EntryData::Dir(_) => 'd',
            EntryData::File(_) => '-',
            EntryData::Symlink(_) => 'l',
            EntryData::Fifo => 'p',
            EntryData::Socket => 's',
            EntryData::Device { block: false, .. } => 'c',
            EntryData::Device { block: true, .. } => 'b',
        };
        let name = lossy(&e.name);
        let shown = match &e.data {
            EntryData::Symlink(t) => format!("{name} -> {}", lossy(t)),
            EntryData::Dir(_) => format!("{name}/"),
            _ => name,
        };
        writeln!(
            out,
            "{} {:>12} {} {shown}",
            fmt::mode(k, e.mode),
            e.size(),
            fmt::time(e.mtime_ns)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cat(store: &Store, a: CatArgs) -> Result<ExitCode> {
    let id = resolve(store, &a.snap)?;
    let snap = store.load_snapshot(&id)?;
    match store.lookup(&snap.root, a.path.as_bytes())? {
        Some(Entry {
            data: EntryData::File(f),
            ..
        }) => {
            let mut out = std::io::stdout().lock();
            restore::cat(store, &f, &mut out).with_context(|| format!("reading {}", a.path))?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("{:?} is not a file in snapshot {}", a.path, id.short()),
    }
}

pub(super) fn diff(store: &Store, a: DiffArgs) -> Result<ExitCode> {
    let (ia, ib) = (resolve(store, &a.a)?, resolve(store, &a.b)?);
    let (sa, sb) = (store.load_snapshot(&ia)?, store.load_snapshot(&ib)?);
    let changes = diff::diff(store, &sa.root, &sb.root)?;
    let total: u64 = changes
        .iter()
        .filter(|c| c.entry_type != EntryType::Dir)
        .map(|c| c.bytes_changed)
        .sum();
    if a.json {
        print_json(&DiffJson::new(&ia, &ib, &changes, total))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for c in &changes {
        let sym = match c.kind {
            ChangeKind::Added => "+",
            ChangeKind::Removed => "-",
            ChangeKind::Modified => "M",
            ChangeKind::TypeChanged => "T",
            ChangeKind::Metadata => "m",
        };
        let slash = if c.entry_type == EntryType::Dir {
            "/"
        } else {
            ""
        };
        let detail = match (c.kind, c.entry_type) {
            (ChangeKind::Metadata, _) => format!("  ({})", c.metadata.join(", ")),
            (_, EntryType::Dir) => String::new(),
            (ChangeKind::Modified, _) => format!(
                "  ({} changed, {} -> {})",
                fmt::bytes(c.bytes_changed),
                fmt::bytes(c.old_size.unwrap_or(0)),
                fmt::bytes(c.new_size.unwrap_or(0))
            ),
            _ => format!("  ({})", fmt::bytes(c.bytes_changed)),
        };
        writeln!(out, "{sym} {}{slash}{detail}", lossy(&c.path))?;
    }
    writeln!(
        out,
        "{} changes, {} of content changed",
        changes.len(),
        fmt::bytes(total)
    )?;
    Ok(ExitCode::SUCCESS)
}
