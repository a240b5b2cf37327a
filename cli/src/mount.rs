//! `ds mount` and `ds umount` (the FUSE issue): being built.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Snapshot to mount read-only (or, with --rw, a workspace)
    target: String,
    /// Empty directory to mount on
    mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Where the store is mounted
    mountpoint: PathBuf,
}

pub fn mount(_store: &Path, _a: MountArgs) -> Result<ExitCode> {
    bail!("ds mount is not available yet")
}

pub fn umount(_a: UmountArgs) -> Result<ExitCode> {
    bail!("ds umount is not available yet")
}
