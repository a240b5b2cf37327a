//! One function per subcommand.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use ds_store::diff::{self, ChangeKind};
use ds_store::format::ObjectId;
use ds_store::format::chunker::ChunkerParams;
use ds_store::format::config::Compression;
use ds_store::format::snapshot::Snapshot;
use ds_store::format::tree::{Entry, EntryData};
use ds_store::gc::{self, GcOptions};
use ds_store::ingest::{self, SnapshotOptions};
use ds_store::resolve::{head, resolve};
use ds_store::restore::{self, RestoreOptions};
use ds_store::writer::WriteStats;
use ds_store::{Access, InitOptions, Store, StoreError, verify};
use serde_json::{Value, json};

use crate::Command;
use crate::fmt;
use crate::progress::Bar;

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON on stdout instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Minimum chunk size in bytes [default: 16384]
    #[arg(long)]
    chunk_min: Option<u32>,
    /// Average chunk size in bytes [default: 65536]
    #[arg(long)]
    chunk_avg: Option<u32>,
    /// Maximum chunk size in bytes [default: 262144]
    #[arg(long)]
    chunk_max: Option<u32>,
    /// Chunk compression: `none`, `zstd` or `zstd:LEVEL` (incompressible
    /// chunks are always stored raw) [default: zstd:1]
    #[arg(long, value_parser = parse_compression)]
    compression: Option<Compression>,
    /// Close pack files at this many bytes [default: 33554432]
    #[arg(long)]
    pack_size: Option<u64>,
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "zstd" => Ok(Compression::Zstd { level: 1 }),
        _ => match s.strip_prefix("zstd:").and_then(|l| l.parse().ok()) {
            Some(level) => Ok(Compression::Zstd { level }),
            None => Err(format!("{s:?}: expected none, zstd or zstd:LEVEL")),
        },
    }
}

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
    /// Print JSON on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Workspace to forget
    workspace: String,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Report what would be freed without deleting anything
    #[arg(long)]
    dry_run: bool,
    /// Rewrite packs in which more than this percentage of bytes is garbage
    #[arg(long, default_value_t = 5.0)]
    max_unused: f64,
    /// Print JSON on stdout
    #[arg(long)]
    json: bool,
}

