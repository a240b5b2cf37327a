//! `ds dataset mirror|export` and `ds datasets`: S3 buckets as datasets
//! (the engine is `ds-dataset`; this file parses arguments, draws progress
//! and prints).
//!
//! Three variables exist for tests only, to change a bucket (or kill the
//! mirror) at an exact moment: `DS_TEST_PAUSE_AFTER_LIST=F`,
//! `DS_TEST_PAUSE_AFTER_FIRST_PART=F` and `DS_TEST_PAUSE_AFTER_PIECE=F`
//! (a big object's piece journaled) make the mirror create `F.reached`
//! at that moment and wait (at most two minutes) until `F` exists.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ds_dataset::SourceUrl;
use ds_dataset::mirror::{KIND_DATASET, META_KIND, MirrorOptions};
use ds_dataset::s3::{Client, S3Config};
use ds_store::Access;

use crate::cmd::json::{dataset_json, export_json, mirror_json};
use crate::cmd::{JsonArgs, print_json};
use crate::fmt;
use crate::open::{open, open_or_init};
use crate::progress::Bar;
use crate::sync::runtime;

#[derive(Debug, Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    cmd: DatasetCmd,
}

#[derive(Debug, Subcommand)]
enum DatasetCmd {
    /// Mirror an S3 prefix into dataset NAME: only objects that changed
    /// since the last mirror are downloaded, and a new snapshot records the
    /// key space as files
    #[command(
        after_help = "The endpoint and credentials come from AWS_ENDPOINT_URL, AWS_REGION, \
                            AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and AWS_CA_BUNDLE \
                            (AWS_ALLOW_HTTP=true for a plain-HTTP endpoint). Keys that are not \
                            valid paths (a//b, ../x, a/, names over 255 bytes, a key beside a \
                            directory of the same name) are mapped reversibly and listed in the \
                            output. An interrupted mirror resumes without downloading again what \
                            it stored."
    )]
    Mirror(MirrorArgs),
    /// Write a dataset (or any snapshot) to an S3 prefix, one object per
    /// file, keys decoded back from paths
    Export(ExportArgs),
}

#[derive(Debug, Args)]
struct S3Args {
    /// The S3 endpoint [default: $AWS_ENDPOINT_URL, else AWS]
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The region [default: $AWS_REGION, else us-east-1]
    #[arg(long)]
    region: Option<String>,
    /// Unsigned requests, for a public bucket (credentials are ignored)
    #[arg(long)]
    anonymous: bool,
}

impl S3Args {
    fn client(&self) -> Result<Client> {
        let mut cfg = S3Config::from_env(self.anonymous)?;
        if let Some(e) = &self.endpoint {
            cfg.endpoint = Some(e.clone());
        }
        if let Some(r) = &self.region {
            cfg.region = r.clone();
        }
        Ok(Client::new(cfg)?)
    }
}

#[derive(Debug, Args)]
struct MirrorArgs {
    /// The source: s3://BUCKET[/PREFIX] (keys under PREFIX/ are mirrored,
    /// relative to it)
    source: String,
    /// The dataset to record the mirror in (created on first use)
    #[arg(long, short)]
    dataset: String,
    /// Message describing the snapshot
    #[arg(long, short, default_value = "")]
    message: String,
    #[command(flatten)]
    s3: S3Args,
    /// Objects downloaded at once
    #[arg(long, default_value_t = 16)]
    jobs: usize,
    /// Mirror again every DURATION (like 10m, 1h), until interrupted
    #[arg(long, value_name = "DURATION", value_parser = fmt::parse_duration)]
    schedule: Option<u64>,
    /// Bytes per ranged GET (objects over 4 parts are read in parts)
    #[arg(long, default_value_t = 16 << 20, hide = true)]
    part_size: u64,
    /// Objects per durable batch (a SIGKILL loses at most one batch)
    #[arg(long, default_value_t = 1000, hide = true)]
    batch_objects: usize,
    /// Bytes per durable batch; a bigger object is stored in pieces of
    /// this size, each durable (a SIGKILL loses at most one piece)
    #[arg(long, default_value_t = 256 << 20, hide = true)]
    batch_bytes: u64,
    /// Print JSON on stdout instead of text (one object per pass)
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// What to export: a dataset or workspace (its latest snapshot), or
    /// NAME@SNAP, or any SNAP
    snap: String,
    /// The destination: s3://BUCKET[/PREFIX]
    dest: String,
    #[command(flatten)]
    s3: S3Args,
    /// Objects uploaded at once
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Print JSON on stdout instead of text
    #[arg(long)]
    json: bool,
}

pub fn dataset(store_path: &Path, a: DatasetArgs) -> Result<ExitCode> {
    match a.cmd {
        DatasetCmd::Mirror(m) => mirror(store_path, m),
        DatasetCmd::Export(e) => export(store_path, e),
    }
}

/// A test hook (see the module doc).
fn pause(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from)
}

