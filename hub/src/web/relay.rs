//! The HTTP relay: `/tasks/<id>/…` on the hub reaches the port a running
//! task serves (`ds run --port N`), through a tunnel its runner opens
//! ([`crate::tasks::tunnel`]), so a runner behind NAT serves JupyterLab.
//!
//! Each browser request runs over an HTTP/1.1 connection to the task: an
//! idle one kept from an earlier request ([`Pool`]), else a new tunnel;
//! upgrades (websockets: a Jupyter kernel) get a tunnel of their own and
//! are relayed as raw bytes once both ends agree. The hub authenticates the caller (a bearer
//! token or the session cookie) and never forwards its credentials: the
//! `Authorization` header and the hub's session cookie are removed from
//! what the task sees, and a task cannot set the hub's cookie. By default
//! the prefix `/tasks/<id>` is stripped, so a plain server sees `/`; a
//! task submitted with `keep_prefix` sees the full path (apps told their
//! base URL, like `jupyter lab --ServerApp.base_url=/tasks/$DS_TASK/`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::any;
use ds_proto::TaskId;
use http::{HeaderValue, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

use super::{ApiError, COOKIE, Web};
use crate::tasks::record::State as TaskState;

/// The task a request's Host names in wildcard-domain mode
/// (`<id>.tasks.<domain>`, any port), if the hub has a tasks domain.
fn task_of_host(web: &Web, req: &Request<Body>) -> Option<String> {
    let domain = web.tasks_domain.as_deref()?;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let id = host
        .to_ascii_lowercase()
        .strip_suffix(&format!(".tasks.{}", domain.to_ascii_lowercase()))?
        .to_string();
    (!id.is_empty() && !id.contains('.')).then_some(id)
}

/// Wildcard-domain mode: a request to `<id>.tasks.<domain>` is relayed
/// whole (the app is at the root of its own origin); others go on.
pub(crate) async fn by_host(
    State(web): State<Web>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let Some(id) = task_of_host(&web, &req) else {
        return next.run(req).await;
    };
    let rest = req.uri().path().trim_start_matches('/').to_string();
    relay(web, id, rest, Mode::Whole, req)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// How a relayed request's path reaches the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `/tasks/<id>/rest` → `/rest` (unless the task keeps the prefix).
    Prefixed,
    /// The path as it came (wildcard-domain mode).
    Whole,
}

pub(crate) fn routes() -> axum::Router<Web> {
    axum::Router::new()
        .route(
            "/tasks/{id}",
            any(|Path(id): Path<String>| async move { Redirect::permanent(&format!("/tasks/{id}/")) }),
        )
        .route("/tasks/{id}/", any(relay_root))
        .route("/tasks/{id}/{*rest}", any(relay_path))
}

async fn relay_root(
    State(web): State<Web>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    relay(web, id, String::new(), Mode::Prefixed, req)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn relay_path(
    State(web): State<Web>,
    Path((id, rest)): Path<(String, String)>,
    req: Request<Body>,
) -> Response {
    relay(web, id, rest, Mode::Prefixed, req)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// Whether a task's port can be relayed: it declares one and is running.
fn usable(rec: &crate::tasks::record::Record) -> Result<(), ApiError> {
    if rec.spec.port == 0 {
        return Err(ApiError::not_found(format!(
            "task {} serves no port (submit it with `ds run --port N`)",
            rec.id
        )));
    }
    if rec.state != TaskState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "failed_precondition",
            format!(
                "task {} is {}: only a running task's port is relayed",
                rec.id,
                rec.state.as_str()
            ),
        ));
    }
    Ok(())
}

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1);
/// `connection` and `upgrade` are put back for an upgrade.
const HOP: &[header::HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// The `Cookie` header without the hub's session cookie.
fn without_session(v: &str) -> Option<String> {
    let kept: Vec<&str> = v
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split_once('=').map(|p| p.0) != Some(COOKIE))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

async fn relay(
    web: Web,
    id: String,
    rest: String,
    mode: Mode,
    mut req: Request<Body>,
) -> Result<Response, ApiError> {
    let c = web.caller_for_relay(req.headers()).await?;
    // Held while the request is relayed, and while an upgraded connection
    // stays open.
    let open = web.relay_open.open(&crate::auth::token_hash(&c.token))?;
    let unknown = || ApiError::not_found(format!("no task {id}"));
    let tid = TaskId::new(&id).map_err(|_| unknown())?;
    let rec = match web.relay_records.load(&web, &tid).await? {
        Some(r) if c.grant.may_use(&r.spec.workspace) => r,
        _ => return Err(unknown()),
    };
    usable(&rec)?;
    // A failure may come from a record trusted a moment too long (the
    // task just ended): then say what the bucket says.
    let why = async |e: ApiError| -> ApiError {
        web.relay_records.forget(&tid);
        match web.hub.book.load(&tid).await {
            Ok(Some(fresh)) => usable(&fresh).err().unwrap_or(e),
            _ => e,
        }
    };
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    // An idle connection to the task from an earlier request (keep-alive
    // upstream, as reverse proxies do), else a new one.
    let pooled = if upgrade.is_none() {
        web.relay_pool.take(&id)
    } else {
        None
    };
    let (mut sender, peer_hub) = match pooled {
        Some(p) => p,
        None => {
            let forwarded = req.headers().contains_key(FORWARDED_BY);
            let (io, peer_hub) = match connect(&web, &rec, forwarded).await {
                Ok(x) => x,
                Err(e) => return Err(why(e).await),
            };
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| bad_gateway(&id, e))?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            (sender, peer_hub)
        }
    };

    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let path = if rec.spec.keep_prefix || peer_hub || mode == Mode::Whole {
        req.uri().path().to_string()
    } else {
        format!("/{rest}")
    };
    let host = req.headers().get(header::HOST).cloned();
    let proto = if web.tls { "https" } else { "http" };
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let server_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut fwd = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{path}{query}"))
        .body(body)
        .map_err(|e| ApiError::bad_request(format!("cannot relay this request: {e}")))?;
    let h = fwd.headers_mut();
    for (k, v) in &parts.headers {
        if HOP.contains(k) || k == header::AUTHORIZATION || k == header::COOKIE {
            continue;
        }
        h.append(k, v.clone());
    }
    for v in parts.headers.get_all(header::COOKIE) {
        if let Some(kept) = v.to_str().ok().and_then(without_session)
            && let Ok(v) = HeaderValue::from_str(&kept)
        {
            h.append(header::COOKIE, v);
        }
    }
    if let Some(u) = &upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u.clone());
    }
    if let Some(host) = host {
        h.insert("x-forwarded-host", host);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Ok(p) = HeaderValue::from_str(&format!("/tasks/{id}")) {
        h.insert("x-forwarded-prefix", p);
    }
    if let Some(ip) = peer.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert("x-forwarded-for", ip);
    }
    if peer_hub {
        // The next hub authenticates the caller again, with the same token
        // (hubs on one bucket share their tokens).
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", c.token)) {
            h.insert(header::AUTHORIZATION, v);
        }
        h.insert(FORWARDED_BY, HeaderValue::from_static("hub"));
        if let Some(host) = h.get("x-forwarded-host").cloned() {
            h.insert(header::HOST, host);
        }
    }

    let mut resp = match sender.send_request(fwd).await {
        Ok(r) => r,
        Err(e) => return Err(why(bad_gateway(&id, e)).await),
    };
    if upgrade.is_none() {
        // Ready again once this response's body has been read.
        web.relay_pool.put(&id, sender, peer_hub);
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(server_side) = server_side
    {
        let task_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _open = open;
            if let (Ok(a), Ok(b)) = (server_side.await, task_side.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    // The task may not set (or clear) the hub's session cookie.
    let cookies: Vec<HeaderValue> = parts
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.split_once('='))
                .is_none_or(|(k, _)| k.trim() != COOKIE)
        })
        .cloned()
        .collect();
    parts.headers.remove(header::SET_COOKIE);
    for c in cookies {
        parts.headers.append(header::SET_COOKIE, c);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// A connection to the task's port: the runner's tunnel when it is
/// connected here; else the hub it is connected to, which relays it (once:
/// a forwarded request is never forwarded again). True: through a hub.
async fn connect(
    web: &Web,
    rec: &crate::tasks::record::Record,
    forwarded: bool,
) -> Result<(Box<dyn Io>, bool), ApiError> {
    let id = &rec.id;
    let (io, peer_hub): (Box<dyn Io>, bool) = if web.hub.is_connected(&rec.runner) {
        (Box::new(web.hub.open_tunnel(rec).await?), false)
    } else if let (false, Some(addr)) = (forwarded, peer(web, rec).await?) {
        let tcp = tokio::time::timeout(PEER_CONNECT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                ApiError::from(crate::HubError::Unreachable(format!(
                    "hub {addr} of runner {} did not answer within 5 s",
                    rec.runner
                )))
            })?
            .map_err(|e| {
                ApiError::from(crate::HubError::Unreachable(format!(
                    "hub {addr} of runner {}: {e}",
                    rec.runner
                )))
            })?;
        let _ = tcp.set_nodelay(true);
        (Box::new(tcp), true)
    } else {
        return Err(crate::HubError::Unreachable(format!(
            "runner {} of task {id} is not connected to this hub or to any hub it can reach",
            rec.runner
        ))
        .into());
    };
    Ok((io, peer_hub))
}

