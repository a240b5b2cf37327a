//! `ds init`: creates a store. Its chunking, compression and pack size are
//! fixed here for good, so a second `init` only succeeds when it asks for
//! nothing the existing store is not.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use ds_store::format::chunker::ChunkerParams;
use ds_store::format::config::Compression;
use ds_store::{Access, InitOptions, Store};

use super::open;

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

pub(super) fn init(path: &Path, a: InitArgs) -> Result<ExitCode> {
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
