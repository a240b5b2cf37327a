//! `ds push`, `ds pull`, `ds clone`, `ds remote`, `ds token` and `ds hub`:
//! the CLI face of `ds-hub`. Hubs are named by URL or by a remote saved in
//! `STORE/remotes.json` (mode 0600 when it holds a token).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use ds_hub::server::{HubOptions, run};
use ds_store::Access;
use ds_store::refs::WorkspaceName;
use ds_sync::{Event, Remote, SyncReport};

use crate::open::{open, open_or_init};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// Where and how to reach a hub.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// Hub URL (http://HOST:PORT, or https:// with TLS) or the name of a
    /// remote saved with `ds remote add` [default: $DS_HUB, else the default
    /// remote]
    #[arg(long, value_name = "URL|NAME")]
    pub(crate) hub: Option<String>,
    /// Token for the hub [default: $DS_TOKEN, else the remote's saved token]
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PEM file of the CA that signed an https hub's certificate
    #[arg(long, env = "DS_CA_CERT", value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Print a JSON report on stdout
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Workspace to push
    workspace: String,
    /// Replace the hub's head even if it is not in this workspace's history
    /// (the replaced snapshots stay on the hub, outside the workspace)
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Workspace to pull
    workspace: String,
    /// Replace the local head even if the hub's does not descend from it
    /// (local snapshots stay in the store until `ds gc`)
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Workspace to copy from the hub (it must not exist locally yet; the
    /// store is created when missing)
    workspace: String,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCmd {
    /// Save a hub under a name (the first one saved becomes the default)
    Add {
        name: String,
        url: String,
        /// Token to save with it (stored in STORE/remotes.json, mode 0600)
        #[arg(long)]
        token: Option<String>,
        /// Make it the default hub
        #[arg(long)]
        default: bool,
    },
    /// Forget a saved hub
    Remove { name: String },
    /// List saved hubs
    List,
}

#[derive(Debug, Args)]
pub struct RemoteArgs {
    #[command(subcommand)]
    cmd: RemoteCmd,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Workspace the new token may read and write (repeat for several; `*`
    /// for all)
    #[arg(long = "workspace", short = 'w', required_unless_present = "runner")]
    workspaces: Vec<String>,
    /// Make a runner token instead: it may only connect as runner NAME
    /// (`ds runner --token …`); each task brings its own workspace token
    #[arg(long, value_name = "NAME", conflicts_with = "workspaces")]
    runner: Option<String>,
    /// Note stored with the token
    #[arg(long, default_value = "")]
    comment: String,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Args)]
pub struct HubServeArgs {
    /// Address to listen on (port 0 picks a free port and prints it)
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Object storage: file:///PATH or s3://BUCKET/PREFIX (S3 is configured
    /// by the AWS_* environment variables: AWS_ENDPOINT, AWS_ALLOW_HTTP,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) [default:
    /// file://DATA/storage]
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// Local state (admin token, cache) [default: $XDG_DATA_HOME/ds/hub]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// PEM certificate chain for TLS (with --tls-key)
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Seconds a running task's lease lasts without a heartbeat from its
    /// runner; after that the task is `lost` (or retried). Runners
    /// heartbeat three times per lease, at most every 10 s
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0,
          value_parser = parse_lease)]
    lease: f64,
    /// The URL other hubs on the same storage reach this one at: a browser
    /// relayed to a task whose runner is connected here, through another
    /// hub, is forwarded here [default: http://LISTEN, with the hostname
    /// when listening on all addresses]
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// Also relay tasks at <task id>.tasks.DOMAIN (their own origin, which
    /// JupyterLab and friends prefer); DNS and TLS for *.tasks.DOMAIN are
    /// yours, and the hub must be served at DOMAIN or under it
    #[arg(long, value_name = "DOMAIN")]
    tasks_domain: Option<String>,
    /// Connections served at once; past this a client is told
    /// `limit connections` (RESOURCE_EXHAUSTED, or HTTP 503) and closed
    #[arg(long, value_name = "N", default_value_t = ds_hub::rates::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a new connection has to send its first bytes (and an
    /// HTTP/1.1 request its headers, a TLS client its handshake)
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    header_timeout: f64,
    /// Relayed connections (requests in flight, websockets) one token may
    /// have open; past this: HTTP 429 `limit relay_connections_per_token`
    #[arg(long, value_name = "N", default_value_t = ds_hub::rates::RELAYS_PER_TOKEN)]
    relays_per_token: usize,
    /// Hub gc waits this long between condemning a pack and deleting it,
    /// whatever its --grace: every hub on the bucket must write an index
    /// object or a ref within this time of reading gc's state (raise it for
    /// slow object storage; tests lower it). Give every hub the same value
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_settle)]
    gc_settle: f64,
}

