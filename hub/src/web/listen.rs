//! The hub's one listener: gRPC and HTTP on the same address.
//!
//! Every connection is served by hyper (HTTP/1.1 or HTTP/2, with TLS when
//! configured, ALPN offering both) and every request is routed by its
//! content type: `application/grpc…` goes to the tonic services, anything
//! else to the HTTP router (REST API, web UI, relay, `/metrics`). So the
//! URL a user gives `ds push --hub` is the one they open in a browser.
//! HTTP/1.1 connections keep their upgrades (websockets through the relay).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tower::ServiceExt;

use crate::error::{HubError, IoContext, Result};
use crate::metrics::{METRICS, Surface};
use crate::rates::{MAX_CONNECTIONS, MAX_REFUSING, Rates};

/// How many connections, and how long a client has to send its first
/// bytes (and an HTTP/1.1 request's headers, and finish a TLS handshake).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// Relayed connections one token may have open.
    pub relays_per_token: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: Duration::from_secs(30),
            relays_per_token: crate::rates::RELAYS_PER_TOKEN,
        }
    }
}
/// HTTP/2 streams per connection: a runner's relayed connections are
/// streams of its one connection to the hub, beside its Attach stream.
const MAX_STREAMS: u32 = 4096;
/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Routes a request by content type; charges it to its caller; counts it
/// and its bytes.
#[derive(Clone)]
struct Dispatch {
    grpc: Routes,
    http: axum::Router,
    peer: SocketAddr,
    rates: Arc<Rates>,
    /// Set on a connection past the cap: every request gets this refusal.
    refuse: Option<&'static str>,
}

/// The caller a request is charged to: its token's hash, else its IP.
fn caller_key<B>(req: &Request<B>, peer: &SocketAddr) -> (String, bool) {
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or_else(|| super::cookie(req.headers(), super::COOKIE));
    match token {
        Some(t) => (crate::auth::token_hash(t.trim()), false),
        None => (format!("ip:{}", peer.ip()), true),
    }
}

/// A refusal in the request's own protocol: a gRPC status, or a JSON error.
fn refusal(grpc: bool, status: http::StatusCode, limit: &str, why: &str) -> Response<Body> {
    METRICS.refused(limit);
    let msg = format!("limit {limit}: {why}");
    if grpc {
        let (parts, ()) = tonic::Status::resource_exhausted(msg)
            .into_http::<()>()
            .into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    use axum::response::IntoResponse;
    super::ApiError::new(status, "resource_exhausted", msg).into_response()
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl hyper::service::Service<Request<Incoming>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let surface = if is_grpc(&req) {
            Surface::Grpc
        } else {
            Surface::of_path(req.uri().path())
        };
        let grpc = surface == Surface::Grpc;
        if let Some(why) = self.refuse {
            let r = refusal(
                grpc,
                http::StatusCode::SERVICE_UNAVAILABLE,
                "connections",
                why,
            );
            return Box::pin(async move { Ok(r) });
        }
        // A runner's tunnels answer the hub's own OpenTunnel (each one a
        // relayed request already charged to its caller).
        let exempt = grpc && req.uri().path() == "/ds.runner.v1.Tasks/Tunnel";
        let (key, anonymous) = caller_key(&req, &self.peer);
        if !exempt && !self.rates.allow(&key, anonymous) {
            let (limit, why) = if anonymous {
                (
                    "requests_per_ip",
                    "too many requests without a token from this address; slow down",
                )
            } else {
                (
                    "requests_per_token",
                    "this token is making requests faster than the hub allows; slow down",
                )
            };
            tracing::warn!(limit, peer = %self.peer, path = req.uri().path(), "refused");
            let r = refusal(grpc, http::StatusCode::TOO_MANY_REQUESTS, limit, why);
            return Box::pin(async move { Ok(r) });
        }
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let req = req.map(move |b| {
            Body::new(b.map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    METRICS.bytes_in(surface, d.len());
                }
                f
            }))
        });
        let count_out = move |r: Response<Body>| {
            r.map(move |b| {
                Body::new(b.map_frame(move |f| {
                    if let Some(d) = f.data_ref() {
                        METRICS.bytes_out(surface, d.len());
                    }
                    f
                }))
            })
        };
        let peer = self.peer;
        let method = req.method().clone();
        let started = std::time::Instant::now();
        if surface == Surface::Grpc {
            let grpc = self.grpc.clone();
            let path = req.uri().path().to_string();
            Box::pin(async move {
                let r = grpc.oneshot(req).await?;
                tracing::debug!(
                    %peer,
                    call = %path,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "grpc"
                );
                // Only methods that exist are named (the path is the
                // client's to choose; the registry must not grow with it).
                let unknown = r.headers().get("grpc-status").is_some_and(|s| s == "12");
                METRICS.inc(
                    "ds_grpc_requests_total",
                    &[("method", if unknown { "unknown" } else { path.as_str() })],
                );
                Ok(count_out(r.map(Body::new)))
            })
        } else {
            let http = self.http.clone();
            // The path only: no query string (it is the client's, and may
            // carry what it should not) reaches the log.
            let path = req.uri().path().to_string();
            Box::pin(async move {
                let r = http.oneshot(req).await?;
                tracing::info!(
                    %peer,
                    %method,
                    %path,
                    status = r.status().as_u16(),
                    surface = surface.name(),
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "http"
                );
                METRICS.inc(
                    "ds_http_requests_total",
                    &[("surface", surface.name()), ("code", r.status().as_str())],
                );
                Ok(count_out(r))
            })
        }
    }
}

