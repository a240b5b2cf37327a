//! Store upkeep: `verify` (rehash everything, report damage), `gc` (delete
//! what no snapshot reaches), `forget` (drop a workspace's ref, leaving its
//! data to `gc`) and `reindex` (rebuild the local index from the packs).
//! Grouped because they are about the store's health, not its content.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use ds_store::gc::{self, GcOptions};
use ds_store::resolve::head;
use ds_store::{Store, verify};

use super::json::{GcJson, VerifyJson};
use super::{JsonArgs, print_json};
use crate::fmt;
use crate::progress::Bar;

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Workspace to forget
    workspace: String,
    /// Forget it on this hub instead of in the local store (an admin token:
    /// --token or DS_TOKEN); its data stays until the hub's gc
    #[arg(long, value_name = "URL|NAME")]
    hub: Option<String>,
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that signed an https hub's certificate
    #[arg(long, env = "DS_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Report what would be freed without deleting anything
    #[arg(long)]
    dry_run: bool,
    /// Collect garbage on this hub instead of in the local store (an admin
    /// token: --token or DS_TOKEN). Packs no ref reaches are condemned, and
    /// deleted by a later `ds gc --hub` once --grace has passed, while
    /// pushes and pulls go on
    #[arg(long, value_name = "URL|NAME")]
    hub: Option<String>,
    /// With --hub: how long condemned packs (and packs uploaded recently)
    /// wait before they may be deleted, e.g. 30m, 1h, 2d. `0s` deletes what
    /// no ref reaches in this one run (it waits ~10 s for the hubs to see
    /// the condemnation) [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = crate::fmt::parse_duration, requires = "hub")]
    grace: Option<u64>,
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that signed an https hub's certificate
    #[arg(long, env = "DS_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Rewrite packs in which more than this percentage of bytes is garbage
    /// (default 5 locally, 50 on a hub, where rewriting costs a transfer)
    #[arg(long, value_name = "PERCENT")]
    max_unused: Option<f64>,
    /// Print JSON on stdout
    #[arg(long)]
    json: bool,
}

pub(super) fn verify(store: &Store, a: JsonArgs) -> Result<ExitCode> {
    let bar = Bar::new("verify");
    let r = verify::verify(store, &bar.progress)?;
    drop(bar);
    if a.json {
        print_json(&VerifyJson::new(&r))?;
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

impl GcArgs {
    /// Only an explicit --hub collects on a hub (as for `forget`).
    pub fn on_hub(&self) -> bool {
        self.hub.is_some()
    }
}

/// `ds gc --hub URL`: the hub's gc, run by the hub (see ARCHITECTURE.md).
pub(super) fn gc_on_hub(store_path: &std::path::Path, a: GcArgs) -> Result<ExitCode> {
    let hub = crate::sync::HubArgs {
        hub: a.hub,
        token: a.token,
        ca_cert: a.ca_cert,
        json: a.json,
    };
    let (url, token) = crate::sync::target(store_path, &hub)?;
    let grace = a.grace.unwrap_or(3600);
    let r = crate::sync::runtime()?.block_on(async {
        let mut r = ds_sync::Remote::connect(&url, &token, hub.ca_cert.as_deref()).await?;
        let max_unused = a.max_unused.unwrap_or(50.0);
        if !(0.0..=100.0).contains(&max_unused) {
            bail!("--max-unused must be a percentage between 0 and 100");
        }
        // 0 % on the wire means "the hub's default": ask for the least above it.
        let fraction = (max_unused / 100.0).max(1e-9);
        Ok::<_, anyhow::Error>(r.gc(grace, a.dry_run, fraction).await?)
    })?;
    if a.json {
        print_json(&super::json::HubGcJson::new(&url, grace, a.dry_run, &r))?;
        return Ok(ExitCode::SUCCESS);
    }
    let (verb, cverb) = if a.dry_run {
        ("would delete", "would condemn")
    } else {
        ("deleted", "condemned")
    };
    println!(
        "hub gc on {url}: {verb} {} packs ({}), {cverb} {} packs ({}); {} workspaces, {} objects reachable",
        r.deleted,
        fmt::bytes(r.deleted_bytes),
        r.condemned,
        fmt::bytes(r.condemned_bytes),
        r.workspaces,
        r.reachable_objects
    );
    if r.repacked > 0 {
        println!(
            "{} mostly-garbage packs {}: {} copied into {} new packs",
            r.repacked,
            if a.dry_run {
                "would be repacked"
            } else {
                "repacked and condemned"
            },
            fmt::bytes(r.repack_bytes_written),
            r.repack_packs_written
        );
    }
    if r.rescued > 0 {
        println!(
            "{} condemned packs were reachable again and are kept",
            r.rescued
        );
    }
    if r.pending > 0 && !a.dry_run {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let wait = (r.next_deletion_unix - now).max(0);
        println!(
            "{} condemned packs ({}) wait for their grace; run `ds gc --hub` again in {} s or later to delete them",
            r.pending,
            fmt::bytes(r.pending_bytes),
            wait
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn gc(store: &Store, a: GcArgs) -> Result<ExitCode> {
    let max_unused = a.max_unused.unwrap_or(5.0);
    if !(0.0..=100.0).contains(&max_unused) {
        bail!("--max-unused must be a percentage between 0 and 100");
    }
    let r = gc::gc(
        store,
        GcOptions {
            max_unused: max_unused / 100.0,
            dry_run: a.dry_run,
        },
    )?;
    for d in &r.damaged_packs_kept {
        eprintln!("ds: warning: kept damaged pack: {d}");
    }
    if a.json {
        print_json(&GcJson::new(a.dry_run, &r))?;
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

impl ForgetArgs {
    /// Only an explicit --hub forgets on a hub (not DS_HUB or a saved
    /// default remote: forgetting is not to be aimed by the environment).
    pub fn on_hub(&self) -> bool {
        self.hub.is_some()
    }
}

/// `ds forget W --hub URL`: the hub's ref, by compare-and-delete.
pub(super) fn forget_on_hub(store_path: &std::path::Path, a: ForgetArgs) -> Result<ExitCode> {
    let hub = crate::sync::HubArgs {
        hub: a.hub,
        token: a.token,
        ca_cert: a.ca_cert,
        json: false,
    };
    let (url, token) = crate::sync::target(store_path, &hub)?;
    crate::sync::runtime()?.block_on(async {
        let mut r = ds_sync::Remote::connect(&url, &token, hub.ca_cert.as_deref()).await?;
        let Some(head) = r.get_ref(&a.workspace).await? else {
            anyhow::bail!("no workspace {:?} on {url}", a.workspace);
        };
        r.delete_ref(&a.workspace, head).await?;
        eprintln!(
            "ds: forgot workspace {} on {url} (was at {}); the hub's gc frees its data",
            a.workspace,
            head.short()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Opened for writing by the caller, like every ref change.
pub(super) fn forget(s: &Store, a: ForgetArgs) -> Result<ExitCode> {
    let id = head(s, &a.workspace)?;
    s.refs().delete(&a.workspace, id)?;
    eprintln!(
        "ds: forgot workspace {} (was at {}); run `ds gc` to free its data",
        a.workspace,
        id.short()
    );
    Ok(ExitCode::SUCCESS)
}

/// Opened exclusively by the caller: nothing may write while the index is rebuilt.
pub(super) fn reindex(s: &Store) -> Result<ExitCode> {
    let n = s.rebuild_index()?;
    eprintln!("ds: indexed {n} packs");
    Ok(ExitCode::SUCCESS)
}