fn print_json(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn open(store: &Path, access: Access) -> Result<Store> {
    match Store::open(store, access, false) {
        Err(StoreError::Locked(_)) => {
            eprintln!(
                "ds: waiting for another ds process using {}",
                store.display()
            );
            Ok(Store::open(store, access, true)?)
        }
        r => Ok(r?),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn run(store_path: &Path, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Init(a) => init(store_path, a),
        Command::Snapshot(a) => snapshot(store_path, a),
        Command::Log(a) => log(&open(store_path, Access::Read)?, a),
        Command::Workspaces(a) => workspaces(&open(store_path, Access::Read)?, a),
        Command::Ls(a) => ls(&open(store_path, Access::Read)?, a),
        Command::Cat(a) => cat(&open(store_path, Access::Read)?, a),
        Command::Diff(a) => diff(&open(store_path, Access::Read)?, a),
        Command::Restore(a) => restore(&open(store_path, Access::Read)?, a),
        Command::Verify(a) => verify(&open(store_path, Access::Read)?, a),
        Command::Gc(a) => gc(&open(store_path, Access::Exclusive)?, a),
        Command::Forget(a) => {
            let s = open(store_path, Access::Write)?;
            let id = head(&s, &a.workspace)?;
            s.refs().delete(&a.workspace, id)?;
            eprintln!(
                "ds: forgot workspace {} (was at {}); run `ds gc` to free its data",
                a.workspace,
                id.short()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Mount(a) => crate::mount::mount(store_path, a),
        Command::Umount(a) => crate::mount::umount(store_path, a),
        Command::Push(a) => crate::sync::push(store_path, a),
        Command::Pull(a) => crate::sync::pull(store_path, a),
        Command::Clone(a) => crate::sync::clone(store_path, a),
        Command::Remote(a) => crate::sync::remote(store_path, a),
        Command::Token(a) => crate::sync::token(store_path, a),
        Command::Hub(a) => crate::sync::hub(a),
        Command::Reindex => {
            let s = open(store_path, Access::Exclusive)?;
            let n = s.rebuild_index()?;
            eprintln!("ds: indexed {n} packs");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init(path: &Path, a: InitArgs) -> Result<ExitCode> {
    let d = ChunkerParams::default();
    let chunker =
        (a.chunk_min.is_some() || a.chunk_avg.is_some() || a.chunk_max.is_some()).then(|| {
            ChunkerParams {
                min: a.chunk_min.unwrap_or(d.min),
                avg: a.chunk_avg.unwrap_or(d.avg),
                max: a.chunk_max.unwrap_or(d.max),
            }
        });
    let opts = InitOptions {
        chunker,
        compression: a.compression,
        pack_size: a.pack_size,
    };
    if path.join("config").exists() {
        // Idempotent: fine unless a flag asks for something the store is not.
        let s = open(path, Access::Read)?;
        let c = s.config();
        if opts.chunker.is_some_and(|x| x != c.chunker)
            || opts.compression.is_some_and(|x| x != c.compression)
            || opts.pack_size.is_some_and(|x| x != c.pack_size)
        {
            bail!(
                "a store already exists at {} with other settings (chunks {}/{}/{}, {:?}, packs of {} bytes); \
                 these are fixed at init",
                path.display(),
                c.chunker.min,
                c.chunker.avg,
                c.chunker.max,
                c.compression,
                c.pack_size
            );
        }
        eprintln!("ds: store already initialized at {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    Store::init(path, &opts)?;
    eprintln!("ds: initialized store at {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// What a snapshot did, for `ds snapshot --json`.
pub struct SnapshotJson<'a> {
    pub id: ObjectId,
    pub snapshot: &'a Snapshot,
    pub parent: Option<ObjectId>,
    pub files_read: u64,
    pub files_unchanged: u64,
    pub bytes_read: u64,
    pub written: &'a WriteStats,
    pub seconds: f64,
    pub warnings: &'a [String],
}

/// The one JSON shape `ds snapshot --json` prints, for a directory and for a
/// live read-write mount alike.
pub fn snapshot_json(j: &SnapshotJson) -> Value {
    let s = j.snapshot;
    json!({
        "id": j.id.to_hex(),
        "workspace": s.workspace,
        "parent": j.parent.map(|p| p.to_hex()),
        "root": s.root.root.to_hex(),
        "time": fmt::time(s.time_ns),
        "files": s.stats.files,
        "dirs": s.stats.dirs,
        "symlinks": s.stats.symlinks,
        "bytes": s.stats.bytes,
        "files_read": j.files_read,
        "files_unchanged": j.files_unchanged,
        "bytes_read": j.bytes_read,
        "bytes_added": j.written.stored_bytes,
        "bytes_added_uncompressed": j.written.raw_bytes,
        "objects_added": j.written.objects,
        "packs_written": j.written.packs,
        "seconds": j.seconds,
        "warnings": j.warnings,
    })
}

fn snapshot(store_path: &Path, a: SnapshotArgs) -> Result<ExitCode> {
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
    let store = if store_path.join("config").exists() {
        open(store_path, Access::Write)?
    } else {
        let s = Store::init(store_path, &InitOptions::default())
            .with_context(|| format!("creating a store at {}", store_path.display()))?;
        eprintln!("ds: initialized store at {}", store_path.display());
        s
    };
    let mut metadata = BTreeMap::new();
    for (k, v) in a.meta {
        metadata.insert(k, v);
    }
    let opts = SnapshotOptions {
        workspace: a.workspace,
        message: a.message,
        metadata,
        no_cache: a.no_cache,
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

fn snap_json(id: &ObjectId, s: &ds_store::format::snapshot::Snapshot) -> Value {
    json!({
        "id": id.to_hex(),
        "workspace": s.workspace,
        "parents": s.parents.iter().map(|p| p.to_hex()).collect::<Vec<_>>(),
        "time": fmt::time(s.time_ns),
        "time_ns": s.time_ns,
        "message": s.message,
        "source": lossy(&s.source),
        "hostname": s.hostname,
        "metadata": s.metadata,
        "files": s.stats.files,
        "dirs": s.stats.dirs,
        "symlinks": s.stats.symlinks,
        "bytes": s.stats.bytes,
        "root": s.root.root.to_hex(),
    })
}

fn log(store: &Store, a: LogArgs) -> Result<ExitCode> {
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
        print_json(&Value::Array(
            out.iter().map(|(i, s)| snap_json(i, s)).collect(),
        ))?;
    } else {
        for (i, (id, s)) in out.iter().enumerate() {
            println!(
                "{}  {}~{i}  {}  {} files, {}  {}",
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

fn workspaces(store: &Store, a: JsonArgs) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for (name, id) in store.refs().list()? {
        let s = store.load_snapshot(&id)?;
        rows.push((name, id, s));
    }
    if a.json {
        print_json(&Value::Array(
            rows.iter().map(|(_, i, s)| snap_json(i, s)).collect(),
        ))?;
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

fn entry_json(e: &Entry) -> Value {
    let mut v = json!({
        "name": lossy(&e.name),
        "type": e.data.kind_name(),
        "mode": format!("{:o}", e.mode),
        "size": e.size(),
        "mtime": fmt::time(e.mtime_ns),
        "mtime_ns": e.mtime_ns,
    });
    if let EntryData::Symlink(t) = &e.data {
        v["target"] = json!(lossy(t));
    }
    v
}

fn ls(store: &Store, a: LsArgs) -> Result<ExitCode> {
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
        print_json(&Value::Array(entries.iter().map(entry_json).collect()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for e in &entries {
        let k = match e.data {
            EntryData::Dir(_) => 'd',
            EntryData::File(_) => '-',
            EntryData::Symlink(_) => 'l',
        };
        let name = lossy(&e.name);
        let shown = match &e.data {
            EntryData::Symlink(t) => format!("{name} -> {}", lossy(t)),
            EntryData::Dir(_) => format!("{name}/"),
            EntryData::File(_) => name,
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

fn cat(store: &Store, a: CatArgs) -> Result<ExitCode> {
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

fn diff(store: &Store, a: DiffArgs) -> Result<ExitCode> {
    let (ia, ib) = (resolve(store, &a.a)?, resolve(store, &a.b)?);
    let (sa, sb) = (store.load_snapshot(&ia)?, store.load_snapshot(&ib)?);
    let changes = diff::diff(store, &sa.root, &sb.root)?;
    let total: u64 = changes
        .iter()
        .filter(|c| c.entry_type != "dir")
        .map(|c| c.bytes_changed)
        .sum();
    if a.json {
        let list: Vec<Value> = changes
            .iter()
            .map(|c| {
                json!({
                    "path": lossy(&c.path),
                    "kind": c.kind.as_str(),
                    "type": c.entry_type,
                    "old_size": c.old_size,
                    "new_size": c.new_size,
                    "bytes_changed": c.bytes_changed,
                })
            })
            .collect();
        print_json(&json!({
            "from": ia.to_hex(),
            "to": ib.to_hex(),
            "changes": list,
            "bytes_changed": total,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for c in &changes {
        let sym = match c.kind {
            ChangeKind::Added => "+",
            ChangeKind::Removed => "-",
            ChangeKind::Modified => "M",
            ChangeKind::TypeChanged => "T",
        };
        let slash = if c.entry_type == "dir" { "/" } else { "" };
        let detail = match (c.kind, c.entry_type) {
            (_, "dir") => String::new(),
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

fn restore(store: &Store, a: RestoreArgs) -> Result<ExitCode> {
    let id = resolve(store, &a.snap)?;
    let snap = store.load_snapshot(&id)?;
    let opts = RestoreOptions {
        allow_escaping_symlinks: a.allow_escaping_symlinks,
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
            ds_store::restore::RestoreReport {
                files: 1,
                bytes: f.size,
                ..Default::default()
            }
        }
        Some(_) => bail!("--path names a symlink; restore its directory instead"),
    };
    drop(bar);
    for e in &report.errors {
        eprintln!("ds: error: {e}");
    }
    if a.json {
        print_json(&json!({
            "id": id.to_hex(),
            "dest": a.dest.display().to_string(),
            "files": report.files,
            "dirs": report.dirs,
            "symlinks": report.symlinks,
            "bytes": report.bytes,
            "errors": report.errors,
        }))?;
    } else {
        println!(
            "restored {} files, {} dirs, {} symlinks ({}) from {} into {}",
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

fn verify(store: &Store, a: JsonArgs) -> Result<ExitCode> {
    let bar = Bar::new("verify");
    let r = verify::verify(store, &bar.progress)?;
    drop(bar);
    if a.json {
        let probs: Vec<Value> = r
            .problems
            .iter()
            .map(|p| {
                json!({
                    "pack": p.pack.map(|x| x.to_hex()),
                    "object": p.object.map(|x| x.to_hex()),
                    "message": p.message,
                    "paths": p.paths,
                })
            })
            .collect();
        print_json(&json!({
            "ok": r.problems.is_empty(),
            "packs": r.packs,
            "objects": r.objects,
            "bytes": r.bytes,
            "snapshots": r.snapshots,
            "unindexed_packs": r.unindexed_packs,
            "problems": probs,
        }))?;
    } else {
        for p in &r.problems {
            println!("DAMAGED: {}", p.message);
            for path in &p.paths {
                println!("  affects {path}");
            }
        }
        println!(
            "checked {} packs ({}), {} objects, {} snapshots: {}",
            r.packs,
            fmt::bytes(r.bytes),
            r.objects,
            r.snapshots,
            if r.problems.is_empty() {
                "no problems".to_string()
            } else {
                format!("{} problems", r.problems.len())
            }
        );
        if r.unindexed_packs > 0 {
            println!(
                "{} packs are not indexed (left by an interrupted snapshot; `ds gc` removes them)",
                r.unindexed_packs
            );
        }
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn gc(store: &Store, a: GcArgs) -> Result<ExitCode> {
    if !(0.0..=100.0).contains(&a.max_unused) {
        bail!("--max-unused must be a percentage between 0 and 100");
    }
    let r = gc::gc(
        store,
        GcOptions {
            max_unused: a.max_unused / 100.0,
            dry_run: a.dry_run,
        },
    )?;
    for d in &r.damaged_packs_kept {
        eprintln!("ds: warning: kept damaged pack: {d}");
    }
    if a.json {
        print_json(&json!({
            "dry_run": a.dry_run,
            "bytes_freed": r.bytes_freed,
            "packs_deleted": r.packs_deleted,
            "packs_repacked": r.packs_repacked,
            "packs_written": r.packs_written,
            "objects_removed": r.objects_removed,
            "temp_files_removed": r.temp_files_removed,
            "stat_entries_pruned": r.stat_entries_pruned,
            "reachable_objects": r.reachable_objects,
        }))?;
    } else {
        let verb = if a.dry_run { "would free" } else { "freed" };
        println!(
            "gc {verb} {} ({} packs deleted, {} repacked, {} objects removed, {} temporary files removed); {} objects reachable",
            fmt::bytes(r.bytes_freed),
            r.packs_deleted,
            r.packs_repacked,
            r.objects_removed,
            r.temp_files_removed,
            r.reachable_objects
        );
    }
    Ok(ExitCode::SUCCESS)
}
