//! Browsing snapshots over REST: a snapshot, a directory's entries, a
//! file's bytes (streamed, with `Range`), the diff of two snapshots.
//!
//! `{snap}` is a snapshot id or `head` (the workspace's ref). Snapshot ids
//! are capabilities on the hub, as on the gRPC side: a caller who may use
//! the workspace may read any snapshot the hub holds by its id. Paths are
//! `/`-separated names, each checked as a tree name (no `..`, no empty
//! name, no NUL) before anything is read. File bytes are served as
//! `application/octet-stream` or `text/plain` (never HTML: a file from a
//! workspace must not run as a page of the hub), with `nosniff` and a
//! sandboxing CSP.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ds_format::ObjectId;
use ds_format::tree::{Entry, EntryData};

use crate::browse::Change;
use ds_format::{ObjectKind, tree::validate_name};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::api::{Page, after_key, head, page, percent, snapshot_json, take_page};
use super::{ApiError, Web};

type ApiResult<T> = Result<T, ApiError>;

/// Stored bytes of chunks read per step of a file download.
const WINDOW: u64 = 8 << 20;

pub(crate) fn routes() -> axum::Router<Web> {
    axum::Router::new()
        .route("/api/v1/workspaces/{ws}/snapshots/{snap}", get(snapshot))
        .route("/api/v1/workspaces/{ws}/snapshots/{snap}/tree", get(tree))
        .route(
            "/api/v1/workspaces/{ws}/snapshots/{snap}/files/{*path}",
            get(file),
        )
        .route("/api/v1/workspaces/{ws}/diff", get(diff))
}

/// The snapshot `snap` names in workspace `ws`.
async fn resolve(
    web: &Web,
    m: &Method,
    h: &HeaderMap,
    ws: &str,
    snap: &str,
) -> ApiResult<ObjectId> {
    let c = web.caller(m, h).await?;
    let head = head(web, &c, ws).await?;
    if snap == "head" {
        return Ok(head);
    }
    snap.parse::<ObjectId>().map_err(|_| {
        ApiError::bad_request(format!(
            "{snap:?} is not a snapshot id (64 hex digits) or head"
        ))
    })
}

/// A `/`-separated path as checked tree names.
fn names(path: &str) -> ApiResult<Vec<Vec<u8>>> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(|p| {
            validate_name(p.as_bytes())
                .map(|()| p.as_bytes().to_vec())
                .map_err(|e| ApiError::bad_request(format!("path {path:?}: {e}")))
        })
        .collect()
}

async fn snapshot(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path((ws, snap)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = resolve(&web, &m, &h, &ws, &snap).await?;
    let s = web.sync.snapshot(id).await?;
    Ok(Json(snapshot_json(id, s)).into_response())
}

#[derive(Debug, Serialize)]
struct EntryJson {
    name: String,
    /// file, dir or symlink.
    kind: &'static str,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// Recorded owner (absent in snapshots made before ds recorded owners).
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
}

fn entry_json(e: &Entry) -> EntryJson {
    EntryJson {
        name: String::from_utf8_lossy(&e.name).into_owned(),
        kind: e.data.kind_name(),
        size: e.size(),
        mode: e.mode,
        mtime_ns: e.mtime_ns,
        target: match &e.data {
            EntryData::Symlink(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        },
        uid: e.owner.map(|o| o.uid),
        gid: e.owner.map(|o| o.gid),
    }
}

#[derive(Debug, Deserialize)]
struct TreeQuery {
    #[serde(default)]
    path: String,
    limit: Option<usize>,
    after: Option<String>,
}

/// The entry at `path` in snapshot `id`.
async fn entry_at(web: &Web, id: ObjectId, path: &str) -> ApiResult<Entry> {
    let p = names(path)?;
    let s = web.sync.snapshot(id).await?;
    web.sync
        .lookup(s.root, &p)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no {path:?} in snapshot {}", id.short())))
}

/// `GET …/tree?path=P`: the entries of directory P, by name.
async fn tree(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path((ws, snap)): Path<(String, String)>,
    Query(q): Query<TreeQuery>,
) -> ApiResult<Response> {
    let id = resolve(&web, &m, &h, &ws, &snap).await?;
    let pg = Page {
        limit: q.limit,
        after: q.after.clone(),
    };
    let limit = pg.limit()?;
    let EntryData::Dir(d) = entry_at(&web, id, &q.path).await?.data else {
        return Err(ApiError::bad_request(format!(
            "{:?} is not a directory",
            q.path
        )));
    };
    let all: Vec<EntryJson> = web.sync.list_dir(d).await?.iter().map(entry_json).collect();
    let all = after_key(all, |e| e.name.clone(), &q.after)?;
    let (items, next) = take_page(all, limit, |e| e.name.clone());
    Ok(page(
        &format!(
            "/api/v1/workspaces/{ws}/snapshots/{snap}/tree?path={}",
            percent(&q.path)
        ),
        items,
        next,
        limit,
    ))
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    #[serde(default)]
    download: bool,
}

/// The byte range a `Range` header asks for (one range), or None for all.
fn range(h: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = h.get(header::RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let spec = v.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(()); // one range only
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (size.saturating_sub(n), size)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size),
        (s, e) => {
            let e: u64 = e.parse().map_err(|_| ())?;
            (s.parse().map_err(|_| ())?, e.saturating_add(1).min(size))
        }
    };
    if start >= end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// `GET …/files/PATH`: the file's bytes, streamed chunk by chunk (each
/// checked against its id), with `Range` support.
async fn file(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path((ws, snap, path)): Path<(String, String, String)>,
    Query(q): Query<FileQuery>,
) -> ApiResult<Response> {
    let id = resolve(&web, &m, &h, &ws, &snap).await?;
    let f = match &entry_at(&web, id, &path).await?.data {
        EntryData::File(f) => *f,
        other => {
            return Err(ApiError::bad_request(format!(
                "{path:?} is a {}, not a file",
                other.kind_name()
            )));
        }
    };
    let chunks = web.sync.file_chunks(f).await?;
    let (start, end, partial) = match range(&h, f.size) {
        Ok(None) => (0, f.size, false),
        Ok(Some((s, e))) => (s, e, true),
        Err(()) => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "out_of_range",
                format!(
                    "unsatisfiable Range for a file of {} bytes (one range: bytes=A-B)",
                    f.size
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", f.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    // The chunks covering [start, end), with each one's offset in the file.
    let mut pos = 0u64;
    let mut want: Vec<(ObjectId, u64, u64)> = Vec::new();
    for (cid, len) in chunks {
        if pos + len > start && pos < end {
            want.push((cid, pos, len));
        }
        pos += len;
    }
    let sync = web.sync.clone();
    let body = futures::stream::unfold((0usize, want), move |(i, want)| {
        let sync = sync.clone();
        async move {
            if i >= want.len() {
                return None;
            }
            let mut j = i;
            let mut bytes = 0;
            while j < want.len() && (j == i || bytes < WINDOW) {
                bytes += want[j].2;
                j += 1;
            }
            let ids: Vec<ObjectId> = want[i..j].iter().map(|w| w.0).collect();
            let out = match sync.read_objects(&ids, ObjectKind::Chunk).await {
                Err(s) => Err(std::io::Error::other(s.message().to_string())),
                Ok(raws) => {
                    let mut buf = Vec::with_capacity(bytes as usize);
                    for ((_, off, len), raw) in want[i..j].iter().zip(raws) {
                        let s = start.saturating_sub(*off) as usize;
                        let e = (end.min(off + len) - off) as usize;
                        buf.extend_from_slice(&raw[s.min(raw.len())..e.min(raw.len())]);
                    }
                    Ok(Bytes::from(buf))
                }
            };
            Some((out, (j, want)))
        }
    });
    let name = path.rsplit('/').next().unwrap_or("file").to_string();
    let text = looks_like_text(&name);
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let hs = r.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if text && !q.download {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        }),
    );
    hs.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    hs.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hs.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    hs.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", f.root.to_hex())) {
        hs.insert(header::ETAG, v);
    }
    if partial
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, f.size))
    {
        hs.insert(header::CONTENT_RANGE, v);
    }
    if q.download {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            hs.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(r)
}

