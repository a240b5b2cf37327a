//! `ds push`, `ds pull`, `ds clone`, `ds remote` and `ds hub` (the hub
//! issue): being built.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Workspace to push
    workspace: String,
}

pub fn push(_store: &Path, _a: PushArgs) -> Result<ExitCode> {
    bail!("ds push is not available yet")
}
