//! The REST API, `/api/v1/…`: JSON over the same services as gRPC.
//!
//! Lists are JSON arrays, a page at a time: `?limit=N` (default 100, at
//! most 1000) and `?after=CURSOR`, the key of the last item of the previous
//! page; when there is more, the response carries
//! `Link: <…?after=…&limit=N>; rel="next"`. Errors are
//! `{"error": {"code", "message"}}` with the HTTP status that fits (see
//! [`super::ApiError`]). `GET /api/v1/openapi.json` describes it all.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ds_format::ObjectId;
use ds_format::run::Run;
use ds_format::snapshot::Snapshot;
use ds_proto::json::{RunnerJson, TaskJson};
use ds_proto::runner::tasks_server::Tasks;
use ds_proto::runner::{
    CancelRequest, GetTaskRequest, ListRunnersRequest, ListTasksRequest, LogsRequest,
    SubmitRequest, TaskSpec,
};
use ds_store::refs::validate_workspace;
use futures::StreamExt;
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
        .route("/api/v1/workspaces/{ws}/runs", get(runs))
        .route("/api/v1/tasks", get(tasks).post(submit))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/tasks/{id}/cancel", post(cancel))
        .route("/api/v1/tasks/{id}/logs", get(logs))
        .route("/api/v1/runners", get(runners))
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
pub(crate) fn page<T: Serialize>(path: &str, items: Vec<T>, next: Option<String>, limit: usize) -> Response {
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
pub(crate) fn after_key<T>(items: Vec<T>, key: impl Fn(&T) -> String, after: &Option<String>) -> ApiResult<Vec<T>> {
    let Some(a) = after else { return Ok(items) };
    let Some(i) = items.iter().position(|t| &key(t) == a) else {
        return Err(ApiError::bad_request(format!(
            "cursor {a:?} is not in this list (a stale page cursor?)"
        )));
    };
    Ok(items.into_iter().skip(i + 1).collect())
}

pub(crate) fn take_page<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
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
    s.parse::<ObjectId>().map_err(|_| ApiError::bad_request(format!("{s:?} is not a snapshot id (64 hex digits)")))
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
    let next = if more { items.last().map(|(id, _)| id.to_hex()) } else { None };
    let items: Vec<SnapshotJson> = items.into_iter().map(|(i, s)| snapshot_json(i, s)).collect();
    Ok(page(&format!("/api/v1/workspaces/{ws}/snapshots"), items, next, limit))
}

// ---- runs ----

#[derive(Debug, Serialize)]
struct RunJson {
    id: ObjectId,
    /// The snapshot that carries the run (its outputs are in it).
    snapshot: ObjectId,
    snapshot_time_ns: i64,
    #[serde(flatten)]
    run: Run,
}

async fn runs(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(ws): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Response> {
    let c = web.caller(&m, &h).await?;
    let limit = p.limit()?;
    let head = head(&web, &c, &ws).await?;
    let all = web.sync.runs_of(vec![head]).await?;
    let all = after_key(all, |r| r.2.to_hex(), &p.after)?;
    let (window, next) = take_page(all, limit, |r| r.2.to_hex());
    let records = web.sync.run_records(&window).await?;
    let items: Vec<RunJson> = window
        .iter()
        .zip(records)
        .map(|(&(snapshot, t, id), run)| RunJson {
            id,
            snapshot,
            snapshot_time_ns: t,
            run,
        })
        .collect();
    Ok(page(&format!("/api/v1/workspaces/{ws}/runs"), items, next, limit))
}

// ---- tasks and runners ----

#[derive(Debug, Deserialize)]
struct TaskQuery {
    workspace: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

async fn tasks(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Query(q): Query<TaskQuery>,
) -> ApiResult<Response> {
    let c = web.caller(&m, &h).await?;
    let p = Page {
        limit: q.limit,
        after: q.after.clone(),
    };
    let limit = p.limit()?;
    // Tasks are listed newest first; a page after task T is the tasks
    // submitted before it (ids sort by submission).
    let want = match &q.after {
        None => limit + 1,
        // Enough to reach past the cursor; ListTasks has no cursor of its own.
        Some(_) => 100_000,
    };
    let reply = web
        .tasks
        .list_tasks(c.rpc(ListTasksRequest {
            workspace: q.workspace.clone().unwrap_or_default(),
            limit: want as u32,
        }))
        .await?
        .into_inner();
    let all: Vec<TaskJson> = reply.tasks.iter().map(TaskJson::from).collect();
    let all = match &q.after {
        Some(a) => all.into_iter().filter(|t| &t.id < a).collect(),
        None => all,
    };
    let (items, next) = take_page(all, limit, |t| t.id.clone());
    let path = match &q.workspace {
        Some(w) => format!("/api/v1/tasks?workspace={}", percent(w)),
        None => "/api/v1/tasks".to_string(),
    };
    Ok(page(&path, items, next, limit))
}

/// A task to submit: `ds run`'s options as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitJson {
    workspace: String,
    command: Vec<String>,
    #[serde(default)]
    executor: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    repo: String,
    #[serde(default)]
    git_ref: String,
    #[serde(default)]
    port: u32,
    #[serde(default)]
    keep_prefix: bool,
}

async fn submit(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Json(s): Json<SubmitJson>,
) -> ApiResult<Response> {
    let c = web.caller(&m, &h).await?;
    let spec = TaskSpec {
        workspace: s.workspace,
        command: s.command,
        executor: s.executor,
        image: s.image,
        labels: s.labels.into_iter().collect(),
        retries: s.retries,
        repo: s.repo,
        git_ref: s.git_ref,
        env: s.env.into_iter().collect(),
        port: s.port,
        keep_prefix: s.keep_prefix,
    };
    let info = web
        .tasks
        .submit(c.rpc(SubmitRequest { spec: Some(spec) }))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(TaskJson::from(&info))).into_response())
}

