//! The hub's HTTP side: the REST API under `/api/v1/` (`api.rs`,
//! `files.rs`, `runs.rs`, `tasks.rs`), the web UI (`ui.rs`), the relay to
//! task ports under `/tasks/<id>/` (`relay.rs`) and `/metrics`, served on
//! the gRPC listener ([`listen`]).
//!
//! Authentication is the gRPC side's: the same bearer tokens, checked by
//! the same [`Auth`], or the same token kept in an HttpOnly, SameSite=Lax
//! session cookie after `POST /api/v1/login`. Requests made with the
//! cookie that change anything must carry `X-DS-Request: 1`, which a
//! cross-site form cannot send and a cross-site script may not without a
//! CORS preflight the hub never grants (CSRF). The REST handlers call the
//! gRPC services' own methods, so every rule (what a token may see, what a
//! spec may hold) lives in one place.

// Handlers turn tonic::Status into responses; Status is large by design.
#![allow(clippy::result_large_err)]

pub(crate) mod api;
pub(crate) mod files;
pub mod listen;
pub(crate) mod relay;
pub(crate) mod runs;
pub(crate) mod tasks;
pub(crate) mod ui;

use std::sync::Arc;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::Serialize;
use tonic::Code;

use crate::auth::{Auth, Grant};
use crate::service::SyncService;
use crate::tasks::TaskHub;
use crate::tasks::service::TasksService;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "ds_session";
/// Largest request body the API reads (a task spec, a login).
pub(crate) const MAX_BODY: usize = 1 << 20;

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct Web {
    pub sync: SyncService,
    pub tasks: TasksService,
    pub hub: Arc<TaskHub>,
    pub auth: Arc<Auth>,
    /// The hub serves TLS (cookies get `Secure`).
    pub tls: bool,
    /// Wildcard-domain relay: `<id>.tasks.<domain>` reaches task `<id>`,
    /// and the session cookie is set for `<domain>`.
    pub tasks_domain: Option<String>,
    /// Idle connections to task ports.
    pub relay_pool: Arc<relay::Pool>,
    /// Relayed connections open, per token.
    pub relay_open: Arc<relay::OpenRelays>,
    /// Running tasks' records, for a moment.
    pub relay_records: Arc<relay::Records>,
}

/// A JSON error: `{"error": {"code": "...", "message": "..."}}`. Codes are
/// stable (gRPC's names in snake case, plus `bad_gateway`).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ds\""),
            );
        }
        r
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        let (status, code) = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::FailedPrecondition | Code::Aborted => {
                (StatusCode::CONFLICT, "failed_precondition")
            }
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "data_loss"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, s.message())
    }
}

impl From<crate::HubError> for ApiError {
    fn from(e: crate::HubError) -> ApiError {
        if let crate::HubError::Unreachable(m) = e {
            return ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", m);
        }
        crate::service::status(e).into()
    }
}

/// Who is calling: their token (to make gRPC calls as them) and its grant.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub token: String,
    pub grant: Grant,
}

impl Caller {
    /// A gRPC request carrying the caller's token.
    pub fn rpc<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = format!("Bearer {}", self.token).parse() {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Web {
    /// The caller of a request: a bearer token, else the session cookie
    /// (then, for a request that changes something, the CSRF header too).
    /// Runner tokens are refused: they may only attach.
    pub async fn caller(&self, method: &Method, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        self.authenticate(headers, !safe).await
    }

    /// The caller of a relayed request: the relayed app's own forms and
    /// scripts send the session cookie without the CSRF header, and
    /// SameSite=Lax keeps other sites' requests from carrying it.
    pub async fn caller_for_relay(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        self.authenticate(headers, false).await
    }

    async fn authenticate(&self, headers: &HeaderMap, csrf: bool) -> Result<Caller, ApiError> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("Bearer "))
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "unauthenticated",
                            "malformed authorization header (expected `Bearer TOKEN`)",
                        )
                    })
            })
            .transpose()?;
        let token = match bearer {
            Some(t) => t,
            None => {
                let Some(t) = cookie(headers, COOKIE) else {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "no token: send `Authorization: Bearer TOKEN`, or log in",
                    ));
                };
                if csrf && headers.get("x-ds-request").is_none_or(|v| v != "1") {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "permission_denied",
                        "a request with the session cookie that changes something must carry \
                         the header `X-DS-Request: 1` (cross-site request protection)",
                    ));
                }
                t.to_string()
            }
        };
        let probe = Caller {
            token,
            grant: Grant {
                admin: false,
                workspaces: vec![],
                comment: String::new(),
                runner: None,
            },
        };
        let grant = self.auth.check(&probe.rpc(())).await?;
        if grant.runner.is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "a runner token may only connect as its runner",
            ));
        }
        Ok(Caller {
            token: probe.token,
            grant,
        })
    }
}

/// The HTTP router.
pub(crate) fn router(web: Web) -> axum::Router {
    let pool = web.relay_pool.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            every.tick().await;
            pool.sweep();
        }
    });
    let by_host = axum::middleware::from_fn_with_state(web.clone(), relay::by_host);
    axum::Router::new()
        .merge(api::routes())
        .merge(files::routes())
        .merge(tasks::routes())
        .merge(runs::routes())
        .merge(relay::routes())
        .merge(ui::routes())
        .route("/metrics", axum::routing::get(metrics))
        .fallback(|| async { ApiError::not_found("no such page") })
        .layer(by_host)
        .with_state(web)
}

/// `GET /metrics`: Prometheus text format. Open, as scrapers expect (it
/// names no workspace, token or task).
async fn metrics(axum::extract::State(web): axum::extract::State<Web>) -> Response {
    let runners = web.hub.runners().len() as i64;
    let text = crate::metrics::METRICS.render(&[("ds_runners_connected", runners)]);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
