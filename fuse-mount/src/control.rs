//! The control protocol of a read-write mount, typed and versioned.
//!
//! Why a socket: only the process serving a mount knows its dirty layer,
//! so `ds snapshot MOUNTPOINT` (or any other process) asks it to snapshot
//! itself. A read-write mount of workspace W registers under
//! `STORE/mounts/W/` (see `ds_store::layout`): `mountpoint` (its canonical
//! path), `pid`, and `ctl.sock`.
//!
//! Wire format, one exchange per connection: one JSON [`Request`] line
//! (at most [`MAX_REQUEST`] bytes), one JSON [`Reply`] line:
//! `{"version":1,"op":"snapshot","message":"...","metadata":{...}}` →
//! `{"ok":{...Committed...}}` or `{"error":"..."}`. A request with another
//! `version` is refused with an error naming both versions.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use ds_format::ObjectId;
use ds_store::layout::Layout;
use ds_store::vfs::CommitReport;
use serde::{Deserialize, Serialize};

use crate::MountError;

/// The protocol version this build speaks.
pub const PROTOCOL: u64 = 1;
/// The longest request line a mount reads.
pub const MAX_REQUEST: u64 = 1 << 20;
/// The longest reply line a client reads.
const MAX_REPLY: u64 = 1 << 20;

/// A request, with its protocol version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub version: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// What a client asks of a mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Snapshot the mount into its workspace.
    Snapshot {
        #[serde(default)]
        message: String,
        #[serde(default)]
        metadata: BTreeMap<String, String>,
        /// Run records to carry (a client's pick of `.ds/runs/*.json`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        runs: Vec<ds_store::format::run::Run>,
    },
}

/// A mount's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Box<Committed>),
    Error(String),
}

/// What a snapshot of a live mount did (ids are lowercase hex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    pub id: ObjectId,
    pub workspace: String,
    pub parent: Option<ObjectId>,
    pub root: ObjectId,
    pub time_ns: i64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files whose content changed (re-chunked around their dirty ranges).
    pub files_rechunked: u64,
    /// Bytes read to re-chunk them.
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub bytes_added_uncompressed: u64,
    pub objects_added: u64,
    pub packs_written: u64,
    pub seconds: f64,
    /// Ids of the run records the snapshot carries.
    #[serde(default)]
    pub runs: Vec<ObjectId>,
}

impl Committed {
    pub fn new(r: &CommitReport, seconds: f64) -> Committed {
        let s = &r.snapshot;
        Committed {
            id: r.id,
            workspace: s.workspace.clone(),
            parent: r.parent,
            root: s.root.root,
            time_ns: s.time_ns,
            files: s.stats.files,
            dirs: s.stats.dirs,
            symlinks: s.stats.symlinks,
            bytes: s.stats.bytes,
            files_rechunked: r.files_rechunked,
            bytes_read: r.bytes_read,
            bytes_added: r.written.stored_bytes,
            bytes_added_uncompressed: r.written.raw_bytes,
            objects_added: r.written.objects,
            packs_written: r.written.packs,
            seconds,
            runs: s.runs.clone(),
        }
    }
}

/// A registered read-write mount, as another process finds it.
#[derive(Debug, Clone)]
pub struct Registered {
    pub workspace: String,
    /// `STORE/mounts/W/`.
    pub dir: PathBuf,
    pub pid: Option<u32>,
}

impl Registered {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }
}

/// The read-write mount of a workspace at `path` in the store at `store`,
/// if one is live there (a registration a killed mount left names a plain
/// directory, which is not mounted, and is ignored).
pub fn find(store: &Path, path: &Path) -> Option<Registered> {
    let canon = fs::canonicalize(path).ok()?;
    crate::mount_device(&canon)?;
    for e in fs::read_dir(Layout::new(store).mounts()).ok()?.flatten() {
        let dir = e.path();
        if let Ok(mp) = fs::read(dir.join("mountpoint"))
            && mp == canon.as_os_str().as_bytes()
            && dir.join("ctl.sock").exists()
        {
            let pid = fs::read_to_string(dir.join("pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            return Some(Registered {
                workspace: e.file_name().to_string_lossy().into_owned(),
                dir,
                pid,
            });
        }
    }
    None
}