fn wait_at(flag: &Path) {
    let mut reached = flag.as_os_str().to_owned();
    reached.push(".reached");
    let _ = std::fs::write(&reached, b"");
    let t = Instant::now();
    while !flag.exists() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mirror(store_path: &Path, a: MirrorArgs) -> Result<ExitCode> {
    let source = SourceUrl::parse(&a.source)?;
    let client = a.s3.client()?;
    let store = Arc::new(open_or_init(store_path)?);
    let mut opts = MirrorOptions::new(source.clone(), a.dataset.clone());
    opts.message = a.message.clone();
    opts.jobs = a.jobs;
    opts.batch_objects = a.batch_objects.max(1);
    opts.batch_bytes = a.batch_bytes.max(1 << 20);
    opts.fetch.part_size = a.part_size.max(1 << 10);
    if let Some(f) = pause("DS_TEST_PAUSE_AFTER_FIRST_PART") {
        opts.fetch.after_first_part = Some(Arc::new(move || wait_at(&f)));
    }
    if let Some(f) = pause("DS_TEST_PAUSE_AFTER_PIECE") {
        opts.fetch.after_piece = Some(Arc::new(move || wait_at(&f)));
    }
    let after_list = pause("DS_TEST_PAUSE_AFTER_LIST");
    let rt = runtime()?;
    loop {
        let bar = Bar::new("mirroring");
        let r = rt.block_on(ds_dataset::mirror(
            store.clone(),
            &client,
            &opts,
            &bar.progress,
            &|| {
                if let Some(f) = &after_list {
                    wait_at(f);
                }
            },
        ));
        drop(bar);
        let r = r.with_context(|| format!("mirroring {} into {}", source.url(), a.dataset))?;
        if a.json {
            print_json(&mirror_json(&a.dataset, source.url(), &r))?;
        } else {
            for w in &r.warnings {
                eprintln!("ds: warning: {w}");
            }
            for m in &r.mapped {
                eprintln!("ds: key {:?} is stored as {:?}", m.key, m.path);
            }
            let what = match (r.changed, r.id) {
                (true, Some(id)) => format!("snapshot {}", id.short()),
                (false, Some(id)) => format!("unchanged, still {}", id.short()),
                _ => "empty".to_string(),
            };
            println!(
                "{}: {what}: {} objects ({}), {} fetched ({}), {} unchanged, {} resumed, \
                 +{} ~{} -{}, {} new data, in {:.1}s (listing {:.1}s){}",
                a.dataset,
                r.objects,
                fmt::bytes(r.bytes),
                r.objects_fetched,
                fmt::bytes(r.bytes_fetched),
                r.objects_unchanged,
                r.objects_resumed,
                r.objects_added,
                r.objects_modified,
                r.objects_removed,
                fmt::bytes(r.bytes_written),
                r.seconds,
                r.list_seconds,
                if r.bytes_resumed > 0 {
                    format!("; {} of big objects resumed", fmt::bytes(r.bytes_resumed))
                } else {
                    String::new()
                }
            );
        }
        let Some(every) = a.schedule else {
            return Ok(ExitCode::SUCCESS);
        };
        let stop = rt.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(every)) => false,
                _ = crate::sync::terminated() => true,
            }
        });
        if stop {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn export(store_path: &Path, a: ExportArgs) -> Result<ExitCode> {
    let dest = SourceUrl::parse(&a.dest)?;
    let client = a.s3.client()?;
    let store = Arc::new(open(store_path, Access::Read)?);
    // NAME@SNAP: SNAP, checked to be of NAME's line.
    let spec = match a.snap.split_once('@') {
        Some((_, snap)) => snap.to_string(),
        None => a.snap.clone(),
    };
    let id = ds_store::resolve::resolve(&store, &spec)?;
    let snap = store.load_snapshot(&id)?;
    if let Some((name, _)) = a.snap.split_once('@')
        && snap.workspace != name
    {
        bail!(
            "snapshot {} is of {:?}, not of {name:?}",
            id.short(),
            snap.workspace
        );
    }
    let t = Instant::now();
    let r = runtime()?.block_on(ds_dataset::export::export(
        store.clone(),
        snap.root,
        &client,
        &dest,
        a.jobs,
        16 << 20,
    ))?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        print_json(&export_json(id.to_hex(), dest.url(), &r, secs))?;
    } else {
        for w in &r.warnings {
            eprintln!("ds: warning: {w}");
        }
        println!(
            "{} → {}: {} objects ({}), {} written ({}), {} already there, in {secs:.1}s",
            id.short(),
            dest.url(),
            r.objects,
            fmt::bytes(r.bytes),
            r.objects_written,
            fmt::bytes(r.bytes_written),
            r.objects_unchanged
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn datasets(store_path: &Path, a: JsonArgs) -> Result<ExitCode> {
    let store = open(store_path, Access::Read)?;
    let mut rows = Vec::new();
    for (name, id) in store.refs().list()? {
        let s = store.load_snapshot(&id)?;
        if s.metadata.get(META_KIND).map(String::as_str) == Some(KIND_DATASET) {
            rows.push((name, id, s));
        }
    }
    if a.json() {
        let list: Vec<_> = rows
            .iter()
            .map(|(n, i, s)| dataset_json(n, i.to_hex(), s))
            .collect();
        print_json(&list)?;
    } else {
        for (name, id, s) in &rows {
            let j = dataset_json(name, id.to_hex(), s);
            println!(
                "{name}\t{}\t{}\t{} objects\t{}\t{}",
                id.short(),
                j.time,
                j.objects,
                fmt::bytes(j.bytes),
                j.source.unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
