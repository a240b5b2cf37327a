//! `ds mount` and `ds umount`, and `ds snapshot` of a live read-write mount.
//!
//! A mount is a long-lived `ds` process serving a store-level VFS
//! (`ds_store::vfs`) through FUSE (`ds-fuse`). It opens the store as a
//! reader, so it never blocks snapshots of other directories, and takes the
//! writer lock only while it snapshots itself.
//!
//! A read-write mount of workspace W registers itself under
//! `STORE/mounts/W/`: `mountpoint` (its canonical path), `pid`, and
//! `ctl.sock`, a unix socket on which `ds snapshot MOUNTPOINT --workspace W`
//! asks the mount process — the only one that knows the dirty layer — to
//! take the snapshot. Protocol: one JSON request line, one JSON reply line
//! (`{"ok": {...}}` with the keys `ds snapshot --json` prints, or
//! `{"error": "..."}`), version 1, requests capped at 1 MiB.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ds_fuse::{MountOptions, SessionUnmounter};

use ds_store::resolve::resolve;
use ds_store::vfs::{CommitOptions, CommitReport, Target, Vfs, VfsOptions, mount_dir};
use ds_store::{Access, Store};
use nix::sys::signal::{SigSet, Signal};
use serde_json::{Value, json};

use crate::fmt;

const PROTOCOL: u64 = 1;
const MAX_REQUEST: u64 = 1 << 20;
/// Set in the environment of the re-executed child of `--background`.
const READY_ENV: &str = "DS_MOUNT_NOTIFY_READY";

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ds mount proj~1 /mnt/old             # read-only, lazy: reads fetch only the chunks they touch\n  \
    ds mount --rw proj ~/proj            # read-write over proj's latest snapshot\n  \
    ds snapshot ~/proj --workspace proj  # snapshot the live mount (cost: what changed)\n  \
    ds umount ~/proj\n\n\
    Writes to a read-write mount go to a dirty layer under STORE/mounts/W/. It is made durable \
    by fsync and every --checkpoint-secs; after a crash or SIGKILL, `ds mount --rw W` recovers \
    it as of the last checkpoint. The store itself changes only when a snapshot is taken. \
    SIGTERM, SIGINT and SIGHUP unmount cleanly, like `ds umount`.")]
pub struct MountArgs {
    /// Snapshot to mount read-only (SNAP), or with --rw the workspace to mount read-write
    target: String,
    /// Existing directory to mount on
    mountpoint: PathBuf,
    /// Mount workspace TARGET read-write (its latest snapshot, or an empty tree if it has none)
    #[arg(long)]
    rw: bool,
    /// Return once mounted, leaving the mount served by a background process
    #[arg(long, short = 'b')]
    background: bool,
    /// Let other users (e.g. a container's user) use the mount; the kernel
    /// then checks permissions from modes and owners (allow_other + default_permissions)
    #[arg(long)]
    allow_other: bool,
    /// Owner shown for files (ds records no owners) [default: the mountpoint's owner]
    #[arg(long)]
    uid: Option<u32>,
    /// Group shown for files [default: the mountpoint's group]
    #[arg(long)]
    gid: Option<u32>,
    /// Memory for verified chunks, in MiB. The kernel's page cache keeps
    /// file contents too; this cache holds read-ahead and chunks that
    /// straddle reads (and, with --direct-io, everything re-read)
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    cache_mib: u64,
    /// Kernel read-ahead for this mount, in KiB: bigger requests mean fewer
    /// trips through FUSE. Set through /sys/class/bdi (needs root; otherwise
    /// the kernel's default stays and the log says so). 0 keeps the default
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    readahead_kib: u32,
    /// Read-only mounts: bypass the kernel's page cache (FOPEN_DIRECT_IO), for
    /// streaming files much larger than memory once. Faster for large reads,
    /// much slower for small ones; mmap needs Linux >= 6.6
    #[arg(long, conflicts_with = "rw")]
    direct_io: bool,
    /// With --rw: delete a dirty layer left by an earlier mount instead of recovering it
    #[arg(long, requires = "rw")]
    discard_dirty: bool,
    /// With --rw: make the dirty layer durable at least this often (fsync does it at once)
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    checkpoint_secs: u64,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Where `ds mount` mounted
    mountpoint: PathBuf,
}

