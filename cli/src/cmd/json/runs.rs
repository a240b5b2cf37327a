//! The JSON shapes of runs and models (`ds runs`, `ds run show`,
//! `ds runs diff`, `ds models`, `ds model show`, `ds provenance`).
//!
//! `ds runs --json` objects carry at least `id`, `workspace`, `snapshot`,
//! `parameters`, `metrics`, `labels` and `task`; `ds run show` adds
//! `inputs`, `outputs`, `code` and `environment`; `ds models --json` is an
//! array of `{name, versions: [{version, run, …}]}` (the shapes).

use std::collections::BTreeMap;

use ds_store::format::ObjectId;
use ds_store::format::run::{DatasetUse, Environment, Origin};
use ds_store::runs::Listed;
use serde::Serialize;
use serde_json::Value;

use crate::fmt;

/// One run, as `ds runs --json` lists it (borrowed from the listing:
/// a list of 100,000 runs is printed without copying them).
#[derive(Debug, Clone, Serialize)]
pub struct RunJson<'a> {
    /// The record's content id (what `ds run show` takes, or a prefix).
    pub id: ObjectId,
    /// The id the workload gave it (marker id, Dotscience uuid, file name).
    pub name: &'a str,
    pub workspace: &'a str,
    /// The snapshot taken at the run (its outputs are in it).
    pub snapshot: ObjectId,
    /// The workspace's snapshot before it.
    pub before: Option<ObjectId>,
    pub task: Option<&'a str>,
    /// ds, dotscience or file.
    pub origin: Option<Origin>,
    /// When it was recorded (RFC 3339, UTC).
    pub time: String,
    pub recorded_ns: i64,
    pub start: Option<&'a str>,
    pub end: Option<&'a str>,
    pub description: Option<&'a str>,
    pub error: Option<&'a str>,
    pub parameters: &'a BTreeMap<String, Value>,
    pub metrics: &'a BTreeMap<String, Value>,
    pub labels: &'a BTreeMap<String, String>,
    /// The model this run is a version of (label `model`).
    pub model: Option<&'a str>,
}

impl<'a> From<&'a Listed> for RunJson<'a> {
    fn from(l: &'a Listed) -> RunJson<'a> {
        let r = &l.run;
        RunJson {
            id: l.id,
            name: &r.name,
            workspace: &r.workspace,
            snapshot: l.snapshot,
            before: r.before,
            task: r.task.as_deref(),
            origin: r.origin,
            time: fmt::time(r.recorded_ns),
            recorded_ns: r.recorded_ns,
            start: r.start.as_deref(),
            end: r.end.as_deref(),
            description: r.description.as_deref(),
            error: r.error.as_deref(),
            parameters: &r.parameters,
            metrics: &r.metrics,
            labels: &r.labels,
            model: r.model(),
        }
    }
}

/// A file a run declared, with its content in the run's snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct RunFileJson {
    pub path: String,
    /// The root of its content tree (equal content, equal id); null: not
    /// in the snapshot (or the snapshot is not in this store).
    pub content: Option<ObjectId>,
    pub size: Option<u64>,
}

/// The code a run executed.
#[derive(Debug, Clone, Serialize)]
pub struct CodeJson {
    pub repo: Option<String>,
    pub commit: Option<String>,
    pub workload_file: Option<String>,
    /// The workload file's content id in the run's snapshot.
    pub workload_content: Option<ObjectId>,
}

/// `ds run show --json`: a run with its provenance.
#[derive(Debug, Clone, Serialize)]
pub struct RunShowJson<'a> {
    #[serde(flatten)]
    pub run: RunJson<'a>,
    pub inputs: Vec<RunFileJson>,
    pub outputs: Vec<RunFileJson>,
    pub datasets: Vec<DatasetUse>,
    pub code: CodeJson,
    pub environment: Environment,
    pub warnings: Vec<String>,
    /// Fields of the workload's metadata ds does not interpret.
    pub extra: BTreeMap<String, Value>,
}

/// A parameter or metric of two runs, for `ds runs diff`.
#[derive(Debug, Clone, Serialize)]
pub struct ValueDiffJson {
    pub key: String,
    pub a: Option<Value>,
    pub b: Option<Value>,
}

/// `ds runs diff A B --json`.
#[derive(Debug, Serialize)]
pub struct RunsDiffJson<'a> {
    pub a: RunJson<'a>,
    pub b: RunJson<'a>,
    /// Only the keys whose values differ.
    pub parameters: Vec<ValueDiffJson>,
    pub metrics: Vec<ValueDiffJson>,
    /// The files that differ between the two runs' snapshots (code and
    /// data), as `ds diff --json` gives them.
    pub files: super::DiffJson,
}

/// One version of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelVersionJson {
    /// 1 for the oldest run naming the model.
    pub version: u32,
    pub run: ObjectId,
    pub workspace: String,
    pub snapshot: ObjectId,
    pub time: String,
    pub parameters: BTreeMap<String, Value>,
    pub metrics: BTreeMap<String, Value>,
    /// The run's declared outputs (the model's files).
    pub files: Vec<String>,
}

/// A model and its versions, for `ds models --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelJson {
    pub name: String,
    pub versions: Vec<ModelVersionJson>,
}

/// `ds model show NAME[@V] --json`: one version with its files, its run,
/// and the runs and datasets that made its inputs.
#[derive(Debug, Serialize)]
pub struct ModelShowJson<'a> {
    pub name: String,
    pub version: u32,
    pub versions: u32,
    pub files: Vec<RunFileJson>,
    pub metrics: BTreeMap<String, Value>,
    pub run: RunShowJson<'a>,
    pub provenance: ProvenanceJson,
}

/// A node of a provenance graph.
#[derive(Debug, Clone, Serialize)]
pub struct NodeJson {
    /// `run:<id>`, `file:<path>@<content>`, `dataset:<name>@<snapshot>`.
    pub id: String,
    /// run, file or dataset.
    pub kind: &'static str,
    pub label: String,
    pub run: Option<ObjectId>,
    pub snapshot: Option<ObjectId>,
    pub path: Option<String>,
    pub content: Option<ObjectId>,
}

/// An edge: `from` was used or made by `to` (`kind`: input, output).
#[derive(Debug, Clone, Serialize)]
pub struct EdgeJson {
    pub from: String,
    pub to: String,
    pub kind: &'static str,
}

/// `ds provenance --json`: the graph from a file or model back to the
/// inputs that made it.
#[derive(Debug, Clone, Serialize)]
pub struct ProvenanceJson {
    pub root: String,
    pub nodes: Vec<NodeJson>,
    pub edges: Vec<EdgeJson>,
}
