//! Runs, models and provenance over REST: the runs in a workspace's
//! history (a page reads only its own records), one run with its inputs
//! and outputs resolved to content ids in the snapshot that carries it,
//! the difference of two runs, and models (runs labelled as one) with
//! their versions, as `ds runs`, `ds run show`, `ds runs diff` and
//! `ds models` show them.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use ds_format::ObjectId;
use ds_format::run::Run;
use ds_format::tree::EntryData;
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{Page, after_key, head, page, take_page};
use super::{ApiError, Web};

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn routes() -> axum::Router<Web> {
    axum::Router::new()
        .route("/api/v1/workspaces/{ws}/runs", get(runs))
        .route("/api/v1/workspaces/{ws}/runs/diff", get(diff))
        .route("/api/v1/workspaces/{ws}/runs/{id}", get(run))
        .route("/api/v1/workspaces/{ws}/models", get(models))
}

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
    Ok(page(
        &format!("/api/v1/workspaces/{ws}/runs"),
        items,
        next,
        limit,
    ))
}

/// The run whose id is `spec` (or starts with it, when that is unique).
async fn find(
    web: &Web,
    m: &Method,
    h: &HeaderMap,
    ws: &str,
    spec: &str,
) -> ApiResult<(ObjectId, i64, ObjectId, Run)> {
    let c = web.caller(m, h).await?;
    let head = head(web, &c, ws).await?;
    let spec = spec.to_ascii_lowercase();
    if spec.len() < 4 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "{spec:?} is not a run id (hex digits, at least 4)"
        )));
    }
    let all = web.sync.runs_of(vec![head]).await?;
    let hits: Vec<_> = all
        .iter()
        .filter(|r| r.2.to_hex().starts_with(&spec))
        .collect();
    let hit = match hits.as_slice() {
        [one] => **one,
        [] => return Err(ApiError::not_found(format!("no run {spec} in {ws}"))),
        _ => {
            return Err(ApiError::bad_request(format!(
                "{spec} names {} runs in {ws}: give more of the id",
                hits.len()
            )));
        }
    };
    let run = web
        .sync
        .run_records(&[hit])
        .await?
        .pop()
        .expect("one record");
    Ok((hit.0, hit.1, hit.2, run))
}

/// A path the run declared, resolved in the snapshot that carries it.
#[derive(Debug, Serialize)]
struct FileJson {
    path: String,
    /// file, dir or symlink; null: not in the snapshot.
    kind: Option<&'static str>,
    /// The content's id (a file's manifest root, a directory's tree root).
    content: Option<ObjectId>,
    size: Option<u64>,
}

#[derive(Debug, Serialize)]
struct RunShowJson {
    #[serde(flatten)]
    listed: RunJson,
    input_files: Vec<FileJson>,
    output_files: Vec<FileJson>,
}

async fn resolve(
    web: &Web,
    root: ds_format::tree::DirRef,
    paths: &[String],
) -> ApiResult<Vec<FileJson>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let names: Vec<Vec<u8>> = p
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let bad = names
            .iter()
            .any(|n| ds_format::tree::validate_name(n).is_err());
        let e = if bad || names.is_empty() {
            None
        } else {
            web.sync.lookup(root, &names).await?
        };
        out.push(FileJson {
            path: p.clone(),
            kind: e.as_ref().map(|e| e.data.kind_name()),
            content: e.as_ref().and_then(|e| match &e.data {
                EntryData::File(f) => Some(f.root),
                EntryData::Dir(d) => Some(d.root),
                _ => None,
            }),
            size: e.as_ref().map(|e| e.size()),
        });
    }
    Ok(out)
}

/// `GET …/runs/{id}`: the run, with its inputs and outputs resolved.
async fn run(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path((ws, id)): Path<(String, String)>,
) -> ApiResult<Json<RunShowJson>> {
    let (snapshot, t, id, run) = find(&web, &m, &h, &ws, &id).await?;
    let root = web.sync.snapshot(snapshot).await?.root;
    let input_files = resolve(&web, root, &run.inputs).await?;
    let output_files = resolve(&web, root, &run.outputs).await?;
    Ok(Json(RunShowJson {
        listed: RunJson {
            id,
            snapshot,
            snapshot_time_ns: t,
            run,
        },
        input_files,
        output_files,
    }))
}

#[derive(Debug, Deserialize)]
struct DiffQuery {
    a: String,
    b: String,
}

#[derive(Debug, Serialize)]
struct ValueDiff {
    name: String,
    a: Option<Value>,
    b: Option<Value>,
    changed: bool,
}

fn values(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<ValueDiff> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .map(|k| ValueDiff {
            name: k.clone(),
            a: a.get(k).cloned(),
            b: b.get(k).cloned(),
            changed: a.get(k) != b.get(k),
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct RunsDiffJson {
    a: ObjectId,
    b: ObjectId,
    parameters: Vec<ValueDiff>,
    metrics: Vec<ValueDiff>,
}

/// `GET …/runs/diff?a=ID&b=ID`: two runs' parameters and metrics side by side.
async fn diff(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(ws): Path<String>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<RunsDiffJson>> {
    let (_, _, a, ra) = find(&web, &m, &h, &ws, &q.a).await?;
    let (_, _, b, rb) = find(&web, &m, &h, &ws, &q.b).await?;
    Ok(Json(RunsDiffJson {
        a,
        b,
        parameters: values(&ra.parameters, &rb.parameters),
        metrics: values(&ra.metrics, &rb.metrics),
    }))
}

#[derive(Debug, Serialize)]
struct VersionJson {
    version: u32,
    run: ObjectId,
    name: String,
    snapshot: ObjectId,
    recorded_ns: i64,
    files: Vec<String>,
    metrics: BTreeMap<String, Value>,
}

#[derive(Debug, Serialize)]
struct ModelJson {
    name: String,
    versions: Vec<VersionJson>,
}

/// `GET …/models`: every model in the workspace's history, its versions
/// oldest first (the CLI's `NAME@V` numbering). Reads every run record.
async fn models(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(ws): Path<String>,
) -> ApiResult<Json<Vec<ModelJson>>> {
    let c = web.caller(&m, &h).await?;
    let head = head(&web, &c, &ws).await?;
    let all = web.sync.runs_of(vec![head]).await?;
    let records = web.sync.run_records(&all).await?;
    /// A run that made a version of a model.
    struct Made<'a> {
        snapshot_time_ns: i64,
        snapshot: ObjectId,
        id: ObjectId,
        run: &'a Run,
        files: Vec<String>,
    }
    let mut by: BTreeMap<String, Vec<Made<'_>>> = BTreeMap::new();
    for (&(snapshot, snapshot_time_ns, id), run) in all.iter().zip(&records) {
        for (name, files) in run.models() {
            by.entry(name.to_string()).or_default().push(Made {
                snapshot_time_ns,
                snapshot,
                id,
                run,
                files,
            });
        }
    }
    Ok(Json(
        by.into_iter()
            .map(|(name, mut v)| {
                v.sort_by_key(|x| (x.run.recorded_ns, x.snapshot_time_ns, x.id));
                v.dedup_by_key(|x| x.id);
                ModelJson {
                    name,
                    versions: v
                        .into_iter()
                        .enumerate()
                        .map(|(i, x)| VersionJson {
                            version: i as u32 + 1,
                            run: x.id,
                            name: x.run.name.clone(),
                            snapshot: x.snapshot,
                            recorded_ns: x.run.recorded_ns,
                            files: x.files,
                            metrics: x.run.metrics.clone(),
                        })
                        .collect(),
                }
            })
            .collect(),
    ))
}
