//! `ds mount` and `ds umount`, and `ds snapshot` of a live read-write mount.
//!
//! A mount is a long-lived `ds` process serving a store-level VFS
//! (`ds_store::vfs`) through FUSE (`ds-fuse`). It opens the store as a
//! reader, so it never blocks snapshots of other directories, and takes the
//! writer lock only while it snapshots itself.
//!
//! The mount's life (VFS, FUSE session, registration, control socket,
//! checkpoints) is `ds_fuse::daemon`, shared with runners; the control
//! protocol is `ds_fuse::control`. What stays here is what belongs to the
//! `ds` process: arguments, `--background` (re-running itself), signals,
//! and printing.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ds_fuse::{Config, MountOptions, Mounted, SessionUnmounter, Source, control};
use ds_store::Access;
use ds_store::resolve::resolve;
use ds_store::vfs::VfsOptions;
use nix::sys::signal::{SigSet, Signal};

use crate::fmt;

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
    /// Show the snapshot's files as owned by this user, whatever it
    /// records (files made or chowned in the mount show their real owner;
    /// a snapshot of the mount keeps the recorded owners). Without it,
    /// recorded owners are shown, and the mountpoint's owner for snapshots
    /// made before ds recorded owners
    #[arg(long)]
    uid: Option<u32>,
    /// Show the snapshot's files' group as this group (see --uid)
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
    // A mount over (or inside) the store would serve the store to itself:
    // the kernel waits on the daemon, which waits on the kernel.
    if let Ok(store) = fs::canonicalize(store_path)
        && (mp.starts_with(&store) || store.starts_with(&mp))
    {
        bail!(
            "{} overlaps the store at {}; mount somewhere outside the store",
            mp.display(),
            store.display()
        );
    }
    if a.background && std::env::var_os(READY_ENV).is_none() {
        return background(store_path, &mp);
    }
    // Before any thread exists, so that every thread inherits the mask.
    let stop = block_stop_signals()?;
    let store = Arc::new(crate::open::open(store_path, Access::Read)?);
    let source = if a.rw {
        Source::Workspace {
            name: a.target.clone(),
            discard_dirty: a.discard_dirty,
        }
    } else {
        Source::Snapshot(resolve(&store, &a.target)?)
    };
    let cfg = Config {
        source,
        vfs: VfsOptions {
            uid: meta.uid(),
            gid: meta.gid(),
            force_owner: (a.uid.is_some() || a.gid.is_some())
                .then(|| (a.uid.unwrap_or(meta.uid()), a.gid.unwrap_or(meta.gid()))),
            cache_bytes: a.cache_mib.max(1) << 20,
            ..VfsOptions::default()
        },
        fuse: MountOptions {
            read_only: !a.rw,
            allow_other: a.allow_other,
            threads: 4,
            direct_io: a.direct_io,
            fsname: format!("ds:{}", a.target),
        },
        readahead_kib: a.readahead_kib,
        checkpoint_every: Duration::from_secs(a.checkpoint_secs.max(1)),
    };
    let mut m = Mounted::start(store, &mp, cfg)?;
    if let Some(e) = &m.readahead_note {
        eprintln!(
            "ds: note: kernel read-ahead left at its default ({e}); reads take more FUSE round trips"
        );
    }
    eprintln!(
        "ds: mounted {} on {}; `ds umount {}` to unmount",
        m.what(),
        mp.display(),
        mp.display()
    );
    if std::env::var_os(READY_ENV).is_some() {
        println!("ready");
        let _ = std::io::stdout().flush();
    }
    unmount_on_signal(stop, m.unmounter(), mp.clone())?;
    m.serve()
        .with_context(|| format!("serving {}", mp.display()))?;
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
    let Some(m) = control::find(store_path, path) else {
        return Ok(None);
    };
    let ws = &m.workspace;
    if ws != workspace {
        bail!(
            "{} is the read-write mount of workspace {ws:?}; it can only be snapshotted into \
             that workspace (got --workspace {workspace:?})",
            path.display()
        );
    }
    let metadata: BTreeMap<_, _> = meta.iter().cloned().collect();
    // Runs written to .ds/runs/ since the mount's last snapshot: read here,
    // through the mount, and carried by the request.
    let runs = {
        let store = crate::open::open(store_path, ds_store::Access::Read)?;
        let parent = match store.refs().get(ws)? {
            Some(h) => Some(store.load_snapshot(&h)?),
            None => None,
        };
        let (runs, warnings) =
            ds_store::runs::pending(&store, path, parent.as_ref(), &path.to_string_lossy())?;
        for w in warnings {
            eprintln!("ds: warning: {w}");
        }
        runs
    };
    let c = control::request_snapshot(&m, message, metadata, runs)?;
    if json_out {
        crate::cmd::print_json(&crate::cmd::live_snapshot_json(&c))?;
    } else {
        println!(
            "snapshot {} of mount {} saved to workspace {}",
            c.id.short(),
            path.display(),
            ws
        );
        println!(
            "  {} files ({}), {} files changed, {} re-read; {} added in {} objects; {:.2}s",
            c.files,
            fmt::bytes(c.bytes),
            c.files_rechunked,
            fmt::bytes(c.bytes_read),
            fmt::bytes(c.bytes_added),
            c.objects_added,
            c.seconds
        );
    }
    Ok(Some(ExitCode::SUCCESS))
}

pub fn umount(store_path: &Path, a: UmountArgs) -> Result<ExitCode> {
    let mp = fs::canonicalize(&a.mountpoint).unwrap_or(a.mountpoint.clone());
    if !is_mounted(&mp) {
        bail!("{} is not mounted", mp.display());
    }
    if !ds_fuse::is_ds_mount(&mp) {
        let what = ds_fuse::mount_source(&mp)
            .map(|(t, s)| format!("a {t} mount of {s}"))
            .unwrap_or_default();
        bail!(
            "{} is {what}, not a ds mount; unmount it with its own tool (umount, fusermount3 -u)",
            mp.display()
        );
    }
    let pid = control::find(store_path, &mp).and_then(|m| m.pid);
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