/// Relayed connections open per token (requests in flight, upgraded
/// connections), against the hub's per-token cap.
#[derive(Debug, Default)]
pub(crate) struct OpenRelays {
    per_token: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    pub cap: std::sync::OnceLock<usize>,
}

/// One relayed connection counted against its token; uncounted when dropped.
pub(crate) struct Counted {
    relays: std::sync::Arc<OpenRelays>,
    token: String,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut m = self.relays.lock();
        if let Some(n) = m.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.token);
            }
        }
    }
}

impl OpenRelays {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.per_token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a relayed connection of the token whose hash is `token`, or
    /// refuses it past the cap.
    fn open(self: &std::sync::Arc<Self>, token: &str) -> Result<Counted, ApiError> {
        let cap = self
            .cap
            .get()
            .copied()
            .unwrap_or(crate::rates::RELAYS_PER_TOKEN);
        let mut m = self.lock();
        let n = m.entry(token.to_string()).or_default();
        if *n >= cap {
            crate::metrics::METRICS.refused("relay_connections_per_token");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resource_exhausted",
                format!(
                    "limit relay_connections_per_token: this token has {cap} relayed \
                     connections open"
                ),
            ));
        }
        *n += 1;
        Ok(Counted {
            relays: self.clone(),
            token: token.to_string(),
        })
    }
}

