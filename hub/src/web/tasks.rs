//! Tasks and runners over REST: list, submit, show, cancel, logs (JSON,
//! or server-sent events while the task runs), runners — each a call of
//! the gRPC task service with the caller's token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ds_proto::json::{RunnerJson, TaskJson};
use ds_proto::runner::tasks_server::Tasks;
use ds_proto::runner::{
    CancelRequest, GetTaskRequest, ListRunnersRequest, ListTasksRequest, LogsRequest,
    SubmitRequest, TaskSpec,
};
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::api::{Page, page, percent, take_page};
use super::{ApiError, MAX_BODY, Web};

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn routes() -> axum::Router<Web> {
    axum::Router::new()
        .route("/api/v1/tasks", get(tasks).post(submit))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/tasks/{id}/cancel", post(cancel))
        .route("/api/v1/tasks/{id}/logs", get(logs))
        .route("/api/v1/runners", get(runners))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

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
    /// `NAME[@SNAP]:PATH`, as `ds run --dataset` takes them.
    #[serde(default)]
    datasets: Vec<String>,
}

async fn submit(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Json(s): Json<SubmitJson>,
) -> ApiResult<Response> {
    let c = web.caller(&m, &h).await?;
    let datasets = s
        .datasets
        .iter()
        .map(|d| ds_proto::mounts::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tonic::Status::invalid_argument(e.0))?;
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
        datasets,
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
                .json_data(
                    serde_json::json!({"code": format!("{:?}", s.code()), "message": s.message()}),
                )
                .unwrap_or_default())],
            Ok(r) => {
                let mut v: Vec<Result<Event, Infallible>> = lines_json(&r)
                    .into_iter()
                    .map(|l| {
                        Ok(Event::default()
                            .event("line")
                            .json_data(l)
                            .unwrap_or_default())
                    })
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

async fn runners(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
) -> ApiResult<Json<Vec<RunnerJson>>> {
    let c = web.caller(&m, &h).await?;
    let r = web
        .tasks
        .list_runners(c.rpc(ListRunnersRequest {}))
        .await?
        .into_inner();
    Ok(Json(r.runners.iter().map(RunnerJson::from).collect()))
}
