//! The REST API, `/api/v1/…`: JSON over the same services as gRPC. This
//! file: paging, login, workspaces, snapshots, runs; [`super::tasks`]:
//! tasks and runners; [`super::files`]: trees, files and diffs.
//!
//! Lists are JSON arrays, a page at a time: `?limit=N` (default 100, at
//! most 1000) and `?after=CURSOR`, the key of the last item of the previous
//! page; when there is more, the response carries
//! `Link: <…?after=…&limit=N>; rel="next"`. Errors are
//! `{"error": {"code", "message"}}` with the HTTP status that fits (see
//! [`super::ApiError`]). `GET /api/v1/openapi.json` describes it all.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ds_format::ObjectId;
use ds_format::snapshot::Snapshot;
use ds_store::refs::validate_workspace;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{ApiError, COOKIE, Caller, MAX_BODY, Web};

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn routes() -> axum::Router<Web> {
    axum::Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/workspaces", get(workspaces))
        .route("/api/v1/workspaces/{ws}", get(workspace))
        .route("/api/v1/workspaces/{ws}/snapshots", get(snapshots))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// `?limit=&after=` of every list.
#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    pub limit: Option<usize>,
    pub after: Option<String>,
}

const DEFAULT_PAGE: usize = 100;

impl Page {
    pub fn limit(&self) -> ApiResult<usize> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n) if (1..=crate::history::MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::bad_request(format!(
                "limit {n}: pages hold 1 to {} items",
                crate::history::MAX_PAGE
            ))),
        }
    }
}

/// A page of `items` as a JSON array, with a `Link` to the next page
/// when `next` (the last item's key) is given. `path` may carry the
/// list's other query parameters (already encoded).
pub(crate) fn page<T: Serialize>(
    path: &str,
    items: Vec<T>,
    next: Option<String>,
    limit: usize,
) -> Response {
    let mut r = Json(items).into_response();
    if let Some(after) = next {
        let join = if path.contains('?') { '&' } else { '?' };
        let link = format!(
            "<{path}{join}after={}&limit={limit}>; rel=\"next\"",
            percent(&after)
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert(http::header::LINK, v);
        }
    }
    r
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn percent(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Items after the one whose key is `after` (all of them when None).
pub(crate) fn after_key<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    after: &Option<String>,
) -> ApiResult<Vec<T>> {
    let Some(a) = after else { return Ok(items) };
    let Some(i) = items.iter().position(|t| &key(t) == a) else {
        return Err(ApiError::bad_request(format!(
            "cursor {a:?} is not in this list (a stale page cursor?)"
        )));
    };
    Ok(items.into_iter().skip(i + 1).collect())
}

pub(crate) fn take_page<T>(
    mut items: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(&key) } else { None };
    (items, next)
}

fn workspace_name(ws: &str) -> ApiResult<()> {
    validate_workspace(ws).map_err(|e| ApiError::bad_request(e.to_string()))
}

// ---- login ----

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
}

#[derive(Debug, Serialize)]
struct WhoAmI {
    admin: bool,
    workspaces: Vec<String>,
    comment: String,
    /// Set when tasks are relayed at `<id>.tasks.<domain>` too.
    tasks_domain: Option<String>,
}

fn who(web: &Web, c: &Caller) -> WhoAmI {
    WhoAmI {
        admin: c.grant.admin,
        workspaces: c.grant.workspaces.clone(),
        comment: c.grant.comment.clone(),
        tasks_domain: web.tasks_domain.clone(),
    }
}

/// `POST /api/v1/login {"token": …}`: checks the token and keeps it in the
/// session cookie (HttpOnly: no page script can read it; SameSite=Lax:
/// no other site's form or script sends it).
async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    Json(l): Json<Login>,
) -> ApiResult<Response> {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", l.token.trim()))
            .map_err(|_| ApiError::bad_request("a token is printable ASCII"))?,
    );
    let c = web.caller(&Method::GET, &h).await?;
    let secure = if web.tls { "; Secure" } else { "" };
    let domain = cookie_domain(&web, &headers);
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000{secure}{domain}",
        c.token
    );
    let mut r = Json(who(&web, &c)).into_response();
    r.headers_mut().insert(
        http::header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| ApiError::bad_request("bad token"))?,
    );
    Ok(r)
}