/// Files shown as text in a browser (by name: the content is not read
/// twice to guess).
fn looks_like_text(name: &str) -> bool {
    let ext = name.rsplit_once('.').map(|p| p.1.to_ascii_lowercase());
    matches!(
        ext.as_deref(),
        Some(
            "txt"
                | "md"
                | "py"
                | "r"
                | "sh"
                | "csv"
                | "tsv"
                | "json"
                | "yaml"
                | "yml"
                | "toml"
                | "cfg"
                | "ini"
                | "log"
                | "ipynb"
                | "rs"
                | "js"
                | "ts"
                | "sql"
                | "c"
                | "h"
                | "cpp"
                | "java"
                | "go"
                | "rb"
                | "jl"
                | "html"
                | "css"
                | "xml"
        )
    ) || !name.contains('.')
}

#[derive(Debug, Deserialize)]
struct DiffQuery {
    /// Default: the first parent of `to`.
    from: Option<String>,
    /// Default: head.
    to: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /api/v1/workspaces/{ws}/diff?from=A&to=B`: the changes, by path.
async fn diff(
    State(web): State<Web>,
    m: Method,
    h: HeaderMap,
    Path(ws): Path<String>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Response> {
    let to = resolve(&web, &m, &h, &ws, q.to.as_deref().unwrap_or("head")).await?;
    let pg = Page {
        limit: q.limit,
        after: q.after.clone(),
    };
    let limit = pg.limit()?;
    let to_s = web.sync.snapshot(to).await?;
    let from: Option<ObjectId> = match &q.from {
        Some(f) => Some(resolve(&web, &m, &h, &ws, f).await?),
        None => to_s.parents.first().copied(),
    };
    let (changes, truncated) = match from {
        Some(f) => {
            let from_root = web.sync.snapshot(f).await?.root;
            web.sync.diff(from_root, to_s.root).await?
        }
        // The first snapshot: everything at its top is added.
        None => {
            let added = web.sync.list_dir(to_s.root).await?;
            let v = added
                .iter()
                .map(|e| Change {
                    path: String::from_utf8_lossy(&e.name).into_owned(),
                    change: "added",
                    kind_before: None,
                    kind_after: Some(e.data.kind_name()),
                    size_before: None,
                    size_after: Some(e.size()),
                })
                .collect();
            (v, false)
        }
    };
    let all = after_key(changes, |c| c.path.clone(), &q.after)?;
    let (items, next) = take_page(all, limit, |c| c.path.clone());
    let from_q = from.map(|f| f.to_hex()).unwrap_or_default();
    let mut r = page(
        &format!(
            "/api/v1/workspaces/{ws}/diff?from={from_q}&to={}",
            to.to_hex()
        ),
        items,
        next,
        limit,
    );
    if truncated {
        r.headers_mut()
            .insert("x-ds-truncated", HeaderValue::from_static("true"));
    }
    Ok(r)
}