/// Is `path` a mountpoint right now (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    ds_fuse::mount_device(path).is_some()
}

pub fn mount(store_path: &Path, a: MountArgs) -> Result<ExitCode> {
    let mp = fs::canonicalize(&a.mountpoint)
        .with_context(|| format!("mountpoint {}", a.mountpoint.display()))?;
    let meta = fs::metadata(&mp)?;
    if !meta.is_dir() {
        bail!("{} is not a directory", mp.display());
    }
    if is_mounted(&mp) {
        bail!("{} is already a mountpoint", mp.display());
    }
    if a.background && std::env::var_os(READY_ENV).is_none() {
        return background(store_path, &mp);
    }
    // Before any thread exists, so that every thread inherits the mask.
    let stop = block_stop_signals()?;
    let store = Arc::new(
        Store::open(store_path, Access::Read, true)
            .with_context(|| format!("opening the store at {}", store_path.display()))?,
    );
    let opts = VfsOptions {
        uid: a.uid.unwrap_or(meta.uid()),
        gid: a.gid.unwrap_or(meta.gid()),
        cache_bytes: a.cache_mib.max(1) << 20,
        ..VfsOptions::default()
    };
    let (vfs, what) = if a.rw {
        let v = Vfs::open_workspace(store.clone(), &a.target, opts, a.discard_dirty)?;
        (v, format!("workspace {} (read-write)", a.target))
    } else {
        let id = resolve(&store, &a.target)?;
        let v = Vfs::open_snapshot(store.clone(), id, opts)?;
        (v, format!("snapshot {} (read-only)", id.short()))
    };
    let vfs = Arc::new(Mutex::new(vfs));
    let mut session = ds_fuse::mount(
        vfs.clone(),
        &mp,
        &MountOptions {
            read_only: !a.rw,
            allow_other: a.allow_other,
            threads: 4,
            direct_io: a.direct_io,
            fsname: format!("ds:{}", a.target),
        },
    )
    .with_context(|| format!("mounting on {} (is /dev/fuse available?)", mp.display()))?;
    if a.readahead_kib > 0
        && let Err(e) = ds_fuse::set_readahead(&mp, a.readahead_kib)
    {
        eprintln!(
            "ds: note: kernel read-ahead left at its default ({e}); reads take more FUSE round trips"
        );
    }
    let registry = if a.rw {
        Some(register(
            &store,
            &a.target,
            &mp,
            vfs.clone(),
            a.checkpoint_secs,
        )?)
    } else {
        None
    };
    eprintln!(
        "ds: mounted {what} on {}; `ds umount {}` to unmount",
        mp.display(),
        mp.display()
    );
    if std::env::var_os(READY_ENV).is_some() {
        println!("ready");
        let _ = std::io::stdout().flush();
    }
    unmount_on_signal(stop, session.unmount_callable(), mp.clone())?;
    let served = session.run();
    if let Some(dir) = registry {
        for f in ["ctl.sock", "mountpoint", "pid"] {
            let _ = fs::remove_file(dir.join(f));
        }
    }
    // Whatever is dirty stays in the dirty layer for the next mount.
    if let Err(e) = vfs.lock().unwrap_or_else(|p| p.into_inner()).checkpoint() {
        eprintln!("ds: error: saving the dirty layer: {e}");
    }
    served.with_context(|| format!("serving {}", mp.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM, SIGINT and SIGHUP, which would otherwise kill the mount process
/// and leave the kernel mount behind ("Transport endpoint is not
/// connected"). Blocked in every thread and taken by one that unmounts.
fn block_stop_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("blocking stop signals")?;
    Ok(set)
}

/// Unmounts on a stop signal: the session then returns as after `ds umount`
/// (the dirty layer is saved). A busy mount stays up and says so.
fn unmount_on_signal(set: SigSet, mut unmounter: SessionUnmounter, mp: PathBuf) -> Result<()> {
    std::thread::Builder::new()
        .name("ds-mount-signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                eprintln!("ds: {sig}: unmounting {}", mp.display());
                match unmounter.unmount() {
                    Ok(()) => break,
                    Err(e) => eprintln!(
                        "ds: could not unmount {} ({e}); still serving it",
                        mp.display()
                    ),
                }
            }
        })?;
    Ok(())
}

