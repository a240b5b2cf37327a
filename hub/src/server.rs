//! Starting a hub: data directory, storage, admin token, cache, listener.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use ds_proto::MAX_MESSAGE;
use ds_proto::runner::tasks_server::TasksServer;
use ds_proto::v1::sync_server::SyncServer;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::auth::{Auth, Grant, new_token};
use crate::cache::Cache;
use crate::error::{IoContext, Result};
use crate::service::SyncService;
use crate::storage::Storage;
use crate::tasks::{TaskHub, TaskOptions, service::TasksService};

/// How to run a hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub listen: String,
    /// `file:///…` or `s3://bucket/prefix`; default `file://DATA/storage`.
    pub storage: Option<String>,
    /// Local state: admin token, cache.
    pub data: PathBuf,
    /// PEM certificate chain and key; plaintext when absent.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The URL other hubs on the same bucket reach this one at (for the
    /// relay); default: http(s)://ADDR, with this machine's hostname when
    /// listening on all addresses.
    pub advertise: Option<String>,
    /// Wildcard-domain relay: `<task id>.tasks.DOMAIN` (DNS and TLS for
    /// `*.tasks.DOMAIN` are the operator's); the hub is served at DOMAIN or
    /// under it, so one session cookie covers both.
    pub tasks_domain: Option<String>,
    /// Connection cap and first-bytes timeout.
    pub conn_limits: crate::web::listen::ConnLimits,
    pub tasks: TaskOptions,
    /// Hub gc's settle time (`crate::gc::SETTLE`).
    pub gc_settle: std::time::Duration,
}

/// Reads the admin token, creating it (mode 0600) on first start.
fn admin_token(data: &std::path::Path) -> Result<(PathBuf, String)> {
    let path = data.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok((path, t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .at(&path)?;
            use std::io::Write;
            f.write_all(format!("{token}\n").as_bytes()).at(&path)?;
            f.sync_all().at(&path)?;
            Ok((path, token))
        }
        Err(e) => Err(e).at(&path),
    }
}

/// Runs a hub until `shutdown` resolves. `ready` gets the bound address
/// (useful with port 0).
pub async fn run(
    opts: HubOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    crate::install_crypto_provider();
    std::fs::create_dir_all(&opts.data).at(&opts.data)?;
    let data = std::fs::canonicalize(&opts.data).at(&opts.data)?;
    let url = match &opts.storage {
        Some(u) => u.clone(),
        None => format!("file://{}", data.join("storage").display()),
    };
    let storage = Storage::open(&url).await?;
    let auth = Arc::new(Auth::new(storage.clone()));
    let (token_path, token) = admin_token(&data)?;
    auth.register(
        &token,
        &Grant {
            admin: true,
            workspaces: vec!["*".into()],
            comment: "admin".into(),
            runner: None,
        },
    )
    .await?;
    eprintln!("ds hub: admin token in {}", token_path.display());
    let key = blake3::hash(url.as_bytes()).to_hex();
    let cache = Cache::open(&data.join("cache").join(&key[..16]))?;
    let added = cache.refresh(&storage).await?;
    eprintln!("ds hub: storage {url} ({added} packs indexed into the cache)");

    let listener = TcpListener::bind(&opts.listen)
        .await
        .at(std::path::Path::new(&opts.listen))?;
    let addr = listener
        .local_addr()
        .at(std::path::Path::new(&opts.listen))?;
    let task_hub = TaskHub::new(storage.clone(), auth.clone(), opts.tasks.clone());
    let background = task_hub.start();
    let sync = SyncService::new(storage, cache, auth.clone()).with_gc_settle(opts.gc_settle);
    let tasks_service = TasksService::new(task_hub.clone(), sync.clone());
    let tasks = TasksServer::new(tasks_service.clone())
        .max_decoding_message_size(ds_proto::MAX_TASK_MESSAGE)
        .max_encoding_message_size(ds_proto::MAX_TASK_MESSAGE);
    let svc = SyncServer::new(sync.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let tls = match &opts.tls {
        Some((cert, key)) => Some(crate::web::listen::tls_acceptor(cert, key)?),
        None => None,
    };
    let http = crate::web::router(crate::web::Web {
        sync,
        tasks: tasks_service,
        hub: task_hub.clone(),
        auth,
        tls: tls.is_some(),
        tasks_domain: opts.tasks_domain.clone(),
        relay_pool: Default::default(),
        relay_records: Default::default(),
        relay_open: {
            let r = Arc::new(crate::web::relay::OpenRelays::default());
            let _ = r.cap.set(opts.conn_limits.relays_per_token.max(1));
            r
        },
    });
    let grpc = Routes::new(svc).add_service(tasks).prepare();
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    task_hub.set_advertised(opts.advertise.clone().unwrap_or_else(|| {
        if addr.ip().is_unspecified() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{scheme}://{host}:{}", addr.port())
        } else {
            format!("{scheme}://{addr}")
        }
    }));
    eprintln!("ds hub: gRPC, REST API and web UI listening on {scheme}://{addr}");
    ready(addr);
    let hub = task_hub.clone();
    let shutdown = async move {
        shutdown.await;
        // Runners' streams would keep their connections open through the
        // drain; ending them sends the runners to reconnect elsewhere.
        hub.runners().clear();
    };
    let served =
        crate::web::listen::serve(listener, tls, grpc, http, opts.conn_limits, shutdown).await;
    for b in background {
        b.abort();
    }
    served?;
    Ok(())
}
