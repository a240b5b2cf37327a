//! `ds dataset mirror --json`, `ds dataset export --json` and
//! `ds datasets --json`.

use ds_dataset::MirrorReport;
use ds_dataset::export::ExportReport;
use ds_store::format::snapshot::Snapshot;
use serde::Serialize;

use crate::fmt;

#[derive(Debug, Serialize)]
pub struct MappedJson<'a> {
    pub key: &'a str,
    pub path: &'a str,
}

/// One mirror pass (the Shape: `id`, `objects`, `objects_fetched`,
/// `bytes_fetched`).
#[derive(Debug, Serialize)]
pub struct MirrorJson<'a> {
    pub id: Option<String>,
    pub dataset: &'a str,
    pub source: String,
    pub parent: Option<String>,
    /// A new snapshot was made (false: the source had not changed).
    pub changed: bool,
    pub objects: u64,
    pub bytes: u64,
    pub objects_fetched: u64,
    pub bytes_fetched: u64,
    pub objects_unchanged: u64,
    pub objects_resumed: u64,
    /// Bytes of big objects an interrupted run had stored in pieces.
    pub bytes_resumed: u64,
    pub objects_added: u64,
    pub objects_modified: u64,
    pub objects_removed: u64,
    pub objects_skipped: u64,
    pub bytes_written: u64,
    pub listed_at: String,
    pub list_seconds: f64,
    pub seconds: f64,
    pub mapped: Vec<MappedJson<'a>>,
    pub warnings: &'a [String],
}

pub fn mirror_json<'a>(dataset: &'a str, source: String, r: &'a MirrorReport) -> MirrorJson<'a> {
    MirrorJson {
        id: r.id.map(|i| i.to_hex()),
        dataset,
        source,
        parent: r.parent.map(|i| i.to_hex()),
        changed: r.changed,
        objects: r.objects,
        bytes: r.bytes,
        objects_fetched: r.objects_fetched,
        bytes_fetched: r.bytes_fetched,
        objects_unchanged: r.objects_unchanged,
        objects_resumed: r.objects_resumed,
        bytes_resumed: r.bytes_resumed,
        objects_added: r.objects_added,
        objects_modified: r.objects_modified,
        objects_removed: r.objects_removed,
        objects_skipped: r.objects_skipped,
        bytes_written: r.bytes_written,
        listed_at: fmt::time(r.listed_at_ns),
        list_seconds: r.list_seconds,
        seconds: r.seconds,
        mapped: r
            .mapped
            .iter()
            .map(|m| MappedJson {
                key: &m.key,
                path: &m.path,
            })
            .collect(),
        warnings: &r.warnings,
    }
}

#[derive(Debug, Serialize)]
pub struct ExportJson<'a> {
    pub snapshot: String,
    pub destination: String,
    pub objects: u64,
    pub bytes: u64,
    pub objects_written: u64,
    pub bytes_written: u64,
    pub objects_unchanged: u64,
    pub seconds: f64,
    pub warnings: &'a [String],
}

pub fn export_json(
    snapshot: String,
    destination: String,
    r: &ExportReport,
    seconds: f64,
) -> ExportJson<'_> {
    ExportJson {
        snapshot,
        destination,
        objects: r.objects,
        bytes: r.bytes,
        objects_written: r.objects_written,
        bytes_written: r.bytes_written,
        objects_unchanged: r.objects_unchanged,
        seconds,
        warnings: &r.warnings,
    }
}

/// One row of `ds datasets --json`.
#[derive(Debug, Serialize)]
pub struct DatasetJson<'a> {
    pub name: &'a str,
    pub id: String,
    pub time: String,
    pub source: Option<&'a str>,
    pub listed_at: Option<&'a str>,
    pub objects: u64,
    pub bytes: u64,
}

pub fn dataset_json<'a>(name: &'a str, id: String, s: &'a Snapshot) -> DatasetJson<'a> {
    DatasetJson {
        name,
        id,
        time: fmt::time(s.time_ns),
        source: s
            .metadata
            .get(ds_dataset::mirror::META_SOURCE)
            .map(String::as_str),
        listed_at: s
            .metadata
            .get(ds_dataset::mirror::META_LISTED_AT)
            .map(String::as_str),
        objects: s.stats.files,
        bytes: s.stats.bytes,
    }
}