/// Re-runs this command in a child and returns once the child has mounted.
/// The child's messages go to a log file under STORE/logs/ (see
/// `ds_store::layout`).
fn background(store_path: &Path, mp: &Path) -> Result<ExitCode> {
    let logs = ds_store::layout::Layout::new(store_path).logs();
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let name: String = mp
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let log_path = logs.join(format!("mount-{name}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe()?;
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background" && a != "-b")
        .collect();
    let mut child = Command::new(exe)
        .args(args)
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() == "ready" {
        eprintln!(
            "ds: mount process {} serves {} (log: {})",
            child.id(),
            mp.display(),
            log_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    let why = fs::read_to_string(&log_path).unwrap_or_default();
    bail!(
        "the mount process exited ({status}) before mounting: {}",
        why.trim()
    )
}

/// Publishes a read-write mount under STORE/mounts/W and starts its control
/// socket and its periodic checkpoints.
fn register(
    store: &Store,
    ws: &str,
    mp: &Path,
    vfs: Arc<Mutex<Vfs>>,
    checkpoint_secs: u64,
) -> Result<PathBuf> {
    let dir = mount_dir(store, ws);
    let sock = dir.join("ctl.sock");
    let _ = fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("control socket {}", sock.display()))?;
    fs::write(dir.join("mountpoint"), mp.as_os_str().as_bytes())?;
    fs::write(dir.join("pid"), std::process::id().to_string())?;
    let v2 = vfs.clone();
    let mp2 = mp.to_path_buf();
    std::thread::Builder::new()
        .name("ds-mount-ctl".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = serve(conn, &v2, &mp2) {
                    eprintln!("ds mount: control request failed: {e:#}");
                }
            }
        })?;
    let every = Duration::from_secs(checkpoint_secs.max(1));
    std::thread::Builder::new()
        .name("ds-mount-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let mut v = vfs.lock().unwrap_or_else(|p| p.into_inner());
                if v.has_unsaved()
                    && let Err(e) = v.checkpoint()
                {
                    eprintln!("ds mount: error: checkpoint of the dirty layer: {e}");
                }
            }
        })?;
    Ok(dir)
}