/// A TLS acceptor from PEM files (ALPN: h2 and http/1.1).
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |p: &Path, e: String| HubError::Refused(format!("{}: {e}", p.display()));
    let c = std::fs::read(cert).at(cert)?;
    let k = std::fs::read(key).at(key)?;
    let chain = CertificateDer::pem_slice_iter(&c)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&k).map_err(|e| bad(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HubError::Internal(format!("TLS: {e}")))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| bad(cert, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `grpc` and `http` on `listener` until `shutdown` resolves, then
/// lets open connections finish for up to [`DRAIN`].
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    grpc: Routes,
    http: axum::Router,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let header_timeout = limits.header_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // HTTP/2's default 64 KiB stream window caps a pack upload at a few
    // windows per round trip; packs are tens of MiB.
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(ds_proto::STREAM_WINDOW)
        .initial_connection_window_size(ds_proto::CONNECTION_WINDOW)
        // A runner's tunnels are streams of its one connection.
        .max_concurrent_streams(MAX_STREAMS);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let rates = Arc::new(Rates::default());
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: say so, back
                    // off, keep serving the connections already open.
                    eprintln!("ds hub: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        // Past the cap a connection is told so (in its own protocol) and
        // closed; past that, closed at once.
        let (permit, refuse) = match open.clone().try_acquire_owned() {
            Ok(p) => (p, None),
            Err(_) => match refusing.clone().try_acquire_owned() {
                Ok(p) => (
                    p,
                    Some("the hub has as many connections open as it serves; retry later"),
                ),
                Err(_) => {
                    METRICS.refused("connections");
                    continue;
                }
            },
        };
        let svc = Dispatch {
            grpc: grpc.clone(),
            http: http.clone(),
            peer,
            rates: rates.clone(),
            refuse,
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if refuse.is_some() {
                // Served a refusal for a few seconds at most.
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .into_owned();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                return;
            }
            // A connection that sends nothing is not kept (the HTTP/1.1
            // header timeout only starts once a protocol is chosen).
            if tls.is_none() {
                let mut b = [0u8; 1];
                match tokio::time::timeout(header_timeout, tcp.peek(&mut b)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        METRICS.refused("idle_connection");
                        return;
                    }
                }
            }
            let r = match tls {
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .into_owned();
                    watcher.watch(conn).await
                }
            };
            drop(r); // a client hanging up mid-request is not the hub's error
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {}
    }
    Ok(())
}