async fn task(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskJson>> {
    let c = web.caller(&m, &h).await?;
    let info = web
        .tasks
        .get_task(c.rpc(GetTaskRequest { task: id }))
        .await?
        .into_inner();
    Ok(Json(TaskJson::from(&info)))
}

async fn cancel(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskJson>> {
    let c = web.caller(&m, &h).await?;
    let info = web
        .tasks
        .cancel(c.rpc(CancelRequest { task: id }))
        .await?
        .into_inner();
    Ok(Json(TaskJson::from(&info)))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    follow: bool,
}

#[derive(Debug, Serialize)]
struct LineJson {
    n: u64,
    /// stdout, stderr or runner.
    stream: &'static str,
    text: String,
    time_ms: u64,
}

fn lines_json(r: &ds_proto::runner::LogsReply) -> Vec<LineJson> {
    r.lines
        .iter()
        .enumerate()
        .map(|(i, l)| LineJson {
            n: r.first + i as u64,
            stream: match l.stream {
                1 => "stdout",
                2 => "stderr",
                _ => "runner",
            },
            text: String::from_utf8_lossy(&l.text).into_owned(),
            time_ms: l.time_ms,
        })
        .collect()
}

/// `GET /api/v1/tasks/{id}/logs?from=N`: the lines so far, as a JSON
/// array. With `follow=true`: a server-sent event stream, one `line` event
/// per line (its JSON) until the task ends, then an `end` event with the
/// task.
async fn logs(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let c = web.caller(&m, &h).await?;
    let mut stream = web
        .tasks
        .logs(c.rpc(LogsRequest {
            task: id,
            from: q.from,
            follow: q.follow,
        }))
        .await?
        .into_inner();
    if !q.follow {
        let mut all = Vec::new();
        while let Some(r) = stream.next().await {
            all.extend(lines_json(&r?));
        }
        return Ok(Json(all).into_response());
    }
    let events = stream.flat_map(|r| {
        let evs: Vec<Result<Event, Infallible>> = match r {
            Err(s) => vec![Ok(Event::default()
                .event("error")
                .json_data(serde_json::json!({"code": format!("{:?}", s.code()), "message": s.message()}))
                .unwrap_or_default())],
            Ok(r) => {
                let mut v: Vec<Result<Event, Infallible>> = lines_json(&r)
                    .into_iter()
                    .map(|l| Ok(Event::default().event("line").json_data(l).unwrap_or_default()))
                    .collect();
                if let Some(t) = &r.ended {
                    v.push(Ok(Event::default()
                        .event("end")
                        .json_data(TaskJson::from(t))
                        .unwrap_or_default()));
                }
                v
            }
        };
        futures::stream::iter(evs)
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn runners(State(web): State<Web>, m: Method, h: HeaderMap) -> ApiResult<Json<Vec<RunnerJson>>> {
    let c = web.caller(&m, &h).await?;
    let r = web
        .tasks
        .list_runners(c.rpc(ListRunnersRequest {}))
        .await?
        .into_inner();
    Ok(Json(r.runners.iter().map(RunnerJson::from).collect()))
}

/// The OpenAPI description, written by hand next to the handlers.
async fn openapi() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}
