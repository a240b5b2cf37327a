//! `ds`: versioned, deduplicated workspaces. This binary is a thin layer over
//! `ds-store`: it parses arguments, opens the store, draws progress on stderr
//! and prints results (human text, or JSON with `--json`).
//!
//! Exit codes: 0 success, 1 error (including damage found by `verify` and
//! entries refused by `restore`), 2 usage error.

mod cmd;
mod dataset;
mod fmt;
mod mount;
mod open;
mod progress;
mod runs;
mod sync;
mod tasks;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Versioned, deduplicated workspaces for data science.
///
/// A store holds snapshots of directories. Files are split into
/// content-defined chunks, so a snapshot after a small change stores only
/// the changed bytes. Workspaces name lines of snapshots.
#[derive(Debug, Parser)]
#[command(
    name = "ds",
    version,
    propagate_version = true,
    after_help = "SNAP is a full snapshot id, a unique id prefix (4+ hex digits), a workspace W \
                  (its latest snapshot) or W~N (N snapshots before it).\n\
                  Exit status: 0 success, 1 error (including damage found by verify and entries \
                  refused by restore), 2 usage error."
)]
pub struct Cli {
    /// Store directory [default: $XDG_DATA_HOME/ds/store, i.e. ~/.local/share/ds/store]
    #[arg(long, global = true, env = "DS_STORE", value_name = "DIR")]
    store: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new store (chunking parameters are fixed here, for good)
    Init(cmd::InitArgs),
    /// Snapshot a directory into a workspace
    Snapshot(cmd::SnapshotArgs),
    /// List a workspace's snapshots, newest first
    Log(cmd::LogArgs),
    /// List workspaces and their latest snapshot
    Workspaces(cmd::JsonArgs),
    /// List a directory of a snapshot
    Ls(cmd::LsArgs),
    /// Print a file of a snapshot to stdout
    Cat(cmd::CatArgs),
    /// Show what changed between two snapshots
    Diff(cmd::DiffArgs),
    /// Restore a snapshot (or part of it) into a new or empty directory
    Restore(cmd::RestoreArgs),
    /// Rehash every pack and object and check every snapshot is complete
    Verify(cmd::JsonArgs),
    /// Delete data no snapshot reaches (and leftovers of interrupted runs)
    Gc(cmd::GcArgs),
    /// Delete a workspace's ref; its snapshots become garbage for `ds gc`
    /// unless another workspace shares them
    Forget(cmd::ForgetArgs),
    /// Rebuild the local index from the pack files
    Reindex,
    /// Mount a snapshot read-only, or a workspace read-write (--rw)
    Mount(mount::MountArgs),
    /// Unmount what `ds mount` mounted
    Umount(mount::UmountArgs),
    /// Send a workspace's new snapshots to a hub (only what it lacks)
    Push(sync::PushArgs),
    /// Fetch a workspace's new snapshots from a hub (only what is missing;
    /// the store is created when missing)
    Pull(sync::PullArgs),
    /// Copy a workspace from a hub into this store (created when missing)
    Clone(sync::CloneArgs),
    /// Save, list and remove hubs, and choose the default one
    Remote(sync::RemoteArgs),
    /// Create a token limited to some workspaces (needs an admin token)
    Token(sync::TokenArgs),
    /// Run a hub: gRPC sync into object storage (a directory, or S3)
    Hub(sync::HubServeArgs),
    /// Run a command as a task on a runner, in a workspace mounted as its
    /// home; streams its output and exits with its exit status
    Run(tasks::RunArgs),
    /// List tasks, newest first
    Tasks(tasks::TasksArgs),
    /// Show or cancel one task
    Task(tasks::TaskArgs),
    /// Print a task's output (-f: follow it until it ends)
    Logs(tasks::LogsArgs),
    /// List the runners that connected to the hub
    Runners(sync::HubArgs),
    /// Run a runner: take tasks from a hub and run them (foreground, until
    /// SIGTERM or Ctrl-C)
    Runner(tasks::RunnerArgs),
    /// Start a hub, a runner and the web UI on this machine, save the hub
    /// as the default remote, and print the URL (foreground; --background
    /// returns once ready)
    Up(up::UpArgs),
    /// Stop what `ds up --background` started
    Down(up::DownArgs),
    /// List recorded runs, newest first, with their parameters and metrics
    /// (`ds runs diff A B` compares two)
    Runs(runs::RunsArgs),
    /// List models: runs labelled model=NAME are its versions
    Models(runs::ModelsArgs),
    /// Show a model version with its provenance
    Model(runs::ModelArgs),
    /// The graph from a file or model back to the runs, datasets and
    /// snapshots that made it
    Provenance(runs::ProvenanceArgs),
    /// Mirror S3 buckets as datasets (versioned, incremental), and export
    /// them back
    Dataset(dataset::DatasetArgs),
    /// List datasets (workspaces made by `ds dataset mirror`) and their
    /// latest snapshot
    Datasets(cmd::JsonArgs),
}

/// $XDG_DATA_HOME, else ~/.local/share.
pub fn data_home() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn default_store() -> PathBuf {
    data_home().join("ds").join("store")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let store = cli.store.clone().unwrap_or_else(default_store);
    match cmd::run(&store, cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ds: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