/// Running tasks' records, trusted for a moment: a page load through the
/// relay is hundreds of requests, and each would read the task's record
/// from the bucket (an S3 round trip). A task that ends stays relayable
/// for at most [`RECORD_TTL`] — and its runner no longer answers for it.
#[derive(Debug, Default)]
pub(crate) struct Records {
    seen: std::sync::Mutex<
        std::collections::HashMap<TaskId, (crate::tasks::record::Record, std::time::Instant)>,
    >,
}

const RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(2);
const RECORDS: usize = 10_000;

impl Records {
    async fn load(
        &self,
        web: &Web,
        id: &TaskId,
    ) -> Result<Option<crate::tasks::record::Record>, ApiError> {
        if let Some((r, at)) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(id)
            && at.elapsed() < RECORD_TTL
        {
            return Ok(Some(r.clone()));
        }
        let r = web.hub.book.load(id).await?;
        if let Some(r) = &r
            && r.state == TaskState::Running
        {
            let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() >= RECORDS {
                m.clear();
            }
            m.insert(id.clone(), (r.clone(), std::time::Instant::now()));
        }
        Ok(r)
    }

    fn forget(&self, id: &TaskId) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Idle keep-alive connections to tasks, reused by later requests.
#[derive(Default)]
pub(crate) struct Pool {
    idle: std::sync::Mutex<std::collections::HashMap<String, Vec<Idle>>>,
}

struct Idle {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    peer_hub: bool,
    since: std::time::Instant,
}

/// Idle connections kept per task, and tasks with any.
const IDLE_PER_TASK: usize = 16;
const IDLE_TASKS: usize = 4096;
/// An idle connection older than this is closed (its tunnel with it).
const IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = self.lock().values().map(Vec::len).sum();
        write!(f, "Pool({n} idle)")
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to task `id` ready for a request, if one is idle.
    fn take(&self, id: &str) -> Option<(hyper::client::conn::http1::SendRequest<Body>, bool)> {
        let mut m = self.lock();
        let v = m.get_mut(id)?;
        v.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_FOR);
        let i = v.iter().position(|i| i.sender.is_ready())?;
        let got = v.swap_remove(i);
        Some((got.sender, got.peer_hub))
    }

    fn put(&self, id: &str, sender: hyper::client::conn::http1::SendRequest<Body>, peer_hub: bool) {
        let mut m = self.lock();
        if m.len() >= IDLE_TASKS && !m.contains_key(id) {
            m.retain(|_, v| {
                v.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_FOR);
                !v.is_empty()
            });
            if m.len() >= IDLE_TASKS {
                return;
            }
        }
        let v = m.entry(id.to_string()).or_default();
        if v.len() < IDLE_PER_TASK {
            v.push(Idle {
                sender,
                peer_hub,
                since: std::time::Instant::now(),
            });
        }
    }

    /// Closes connections idle for too long.
    pub(crate) fn sweep(&self) {
        self.lock().retain(|_, v| {
            v.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_FOR);
            !v.is_empty()
        });
    }
}

/// Marks a request one hub relayed to another.
const FORWARDED_BY: &str = "x-ds-forwarded-by";
/// How long connecting to another hub may take.
const PEER_CONNECT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a relayed connection runs over: a tunnel, or a TCP connection to
/// another hub.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The `host:port` of the hub the task's runner is connected to, when it
/// is another online hub on the bucket that speaks plain HTTP.
async fn peer(web: &Web, rec: &crate::tasks::record::Record) -> Result<Option<String>, ApiError> {
    let Some(info) = web.hub.book.runner(&rec.runner).await? else {
        return Ok(None);
    };
    let url = info.hub_url;
    if url.is_empty() || url == web.hub.advertised() {
        return Ok(None);
    }
    let Some(addr) = url.strip_prefix("http://") else {
        return Err(crate::HubError::Unreachable(format!(
            "runner {} is connected to {url}; relaying through another hub over https is not              supported yet: open the task on that hub",
            rec.runner
        ))
        .into());
    };
    Ok(Some(addr.trim_end_matches('/').to_string()))
}

fn bad_gateway(id: &str, e: hyper::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!("task {id}: the relayed connection failed: {e}"),
    )
}
