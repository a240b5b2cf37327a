//! Every JSON document a `ds` command prints with `--json`, in one file.
//!
//! Tests and scripts outside the project parse these, so their keys, nesting
//! and value types are a contract: ids are lowercase hex strings, absent ids
//! and sizes are `null`, counts are integers, `seconds` is a float. Keeping
//! the shapes here, as structs rather than `json!` literals spread through
//! the command bodies, makes any change to that contract one visible diff.

use std::collections::BTreeMap;
use std::path::Path;

use ds_fuse::control::Committed;
use ds_store::diff::Change;
use ds_store::format::ObjectId;
use ds_store::format::snapshot::Snapshot;
use ds_store::format::tree::{Entry, EntryData};
use ds_store::gc::GcReport;
use ds_store::restore::RestoreReport;
use ds_store::verify::VerifyReport;
use ds_store::writer::WriteStats;
use serde::Serialize;

mod dataset;
mod runs;

pub use dataset::*;
pub use runs::*;

use super::lossy;
use crate::fmt;

/// What a snapshot did, for `ds snapshot --json`.
pub struct SnapshotJson<'a> {
    pub id: ObjectId,
    pub snapshot: &'a Snapshot,
    pub parent: Option<ObjectId>,
    pub files_read: u64,
    pub files_unchanged: u64,
    pub bytes_read: u64,
    pub written: &'a WriteStats,
    pub seconds: f64,
    pub warnings: &'a [String],
}

/// The one JSON shape `ds snapshot --json` prints for a directory.
pub fn snapshot_json<'a>(j: &SnapshotJson<'a>) -> SnapshotTakenJson<'a> {
    let s = j.snapshot;
    SnapshotTakenJson {
        id: j.id.to_hex(),
        workspace: &s.workspace,
        parent: j.parent.map(|p| p.to_hex()),
        root: s.root.root.to_hex(),
        time: fmt::time(s.time_ns),
        files: s.stats.files,
        dirs: s.stats.dirs,
        symlinks: s.stats.symlinks,
        bytes: s.stats.bytes,
        files_read: j.files_read,
        files_unchanged: j.files_unchanged,
        bytes_read: j.bytes_read,
        bytes_added: j.written.stored_bytes,
        bytes_added_uncompressed: j.written.raw_bytes,
        objects_added: j.written.objects,
        packs_written: j.written.packs,
        seconds: j.seconds,
        warnings: j.warnings,
        runs: s.runs.clone(),
        live_mount: None,
    }
}

/// The same shape for a snapshot of a live read-write mount (what its
/// mount process answered), marked `"live_mount": true`.
pub fn live_snapshot_json(c: &Committed) -> SnapshotTakenJson<'_> {
    SnapshotTakenJson {
        id: c.id.to_hex(),
        workspace: &c.workspace,
        parent: c.parent.map(|p| p.to_hex()),
        root: c.root.to_hex(),
        time: fmt::time(c.time_ns),
        files: c.files,
        dirs: c.dirs,
        symlinks: c.symlinks,
        bytes: c.bytes,
        files_read: c.files_rechunked,
        files_unchanged: c.files.saturating_sub(c.files_rechunked),
        bytes_read: c.bytes_read,
        bytes_added: c.bytes_added,
        bytes_added_uncompressed: c.bytes_added_uncompressed,
        objects_added: c.objects_added,
        packs_written: c.packs_written,
        seconds: c.seconds,
        warnings: &[],
        runs: c.runs.clone(),
        live_mount: Some(true),
    }
}

/// `ds snapshot --json`, of a directory or of a live mount.
#[derive(Debug, Serialize)]
pub struct SnapshotTakenJson<'a> {
    id: String,
    workspace: &'a str,
    /// `null` for a workspace's first snapshot.
    parent: Option<String>,
    root: String,
    time: String,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    files_read: u64,
    files_unchanged: u64,
    bytes_read: u64,
    bytes_added: u64,
    bytes_added_uncompressed: u64,
    objects_added: u64,
    packs_written: u64,
    seconds: f64,
    warnings: &'a [String],
    /// Ids of the run records this snapshot carries.
    runs: Vec<ObjectId>,
    /// Present (true) only for a snapshot of a live read-write mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    live_mount: Option<bool>,
}

