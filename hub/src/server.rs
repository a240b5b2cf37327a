//! Starting a hub: data directory, storage, admin token, cache, listener.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use ds_proto::MAX_MESSAGE;
use ds_proto::runner::tasks_server::TasksServer;
use ds_proto::v1::sync_server::SyncServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::auth::{Auth, Grant, new_token};
use crate::cache::Cache;
use crate::error::{HubError, IoContext, Result};
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
    pub tasks: TaskOptions,
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
    let tasks = TasksServer::new(TasksService::new(task_hub))
        .max_decoding_message_size(ds_proto::MAX_TASK_MESSAGE)
        .max_encoding_message_size(ds_proto::MAX_TASK_MESSAGE);
    let svc = SyncServer::new(SyncService::new(storage, cache, auth))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // HTTP/2's default 64 KiB stream window caps a pack upload at a few
    // windows per round trip; packs are tens of MiB.
    let mut server = Server::builder()
        .initial_stream_window_size(ds_proto::STREAM_WINDOW)
        .initial_connection_window_size(ds_proto::CONNECTION_WINDOW)
        .tcp_nodelay(true);
    if let Some((cert, key)) = &opts.tls {
        let c = std::fs::read(cert).at(cert)?;
        let k = std::fs::read(key).at(key)?;
        server = server
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(c, k)))
            .map_err(HubError::Transport)?;
    }
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    eprintln!("ds hub: listening on {scheme}://{addr}");
    ready(addr);
    let served = server
        .add_service(svc)
        .add_service(tasks)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    for b in background {
        b.abort();
    }
    served?;
    Ok(())
}