fn serve(conn: UnixStream, vfs: &Mutex<Vfs>, mp: &Path) -> Result<()> {
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match handle(&line, vfs, mp) {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    let mut w = &conn;
    serde_json::to_writer(&mut w, &reply)?;
    w.write_all(b"\n")?;
    Ok(())
}

fn handle(line: &str, vfs: &Mutex<Vfs>, mp: &Path) -> Result<Value> {
    let req: Value = serde_json::from_str(line).context("bad request")?;
    if req["version"].as_u64() != Some(PROTOCOL) {
        bail!(
            "protocol version {} not supported (want {PROTOCOL})",
            req["version"]
        );
    }
    match req["op"].as_str() {
        Some("snapshot") => {}
        other => bail!("unknown operation {other:?}"),
    }
    let metadata: BTreeMap<String, String> =
        serde_json::from_value(req["metadata"].clone()).unwrap_or_default();
    let opts = CommitOptions {
        message: req["message"].as_str().unwrap_or("").to_string(),
        metadata,
        source: mp.as_os_str().as_bytes().to_vec(),
    };
    let t = Instant::now();
    // The writer lock, held only for this snapshot: the mount appends
    // through its own store (no index open: see store/src/journal.rs). Taken
    // before the freeze, so waiting for another writer does not stall the
    // filesystem.
    let store = vfs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .store()
        .clone();
    let appender = store.append()?;
    // Freeze the filesystem for the (short) snapshot: a consistent cut.
    let mut v = vfs.lock().unwrap_or_else(|p| p.into_inner());
    let r = v.commit(Target::Append(appender), &opts)?;
    drop(v);
    Ok(report_json(&r, t.elapsed().as_secs_f64()))
}

/// `ds snapshot --json`'s shape (shared with plain directories), marked as
/// taken from a live mount.
fn report_json(r: &CommitReport, secs: f64) -> Value {
    let mut v = crate::cmd::snapshot_json(&crate::cmd::SnapshotJson {
        id: r.id,
        snapshot: &r.snapshot,
        parent: r.parent,
        files_read: r.files_rechunked,
        files_unchanged: r.snapshot.stats.files.saturating_sub(r.files_rechunked),
        bytes_read: r.bytes_read,
        written: &r.written,
        seconds: secs,
        warnings: &[],
    });
    v["live_mount"] = json!(true);
    v
}

/// The workspace whose read-write mount is at `path`, if any.
fn mounted_workspace(store_path: &Path, path: &Path) -> Option<(String, PathBuf)> {
    let canon = fs::canonicalize(path).ok()?;
    // A registration left by a killed mount process names a plain directory.
    if !is_mounted(&canon) {
        return None;
    }
    for e in fs::read_dir(ds_store::layout::Layout::new(store_path).mounts())
        .ok()?
        .flatten()
    {
        let dir = e.path();
        if let Ok(mp) = fs::read(dir.join("mountpoint"))
            && mp == canon.as_os_str().as_bytes()
            && dir.join("ctl.sock").exists()
        {
            return Some((e.file_name().to_string_lossy().into_owned(), dir));
        }
    }
    None
}

/// `ds snapshot PATH` where PATH is a live read-write mount: asks the mount
/// process to snapshot itself. `None` if PATH is not such a mount.
pub fn snapshot_of_mount(
    store_path: &Path,
    path: &Path,
    workspace: &str,
    message: &str,
    meta: &[(String, String)],
    json_out: bool,
) -> Result<Option<ExitCode>> {
    let Some((ws, dir)) = mounted_workspace(store_path, path) else {
        return Ok(None);
    };
    if ws != workspace {
        bail!(
            "{} is the read-write mount of workspace {ws:?}; it can only be snapshotted into \
             that workspace (got --workspace {workspace:?})",
            path.display()
        );
    }
    let sock = dir.join("ctl.sock");
    let mut conn = UnixStream::connect(&sock).with_context(|| {
        format!(
            "reaching the mount process of {} at {}",
            path.display(),
            sock.display()
        )
    })?;
    let metadata: BTreeMap<_, _> = meta.iter().cloned().collect();
    let req =
        json!({"version": PROTOCOL, "op": "snapshot", "message": message, "metadata": metadata});
    serde_json::to_writer(&mut conn, &req)?;
    conn.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line)
        .with_context(|| format!("the mount process replied {line:?}"))?;
    if let Some(e) = reply.get("error") {
        bail!(
            "snapshot of the mount failed: {}",
            e.as_str().unwrap_or("?")
        );
    }
    let r = &reply["ok"];
    if json_out {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
    } else {
        println!(
            "snapshot {} of mount {} saved to workspace {}",
            &r["id"].as_str().unwrap_or("?")[..12.min(r["id"].as_str().unwrap_or("?").len())],
            path.display(),
            ws
        );
        println!(
            "  {} files ({}), {} files changed, {} re-read; {} added in {} objects; {:.2}s",
            r["files"],
            fmt::bytes(r["bytes"].as_u64().unwrap_or(0)),
            r["files_read"],
            fmt::bytes(r["bytes_read"].as_u64().unwrap_or(0)),
            fmt::bytes(r["bytes_added"].as_u64().unwrap_or(0)),
            r["objects_added"],
            r["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(Some(ExitCode::SUCCESS))
}

pub fn umount(store_path: &Path, a: UmountArgs) -> Result<ExitCode> {
    let mp = fs::canonicalize(&a.mountpoint).unwrap_or(a.mountpoint.clone());
    if !is_mounted(&mp) {
        bail!("{} is not mounted", mp.display());
    }
    let pid = mounted_workspace(store_path, &mp)
        .and_then(|(_, dir)| fs::read_to_string(dir.join("pid")).ok())
        .and_then(|p| p.trim().parse::<u32>().ok());
    let out = Command::new("fusermount3").arg("-u").arg(&mp).output();
    let ok = matches!(&out, Ok(o) if o.status.success());
    if !ok {
        // fusermount3 missing or refusing (e.g. a root mount): try umount(8).
        let st = Command::new("umount").arg(&mp).status();
        if !matches!(st, Ok(s) if s.success()) {
            let why = match out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            bail!("could not unmount {} ({why}); is it busy?", mp.display());
        }
    }
    // A read-write mount saves its dirty layer as it exits: wait for that,
    // so that a remount right after finds it.
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            if fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            }) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("ds: unmounted {}", mp.display());
    Ok(ExitCode::SUCCESS)
}