/// `; Domain=D` in wildcard-domain mode, when the hub is being reached at
/// D or under it (a browser refuses a cookie for another domain): the
/// task origins `<id>.tasks.D` then get the session cookie too.
fn cookie_domain(web: &Web, headers: &HeaderMap) -> String {
    let Some(d) = web.tasks_domain.as_deref() else {
        return String::new();
    };
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let d = d.to_ascii_lowercase();
    if host == d || host.ends_with(&format!(".{d}")) {
        format!("; Domain={d}")
    } else {
        String::new()
    }
}

async fn logout(State(web): State<Web>, headers: HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let domain = cookie_domain(&web, &headers);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{domain}"
    )) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    r
}

async fn whoami(State(web): State<Web>, m: Method, h: HeaderMap) -> ApiResult<Json<WhoAmI>> {
    Ok(Json(who(&web, &web.caller(&m, &h).await?)))
}

// ---- workspaces and snapshots ----

#[derive(Debug, Serialize)]
struct WorkspaceJson {
    name: String,
    /// The snapshot the hub's ref points at.
    snapshot: ObjectId,
}

async fn workspaces(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Query(p): Query<Page>,
) -> ApiResult<Response> {
    let c = web.caller(&m, &h).await?;
    let limit = p.limit()?;
    let mut all: Vec<WorkspaceJson> = web
        .sync
        .storage()
        .list_refs()
        .await?
        .into_iter()
        .filter(|(n, _)| c.grant.may_use(n))
        .map(|(name, snapshot)| WorkspaceJson { name, snapshot })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let all = match &p.after {
        Some(a) => all.into_iter().filter(|w| &w.name > a).collect(),
        None => all,
    };
    let (items, next) = take_page(all, limit, |w| w.name.clone());
    Ok(page("/api/v1/workspaces", items, next, limit))
}

/// The ref of a workspace the caller may see (others are not found).
pub(crate) async fn head(web: &Web, c: &Caller, ws: &str) -> ApiResult<ObjectId> {
    workspace_name(ws)?;
    let found = if c.grant.may_use(ws) {
        web.sync.storage().get_ref(ws).await?
    } else {
        None
    };
    found.ok_or_else(|| ApiError::not_found(format!("no workspace {ws:?} on this hub")))
}

async fn workspace(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(ws): Path<String>,
) -> ApiResult<Json<WorkspaceJson>> {
    let c = web.caller(&m, &h).await?;
    let snapshot = head(&web, &c, &ws).await?;
    Ok(Json(WorkspaceJson { name: ws, snapshot }))
}

#[derive(Debug, Serialize)]
pub(crate) struct SnapshotJson {
    id: ObjectId,
    workspace: String,
    parents: Vec<ObjectId>,
    /// Nanoseconds since the Unix epoch.
    time_ns: i64,
    message: String,
    hostname: String,
    source: String,
    metadata: BTreeMap<String, String>,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    /// Run records the snapshot carries.
    runs: Vec<ObjectId>,
}

pub(crate) fn snapshot_json(id: ObjectId, s: Snapshot) -> SnapshotJson {
    SnapshotJson {
        id,
        workspace: s.workspace,
        parents: s.parents,
        time_ns: s.time_ns,
        message: s.message,
        hostname: s.hostname,
        source: String::from_utf8_lossy(&s.source).into_owned(),
        metadata: s.metadata,
        files: s.stats.files,
        dirs: s.stats.dirs,
        symlinks: s.stats.symlinks,
        bytes: s.stats.bytes,
        runs: s.runs,
    }
}

fn object_id(s: &str) -> ApiResult<ObjectId> {
    s.parse::<ObjectId>()
        .map_err(|_| ApiError::bad_request(format!("{s:?} is not a snapshot id (64 hex digits)")))
}

async fn snapshots(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(ws): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Response> {
    let c = web.caller(&m, &h).await?;
    let limit = p.limit()?;
    let head = head(&web, &c, &ws).await?;
    let after = p.after.as_deref().map(object_id).transpose()?;
    let (items, more) = web.sync.log(head, after, limit).await?;
    let next = if more {
        items.last().map(|(id, _)| id.to_hex())
    } else {
        None
    };
    let items: Vec<SnapshotJson> = items
        .into_iter()
        .map(|(i, s)| snapshot_json(i, s))
        .collect();
    Ok(page(
        &format!("/api/v1/workspaces/{ws}/snapshots"),
        items,
        next,
        limit,
    ))
}

/// The OpenAPI description, written by hand next to the handlers.
async fn openapi() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}