/// Asks the mount process behind `m` to snapshot itself.
pub fn request_snapshot(
    m: &Registered,
    message: &str,
    metadata: BTreeMap<String, String>,
    runs: Vec<ds_store::format::run::Run>,
) -> Result<Committed, MountError> {
    let sock = m.socket();
    let fail = |why: String| MountError::Control {
        path: sock.clone(),
        why,
    };
    let mut conn =
        UnixStream::connect(&sock).map_err(|e| fail(format!("reaching the mount process: {e}")))?;
    let req = Request {
        version: PROTOCOL,
        op: Op::Snapshot {
            message: message.into(),
            metadata,
            runs,
        },
    };
    let mut line = serde_json::to_vec(&req).map_err(|e| fail(e.to_string()))?;
    line.push(b'\n');
    conn.write_all(&line)
        .map_err(|e| fail(format!("sending the request: {e}")))?;
    let mut reply = String::new();
    BufReader::new((&conn).take(MAX_REPLY))
        .read_line(&mut reply)
        .map_err(|e| fail(format!("reading the reply: {e}")))?;
    match serde_json::from_str::<Reply>(&reply) {
        Ok(Reply::Ok(c)) => Ok(*c),
        Ok(Reply::Error(e)) => Err(MountError::Refused(format!(
            "snapshot of the mount failed: {e}"
        ))),
        Err(e) => Err(fail(format!(
            "the mount process replied {:?}: {e}",
            reply.trim_end()
        ))),
    }
}

/// Reads one request from `conn`, answers it with `answer`, and writes
/// the reply.
pub(crate) fn serve_one(
    conn: &UnixStream,
    answer: impl FnOnce(Op) -> Result<Committed, MountError>,
) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(conn.take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match parse(&line) {
        Ok(op) => match answer(op) {
            Ok(c) => Reply::Ok(Box::new(c)),
            Err(e) => Reply::Error(e.to_string()),
        },
        Err(e) => Reply::Error(e.to_string()),
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    let mut w = conn;
    w.write_all(&out)
}

/// A request line's operation, if its version is ours.
fn parse(line: &str) -> Result<Op, MountError> {
    #[derive(Deserialize)]
    struct Version {
        version: Option<u64>,
    }
    let v: Version = serde_json::from_str(line)
        .map_err(|e| MountError::BadRequest(format!("bad request: {e}")))?;
    if v.version != Some(PROTOCOL) {
        return Err(MountError::BadRequest(format!(
            "protocol version {} not supported (want {PROTOCOL})",
            v.version.map_or("none".into(), |n| n.to_string())
        )));
    }
    let r: Request = serde_json::from_str(line)
        .map_err(|e| MountError::BadRequest(format!("bad request: {e}")))?;
    Ok(r.op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_wire_shape() {
        let r = Request {
            version: 1,
            op: Op::Snapshot {
                message: "m".into(),
                metadata: BTreeMap::from([("k".into(), "v".into())]),
                runs: Vec::new(),
            },
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 1, "op": "snapshot", "message": "m", "metadata": {"k": "v"}})
        );
        let e = serde_json::to_value(Reply::Error("no".into())).unwrap();
        assert_eq!(e, serde_json::json!({"error": "no"}));
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let e = parse(r#"{"version":2,"op":"snapshot"}"#).unwrap_err();
        assert!(e.to_string().contains("version 2 not supported"), "{e}");
        let e = parse(r#"{"op":"snapshot"}"#).unwrap_err();
        assert!(e.to_string().contains("version none"), "{e}");
        let e = parse(r#"{"version":1,"op":"format_disk"}"#).unwrap_err();
        assert!(e.to_string().contains("bad request"), "{e}");
        let e = parse("not json").unwrap_err();
        assert!(e.to_string().contains("bad request"), "{e}");
        assert!(matches!(
            parse(r#"{"version":1,"op":"snapshot"}"#),
            Ok(Op::Snapshot { .. })
        ));
    }
}