fn parse_settle(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(1.0..=3600.0).contains(&v) {
        return Err("the gc settle time is 1 to 3600 seconds".into());
    }
    Ok(v)
}

fn parse_lease(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.5..=3600.0).contains(&v) {
        return Err("a lease lasts 0.5 to 3600 seconds (at most 60 is recommended)".into());
    }
    Ok(v)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Remotes {
    default: Option<String>,
    remotes: BTreeMap<String, SavedRemote>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedRemote {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

fn remotes_path(store: &Path) -> PathBuf {
    store.join("remotes.json")
}

fn load_remotes(store: &Path) -> Result<Remotes> {
    let p = remotes_path(store);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Remotes::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_remotes(store: &Path, r: &Remotes) -> Result<()> {
    if !store.join("config").exists() {
        bail!("no store at {} (run `ds init` first)", store.display());
    }
    let p = remotes_path(store);
    let tmp = store.join("remotes.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(r)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// Saves remote `name` (with its token) and makes it the default.
pub(crate) fn save_default_remote(store: &Path, name: &str, url: &str, token: &str) -> Result<()> {
    let mut r = load_remotes(store)?;
    r.default = Some(name.to_string());
    r.remotes.insert(
        name.to_string(),
        SavedRemote {
            url: url.to_string(),
            token: Some(token.to_string()),
        },
    );
    save_remotes(store, &r)
}

/// (url, token) for a command.
pub(crate) fn target(store: &Path, a: &HubArgs) -> Result<(String, String)> {
    let remotes = load_remotes(store)?;
    let named = a
        .hub
        .clone()
        .or_else(|| std::env::var("DS_HUB").ok().filter(|s| !s.is_empty()))
        .or(remotes.default.clone())
        .ok_or_else(|| {
            anyhow!("no hub given: pass --hub URL, set DS_HUB, or save one with `ds remote add origin URL`")
        })?;
    let (url, saved_token) = if named.contains("://") {
        (named, None)
    } else {
        let r = remotes.remotes.get(&named).ok_or_else(|| {
            anyhow!("no remote named {named:?} (see `ds remote list`; a URL needs its http:// or https://)")
        })?;
        (r.url.clone(), r.token.clone())
    };
    let token = a
        .token
        .clone()
        .or_else(|| std::env::var("DS_TOKEN").ok().filter(|s| !s.is_empty()))
        .or(saved_token)
        .ok_or_else(|| {
            anyhow!("no token for {url}: pass --token, set DS_TOKEN, or save one with `ds remote add NAME URL --token T`")
        })?;
    Ok((url, token))
}

/// Resolves at SIGTERM or SIGINT (Ctrl-C): when a daemon command (`ds
/// hub`, `ds runner`) should shut down cleanly.
pub(crate) async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A progress bar of bytes and chunks moved (hidden when stderr is not a
/// terminal).
fn bar(verb: &'static str) -> (ProgressBar, impl Fn(Event) + Sync) {
    let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(
            "{prefix} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        )
        .expect("valid template"),
    );
    b.set_prefix(verb);
    let b2 = b.clone();
    let chunks = std::sync::atomic::AtomicU64::new(0);
    let total_chunks = std::sync::atomic::AtomicU64::new(0);
    let f = move |e: Event| {
        use std::sync::atomic::Ordering::Relaxed;
        match e {
            Event::Level { level, asked } => {
                b2.set_message(format!("comparing trees: level {level}, {asked} objects"));
            }
            Event::Transfer { chunks: c, .. } => {
                total_chunks.store(c, Relaxed);
                b2.set_message(format!("0/{c} chunks"));
            }
            Event::Moved { bytes, chunks: c } => {
                b2.inc(bytes);
                if b2.length().unwrap_or(0) < b2.position() {
                    b2.set_length(b2.position());
                }
                let n = chunks.fetch_add(c, Relaxed) + c;
                b2.set_message(format!("{n}/{} chunks", total_chunks.load(Relaxed)));
            }
        }
    };
    (b, f)
}

fn report(r: &SyncReport, verb: &str, json: bool, started: Instant) -> Result<ExitCode> {
    if let Some(p) = r.previous
        && r.forced
        && p != r.snapshot
        && !json
    {
        eprintln!(
            "ds: --force: replaced {} (was at {}); its snapshots stay in the store, outside the workspace's history",
            r.workspace,
            p.short()
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else if r.up_to_date && r.objects_sent == 0 {
        eprintln!(
            "ds: {} is up to date at {}",
            r.workspace,
            r.snapshot.short()
        );
    } else {
        eprintln!(
            "ds: {verb} {} → {}: {} in {} objects ({} chunks sent, {} skipped), {} round trips, {:.2}s",
            r.workspace,
            r.snapshot.short(),
            crate::fmt::bytes(r.bytes_sent),
            r.objects_sent,
            r.chunks_sent,
            r.chunks_skipped,
            r.round_trips,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push(store: &Path, a: PushArgs) -> Result<ExitCode> {
    let ws = WorkspaceName::new(a.workspace.as_str())?;
    let (url, token) = target(store, &a.hub)?;
    let s = Arc::new(open(store, Access::Read)?);
    let started = Instant::now();
    let (b, progress) = bar("push");
    let r = runtime()?.block_on(async {
        let mut remote = Remote::connect(&url, &token, a.hub.ca_cert.as_deref()).await?;
        ds_sync::push(s, &mut remote, &ws, a.force, &progress).await
    });
    b.finish_and_clear();
    report(&r?, "pushed", a.hub.json, started)
}

pub fn pull(store: &Path, a: PullArgs) -> Result<ExitCode> {
    let ws = WorkspaceName::new(a.workspace.as_str())?;
    let (url, token) = target(store, &a.hub)?;
    // Like clone, a pull into a machine's first store creates it.
    let s = Arc::new(open_or_init(store)?);
    let started = Instant::now();
    let (b, progress) = bar("pull");
    let r = runtime()?.block_on(async {
        let mut remote = Remote::connect(&url, &token, a.hub.ca_cert.as_deref()).await?;
        ds_sync::pull(s, &mut remote, &ws, a.force, &progress).await
    });
    b.finish_and_clear();
    report(&r?, "pulled", a.hub.json, started)
}

pub fn clone(store: &Path, a: CloneArgs) -> Result<ExitCode> {
    let ws = WorkspaceName::new(a.workspace.as_str())?;
    let (url, token) = target(store, &a.hub)?;
    let s = Arc::new(open_or_init(store)?);
    if let Some(h) = s.refs().get(&a.workspace)? {
        bail!(
            "workspace {} already exists here (at {}); use `ds pull {}` to update it",
            a.workspace,
            h.short(),
            a.workspace
        );
    }
    let started = Instant::now();
    let (b, progress) = bar("clone");
    let r = runtime()?.block_on(async {
        let mut remote = Remote::connect(&url, &token, a.hub.ca_cert.as_deref()).await?;
        ds_sync::pull(s.clone(), &mut remote, &ws, false, &progress).await
    });
    b.finish_and_clear();
    report(&r?, "cloned", a.hub.json, started)
}

pub fn remote(store: &Path, a: RemoteArgs) -> Result<ExitCode> {
    let mut r = load_remotes(store)?;
    match a.cmd {
        RemoteCmd::Add {
            name,
            url,
            token,
            default,
        } => {
            if name.contains("://") || name.is_empty() {
                bail!("{name:?} is not a remote name (the URL comes second)");
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("{url:?}: a hub URL starts with http:// or https://");
            }
            if default || r.default.is_none() {
                r.default = Some(name.clone());
            }
            r.remotes.insert(name.clone(), SavedRemote { url, token });
            save_remotes(store, &r)?;
            eprintln!("ds: saved remote {name}");
        }
        RemoteCmd::Remove { name } => {
            if r.remotes.remove(&name).is_none() {
                bail!("no remote named {name:?}");
            }
            if r.default.as_deref() == Some(&name) {
                r.default = None;
            }
            save_remotes(store, &r)?;
        }
        RemoteCmd::List => {
            for (n, s) in &r.remotes {
                let d = if r.default.as_deref() == Some(n) {
                    " (default)"
                } else {
                    ""
                };
                let t = if s.token.is_some() {
                    " [token saved]"
                } else {
                    ""
                };
                println!("{n}\t{}{d}{t}", s.url);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn token(store: &Path, a: TokenArgs) -> Result<ExitCode> {
    let (url, token) = target(store, &a.hub)?;
    let t = runtime()?.block_on(async {
        let mut remote = Remote::connect(&url, &token, a.hub.ca_cert.as_deref()).await?;
        remote.create_token(a.workspaces, a.comment, a.runner).await
    })?;
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// Raises this process's open-file soft limit to its hard limit: every
/// client connection is a descriptor, and the common soft limit of 1,024
/// let a thousand idle connections lock out an honest `ds push`.
pub(crate) fn raise_open_files(who: &str) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => eprintln!("ds {who}: open files limit raised from {soft} to {hard}"),
            Err(e) => {
                eprintln!("ds {who}: warning: cannot raise the open files limit ({soft}): {e}")
            }
        },
        Ok(_) => {}
        Err(e) => eprintln!("ds {who}: warning: cannot read the open files limit: {e}"),
    }
}

/// Structured logs on stderr, filtered by `DS_LOG` (default `info`; e.g.
/// `DS_LOG=debug`, `DS_LOG=ds_hub=debug,warn`): the hub's access log,
/// refusals, tunnels.
pub(crate) fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

pub fn hub(a: HubServeArgs) -> Result<ExitCode> {
    init_logs();
    raise_open_files("hub");
    let data = a
        .data
        .unwrap_or_else(|| crate::data_home().join("ds").join("hub"));
    let opts = HubOptions {
        listen: a.listen,
        storage: a.storage,
        data,
        tls: a.tls_cert.zip(a.tls_key),
        advertise: a.advertise,
        tasks_domain: a.tasks_domain,
        conn_limits: ds_hub::web::listen::ConnLimits {
            max_connections: a.max_connections.max(1),
            header_timeout: std::time::Duration::from_secs_f64(a.header_timeout.clamp(0.1, 3600.0)),
            relays_per_token: a.relays_per_token.max(1),
        },
        tasks: ds_hub::tasks::TaskOptions::with_lease(std::time::Duration::from_secs_f64(a.lease)),
        gc_settle: std::time::Duration::from_secs_f64(a.gc_settle),
    };
    runtime()?.block_on(async {
        let shutdown = async {
            terminated().await;
            eprintln!("ds hub: shutting down");
        };
        run(opts, |_| {}, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