/// One snapshot in `ds log --json` and `ds workspaces --json` (both arrays).
#[derive(Debug, Serialize)]
pub(super) struct SnapshotInfoJson<'a> {
    id: String,
    workspace: &'a str,
    parents: Vec<String>,
    time: String,
    time_ns: i64,
    message: &'a str,
    source: String,
    hostname: &'a str,
    metadata: &'a BTreeMap<String, String>,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    root: String,
    /// Ids of the run records this snapshot carries.
    runs: &'a [ObjectId],
}

impl<'a> SnapshotInfoJson<'a> {
    pub(super) fn new(id: &ObjectId, s: &'a Snapshot) -> Self {
        SnapshotInfoJson {
            id: id.to_hex(),
            workspace: &s.workspace,
            parents: s.parents.iter().map(|p| p.to_hex()).collect(),
            time: fmt::time(s.time_ns),
            time_ns: s.time_ns,
            message: &s.message,
            source: lossy(&s.source),
            hostname: &s.hostname,
            metadata: &s.metadata,
            files: s.stats.files,
            dirs: s.stats.dirs,
            symlinks: s.stats.symlinks,
            bytes: s.stats.bytes,
            root: s.root.root.to_hex(),
            runs: &s.runs,
        }
    }
}

/// One directory entry in `ds ls --json` (an array).
#[derive(Debug, Serialize)]
pub(super) struct EntryJson {
    name: String,
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `chardev` or `blockdev`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// Permission bits in octal, as a string (`"644"`).
    mode: String,
    size: u64,
    mtime: String,
    mtime_ns: i64,
    /// Symlinks only; the key is absent for other entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// Recorded owner; absent in snapshots made before ds recorded owners.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    /// Hard-link group label, shared by every name of one inode.
    #[serde(skip_serializing_if = "Option::is_none")]
    link_group: Option<u64>,
    /// Device number of a device node.
    #[serde(skip_serializing_if = "Option::is_none")]
    rdev: Option<u64>,
    /// Names of the extended attributes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<String>,
}

impl EntryJson {
    pub(super) fn new(e: &Entry) -> Self {
        EntryJson {
            name: lossy(&e.name),
            kind: e.data.kind_name(),
            mode: format!("{:o}", e.mode),
            size: e.size(),
            mtime: fmt::time(e.mtime_ns),
            mtime_ns: e.mtime_ns,
            target: match &e.data {
                EntryData::Symlink(t) => Some(lossy(t)),
                _ => None,
            },
            uid: e.owner.map(|o| o.uid),
            gid: e.owner.map(|o| o.gid),
            link_group: e.link.map(|l| l.group),
            rdev: match e.data {
                EntryData::Device { rdev, .. } => Some(rdev),
                _ => None,
            },
            xattrs: e.xattrs.iter().map(|x| lossy(&x.name)).collect(),
        }
    }
}

/// `ds diff --json`.
#[derive(Debug, Serialize)]
pub(crate) struct DiffJson {
    from: String,
    to: String,
    changes: Vec<ChangeJson>,
    /// Sum over changed files and symlinks (directories count nothing).
    bytes_changed: u64,
}

#[derive(Debug, Serialize)]
struct ChangeJson {
    path: String,
    kind: &'static str,
    #[serde(rename = "type")]
    entry_type: &'static str,
    /// `null` when the path is added.
    old_size: Option<u64>,
    /// `null` when the path is removed.
    new_size: Option<u64>,
    bytes_changed: u64,
    /// For kind "metadata" (and alongside others): which of "mode",
    /// "owner", "xattrs" changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    metadata: Vec<&'static str>,
}

impl DiffJson {
    pub(crate) fn new(from: &ObjectId, to: &ObjectId, changes: &[Change], total: u64) -> Self {
        DiffJson {
            from: from.to_hex(),
            to: to.to_hex(),
            changes: changes
                .iter()
                .map(|c| ChangeJson {
                    path: lossy(&c.path),
                    kind: c.kind.as_str(),
                    entry_type: c.entry_type.as_str(),
                    old_size: c.old_size,
                    new_size: c.new_size,
                    bytes_changed: c.bytes_changed,
                    metadata: c.metadata.clone(),
                })
                .collect(),
            bytes_changed: total,
        }
    }
}

/// `ds restore --json`.
#[derive(Debug, Serialize)]
pub(super) struct RestoreJson<'a> {
    id: String,
    dest: String,
    files: u64,
    dirs: u64,
    symlinks: u64,
    /// FIFOs, sockets and device nodes.
    specials: u64,
    /// Names made as hard links of another restored name.
    hardlinks: u64,
    bytes: u64,
    errors: &'a [String],
    warnings: &'a [String],
}

