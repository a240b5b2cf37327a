//! The `ds` subcommands: this file dispatches each [`Command`] to its body
//! and holds what every body shares (opening the store, printing JSON).
//!
//! The bodies live one group per file, each beside its argument struct, so a
//! command reads top to bottom in one place; every `--json` shape lives in
//! [`json`], because tests outside the project parse them and a shape that
//! drifts must show up in one file's diff.

mod browse;
mod init;
pub(crate) mod json;
mod maint;
mod restore;
mod snapshot;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ds_store::Access;

use crate::open::open;
use serde::Serialize;

use crate::Command;

pub use browse::{CatArgs, DiffArgs, LogArgs, LsArgs};
pub use init::InitArgs;
pub use json::live_snapshot_json;
pub use maint::{ForgetArgs, GcArgs};
pub use restore::RestoreArgs;
pub use snapshot::SnapshotArgs;

/// Arguments of a command whose only option is `--json`.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON on stdout instead of text
    #[arg(long)]
    json: bool,
}

impl JsonArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Prints `v` as one pretty JSON document on stdout.
///
/// Goes through [`serde_json::Value`] so the bytes are exactly what the
/// former `json!` values printed (same key order, same number forms).
pub(crate) fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let v = serde_json::to_value(v)?;
    // Buffered: stdout is line-buffered, and a big document (100,000 runs)
    // would otherwise cost a write(2) per line.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, &v)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Prints `v` as one pretty JSON document on stdout, serialized as it
/// goes (keys in the order of the struct's fields): for documents too big
/// to copy into a [`serde_json::Value`] first, such as 100,000 runs.
pub(crate) fn print_json_direct<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Raw bytes (names, paths, targets) as text, invalid UTF-8 replaced.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn run(store_path: &Path, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Init(a) => init::init(store_path, a),
        Command::Snapshot(a) => snapshot::snapshot(store_path, a),
        Command::Log(a) => browse::log(&open(store_path, Access::Read)?, a),
        Command::Workspaces(a) => browse::workspaces(&open(store_path, Access::Read)?, a),
        Command::Ls(a) => browse::ls(&open(store_path, Access::Read)?, a),
        Command::Cat(a) => browse::cat(&open(store_path, Access::Read)?, a),
        Command::Diff(a) => browse::diff(&open(store_path, Access::Read)?, a),
        Command::Restore(a) => restore::restore(&open(store_path, Access::Read)?, a),
        Command::Verify(a) => maint::verify(&open(store_path, Access::Read)?, a),
        Command::Gc(a) if a.on_hub() => maint::gc_on_hub(store_path, a),
        Command::Gc(a) => maint::gc(&open(store_path, Access::Exclusive)?, a),
        Command::Forget(a) if a.on_hub() => maint::forget_on_hub(store_path, a),
        Command::Forget(a) => maint::forget(&open(store_path, Access::Write)?, a),
        Command::Mount(a) => crate::mount::mount(store_path, a),
        Command::Umount(a) => crate::mount::umount(store_path, a),
        Command::Push(a) => crate::sync::push(store_path, a),
        Command::Pull(a) => crate::sync::pull(store_path, a),
        Command::Clone(a) => crate::sync::clone(store_path, a),
        Command::Remote(a) => crate::sync::remote(store_path, a),
        Command::Token(a) => crate::sync::token(store_path, a),
        Command::Hub(a) => crate::sync::hub(a),
        Command::Run(a) => crate::tasks::run(store_path, a),
        Command::Tasks(a) => crate::tasks::tasks(store_path, a),
        Command::Task(a) => crate::tasks::task(store_path, a),
        Command::Logs(a) => crate::tasks::logs(store_path, a),
        Command::Runners(a) => crate::tasks::runners(store_path, a),
        Command::Runner(a) => crate::tasks::runner(a),
        Command::Up(a) => crate::up::up(store_path, a),
        Command::Down(a) => crate::up::down(a),
        Command::Runs(a) => crate::runs::list(store_path, a),
        Command::Models(a) => crate::runs::list_models(store_path, a),
        Command::Model(a) => crate::runs::model(store_path, a),
        Command::Provenance(a) => crate::runs::provenance(store_path, a),
        Command::Dataset(a) => crate::dataset::dataset(store_path, a),
        Command::Datasets(a) => crate::dataset::datasets(store_path, a),
        Command::Reindex => maint::reindex(&open(store_path, Access::Exclusive)?),
    }
}
