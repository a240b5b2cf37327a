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

/// How long a client has to send an HTTP/1.1 request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Routes a request by content type; counts it and its bytes.
#[derive(Clone)]
struct Dispatch {
    grpc: Routes,
    http: axum::Router,
    peer: SocketAddr,
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
        req.extensions_mut().insert(axum::extract::ConnectInfo(self.peer));
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
        if surface == Surface::Grpc {
            let grpc = self.grpc.clone();
            let path = req.uri().path().to_string();
            Box::pin(async move {
                let r = grpc.oneshot(req).await?;
                // Only methods that exist are named (the path is the
                // client's to choose; the registry must not grow with it).
                let unknown = r
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|s| s == "12");
                METRICS.inc(
                    "ds_grpc_requests_total",
                    &[("method", if unknown { "unknown" } else { path.as_str() })],
                );
                Ok(count_out(r.map(Body::new)))
            })
        } else {
            let http = self.http.clone();
            Box::pin(async move {
                let r = http.oneshot(req).await?;
                METRICS.inc(
                    "ds_http_requests_total",
                    &[
                        ("surface", surface.name()),
                        ("code", r.status().as_str()),
                    ],
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
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    // HTTP/2's default 64 KiB stream window caps a pack upload at a few
    // windows per round trip; packs are tens of MiB.
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(ds_proto::STREAM_WINDOW)
        .initial_connection_window_size(ds_proto::CONNECTION_WINDOW)
        .max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
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
        let svc = Dispatch {
            grpc: grpc.clone(),
            http: http.clone(),
            peer,
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let r = match tls {
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await
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