impl<'a> RestoreJson<'a> {
    pub(super) fn new(id: &ObjectId, dest: &Path, r: &'a RestoreReport) -> Self {
        RestoreJson {
            id: id.to_hex(),
            dest: dest.display().to_string(),
            files: r.files,
            dirs: r.dirs,
            symlinks: r.symlinks,
            specials: r.specials,
            hardlinks: r.hardlinks,
            bytes: r.bytes,
            errors: &r.errors,
            warnings: &r.warnings,
        }
    }
}

/// `ds verify --json`.
#[derive(Debug, Serialize)]
pub(super) struct VerifyJson<'a> {
    ok: bool,
    packs: u64,
    objects: u64,
    bytes: u64,
    snapshots: u64,
    unindexed_packs: u64,
    problems: Vec<ProblemJson<'a>>,
}

#[derive(Debug, Serialize)]
struct ProblemJson<'a> {
    /// `null` when the problem is not in one pack.
    pack: Option<String>,
    /// `null` when the problem is not about one object.
    object: Option<String>,
    message: &'a str,
    paths: &'a [String],
}

impl<'a> VerifyJson<'a> {
    pub(super) fn new(r: &'a VerifyReport) -> Self {
        VerifyJson {
            ok: r.problems.is_empty(),
            packs: r.packs,
            objects: r.objects,
            bytes: r.bytes,
            snapshots: r.snapshots,
            unindexed_packs: r.unindexed_packs,
            problems: r
                .problems
                .iter()
                .map(|p| ProblemJson {
                    pack: p.pack.map(|x| x.to_hex()),
                    object: p.object.map(|x| x.to_hex()),
                    message: &p.message,
                    paths: &p.paths,
                })
                .collect(),
        }
    }
}

/// `ds gc --hub URL --json`.
#[derive(Debug, Serialize)]
pub(super) struct HubGcJson {
    hub: String,
    dry_run: bool,
    grace_seconds: u64,
    workspaces: u32,
    packs: u64,
    reachable_objects: u64,
    packs_condemned: u64,
    bytes_condemned: u64,
    packs_deleted: u64,
    bytes_freed: u64,
    packs_rescued: u64,
    packs_pending: u64,
    bytes_pending: u64,
    orphans_deleted: u64,
    packs_repacked: u64,
    repack_bytes_written: u64,
    repack_packs_written: u64,
    epoch: u64,
    /// Unix seconds after which a gc may delete the pending packs (null: none).
    next_deletion: Option<i64>,
}

impl HubGcJson {
    pub(super) fn new(hub: &str, grace: u64, dry_run: bool, r: &ds_proto::v1::GcReply) -> Self {
        HubGcJson {
            hub: hub.to_string(),
            dry_run,
            grace_seconds: grace,
            workspaces: r.workspaces,
            packs: r.packs,
            reachable_objects: r.reachable_objects,
            packs_condemned: r.condemned,
            bytes_condemned: r.condemned_bytes,
            packs_deleted: r.deleted,
            bytes_freed: r.deleted_bytes,
            packs_rescued: r.rescued,
            packs_pending: r.pending,
            bytes_pending: r.pending_bytes,
            orphans_deleted: r.orphans_deleted,
            packs_repacked: r.repacked,
            repack_bytes_written: r.repack_bytes_written,
            repack_packs_written: r.repack_packs_written,
            epoch: r.epoch,
            next_deletion: (r.next_deletion_unix > 0).then_some(r.next_deletion_unix),
        }
    }
}

/// `ds gc --json`.
#[derive(Debug, Serialize)]
pub(super) struct GcJson {
    dry_run: bool,
    bytes_freed: u64,
    packs_deleted: u64,
    packs_repacked: u64,
    packs_written: u64,
    objects_removed: u64,
    temp_files_removed: u64,
    stat_entries_pruned: u64,
    reachable_objects: u64,
}

impl GcJson {
    pub(super) fn new(dry_run: bool, r: &GcReport) -> Self {
        GcJson {
            dry_run,
            bytes_freed: r.bytes_freed,
            packs_deleted: r.packs_deleted,
            packs_repacked: r.packs_repacked,
            packs_written: r.packs_written,
            objects_removed: r.objects_removed,
            temp_files_removed: r.temp_files_removed,
            stat_entries_pruned: r.stat_entries_pruned,
            reachable_objects: r.reachable_objects,
        }
    }
}

pub use ds_proto::json::{RunnerJson, TaskJson};
