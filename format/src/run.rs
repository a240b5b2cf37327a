//! Run records: one execution of code on data, as a content-addressed object
//! that a snapshot carries (see [`crate::snapshot::Snapshot::runs`]).
//!
//! Why an object of its own rather than a file in the tree or a row in a
//! database: the record must travel with push and pull exactly as the
//! snapshot it belongs to does (a cloned workspace has its runs), must be
//! listable without walking any tree (walk the snapshot chain, read each
//! snapshot's run ids), and must be immutable and named by its content like
//! everything else. The snapshot that carries a run is the run's "after"
//! snapshot; the record names the "before" one, so no record has to know
//! the id of the object that references it.
//!
//! Encoding (`ObjectKind::Run`): `'R' 1` followed by the record as compact
//! JSON with every map sorted (serde_json over `BTreeMap`s). JSON because a
//! run's parameters and metrics are the workload's own JSON values; the
//! encoding is still canonical, because [`Run::decode`] re-encodes what it
//! parsed and refuses input that differs.
//!
//! [`Run::from_workload`] reads what a workload wrote (a `[[DS-RUN:…]]` or
//! `[[DOTSCIENCE-RUN:…]]` marker body, or a `.ds/runs/*.json` file); it is
//! here, beside the decoder, because it is untrusted input too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{FormatError, ObjectId, Result};

const TAG: u8 = b'R';
const VERSION: u8 = 1;
/// The largest encoded run record.
pub const MAX_RUN: usize = 1 << 20;
/// The largest metadata document a workload may hand over for one run:
/// room is left for what the runner adds (provenance) within [`MAX_RUN`].
pub const MAX_META: usize = 960 << 10;
/// At most this many parameters, metrics, labels, inputs or outputs each.
pub const MAX_ENTRIES: usize = 4096;
/// The longest key, label value or path.
pub const MAX_KEY: usize = 4096;

/// How the workload announced the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[DS-RUN:<id>]]{…}[[/DS-RUN:<id>]]` on stdout.
    Ds,
    /// `[[DOTSCIENCE-RUN:<uuid>]]{…}[[/DOTSCIENCE-RUN:<uuid>]]`, the
    /// Dotscience Python library's format.
    Dotscience,
    /// A `.ds/runs/*.json` file in the workspace.
    File,
}

/// The code a run executed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Code {
    /// A git repository and commit, when the task checked one out.
    pub repo: Option<String>,
    pub commit: Option<String>,
    /// The script the workload named (workspace-relative when it could be
    /// made so); its content id is looked up in the run's snapshot.
    pub workload_file: Option<String>,
}

/// Where and how a run executed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub executor: Option<String>,
    pub image: Option<String>,
    pub image_digest: Option<String>,
    pub command: Vec<String>,
    pub runner: Option<String>,
    pub host: Option<String>,
    /// CPU time the workload had used when the run was recorded.
    pub cpu_seconds: Option<f64>,
    /// The workload's peak resident memory so far, in bytes.
    pub peak_memory_bytes: Option<u64>,
}

/// A dataset snapshot a run read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetUse {
    pub name: String,
    pub snapshot: ObjectId,
    /// Where the task saw it.
    pub path: String,
}

/// One run, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The id the workload gave the run (a marker's id, a file's name);
    /// may repeat across runs. The record's own id is its hash.
    pub name: String,
    pub origin: Option<Origin>,
    pub workspace: String,
    /// The workspace's snapshot before the run (None: it was empty).
    pub before: Option<ObjectId>,
    pub task: Option<String>,
    /// When the run was recorded, ns since the Unix epoch.
    pub recorded_ns: i64,
    /// As the workload gave them (Dotscience: `%Y%m%dT%H%M%S.%f`, UTC).
    pub start: Option<String>,
    pub end: Option<String>,
    pub description: Option<String>,
    pub error: Option<String>,
    pub parameters: BTreeMap<String, Value>,
    pub metrics: BTreeMap<String, Value>,
    pub labels: BTreeMap<String, String>,
    /// Workspace-relative paths the run declared (resolved against the
    /// carrying snapshot for their content ids).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub datasets: Vec<DatasetUse>,
    pub code: Code,
    pub environment: Environment,
    /// Fields of the workload's metadata that ds does not interpret, kept.
    pub extra: BTreeMap<String, Value>,
    /// Warnings found while reading the metadata (a path that escapes
    /// the workspace, a non-string label).
    pub warnings: Vec<String>,
}

impl Run {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TAG, VERSION];
        serde_json::to_writer(&mut out, self).expect("a run always serializes");
        out
    }

    pub fn id(&self) -> ObjectId {
        crate::ObjectKind::Run.hash(&self.encode())
    }

    /// The model this run made a version of, if its labels name one (the
    /// first, when it names several: see [`Self::models`]).
    pub fn model(&self) -> Option<&str> {
        self.models().into_iter().next().map(|(n, _)| n)
    }

    /// Every model this run made a version of, with that model's files:
    /// the label `model=NAME` (files: the run's outputs), and Dotscience's
    /// `artefact:NAME` labels, whose value is JSON naming the model's
    /// files (`{"type":"tensorflow-model","files":{"model":"path",…}}`,
    /// what `ds.model()` in its library writes; files: those paths).
    pub fn models(&self) -> Vec<(&str, Vec<String>)> {
        let mut out = Vec::new();
        if let Some(m) = self
            .labels
            .get("model")
            .or_else(|| self.labels.get("ds.model"))
            .filter(|m| !m.is_empty())
        {
            out.push((m.as_str(), self.outputs.clone()));
        }
        for (k, v) in &self.labels {
            let Some(name) = k.strip_prefix("artefact:").filter(|n| !n.is_empty()) else {
                continue;
            };
            let files = serde_json::from_str::<Value>(v)
                .ok()
                .and_then(|j| {
                    j.get("files")?.as_object().map(|f| {
                        let mut p: Vec<String> = f
                            .values()
                            .filter_map(|p| p.as_str())
                            .filter_map(|p| workspace_path(p, "/", ""))
                            .filter(|p| !p.is_empty())
                            .collect();
                        p.sort();
                        p.dedup();
                        p
                    })
                })
                .unwrap_or_else(|| self.outputs.clone());
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, files));
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Run> {
        if bytes.len() > MAX_RUN + 2 {
            return Err(FormatError::corrupt("run", "larger than 1 MiB"));
        }
        match bytes {
            [TAG, VERSION, json @ ..] => {
                let run: Run = serde_json::from_slice(json)
                    .map_err(|e| FormatError::corrupt("run", e.to_string()))?;
                if run.encode() != bytes {
                    return Err(FormatError::corrupt("run", "not in canonical form"));
                }
                Ok(run)
            }
            [TAG, v, ..] => Err(FormatError::corrupt("run", format!("unknown version {v}"))),
            _ => Err(FormatError::corrupt("run", "bad tag")),
        }
    }
}

impl Run {
    /// Makes declared paths workspace-relative (see [`workspace_path`];
    /// relative ones are taken from the workspace's root, absolute ones
    /// must lie under `home`); a path that leaves the workspace is
    /// dropped with a warning.
    pub fn relativize(&mut self, home: &str) {
        let mut warnings = Vec::new();
        let mut fix = |list: &mut Vec<String>| {
            let mut out: Vec<String> = list
                .drain(..)
                .filter_map(|p| {
                    let r = workspace_path(&p, home, "");
                    if r.is_none() {
                        warnings.push(format!("{p:?} is outside the workspace"));
                    }
                    r
                })
                .collect();
            out.sort();
            out.dedup();
            *list = out;
        };
        fix(&mut self.inputs);
        fix(&mut self.outputs);
        if let Some(w) = self.code.workload_file.take() {
            self.code.workload_file = workspace_path(&w, home, "");
        }
        self.warnings.extend(warnings);
    }
}

impl Run {
    /// Reads one metadata document a workload wrote, as a record of what
    /// it said; where and how it ran is for the caller to add, the
    /// workspace and "before" snapshot for the transaction that stores it.
    /// Both formats share their field names (Dotscience's `summary`,
    /// `input`, `output`, `workload-file`; ds also accepts `metrics`,
    /// `inputs`, `outputs`, `workload_file`).
    /// Err: not a JSON object, too big, or a field of the wrong shape.
    pub fn from_workload(name: &str, origin: Origin, json: &[u8]) -> Result<Run, String> {
        if json.len() > MAX_META {
            return Err(format!(
                "run metadata of {} bytes is over the {} byte limit",
                json.len(),
                MAX_META
            ));
        }
        let v: Value =
            serde_json::from_slice(json).map_err(|e| format!("run metadata is not JSON: {e}"))?;
        let Value::Object(fields) = v else {
            return Err("run metadata is not a JSON object".into());
        };
        let mut m = Run {
            name: bounded(name, "run id")?.to_string(),
            origin: Some(origin),
            ..Run::default()
        };
        for (k, v) in fields {
            match k.as_str() {
                "version" | "id" if v.is_string() || v.is_number() => {
                    if k == "id" && m.name.is_empty() {
                        m.name = scalar_string(&v);
                    }
                }
                "description" => m.description = opt_string(&k, v)?,
                "error" => m.error = opt_string(&k, v)?,
                "start" => m.start = opt_string(&k, v)?,
                "end" => m.end = opt_string(&k, v)?,
                "workload-file" | "workload_file" => m.code.workload_file = opt_string(&k, v)?,
                "parameters" | "params" => m.parameters.extend(map(&k, v)?),
                "summary" | "metrics" => m.metrics.extend(map(&k, v)?),
                "labels" => {
                    for (lk, lv) in map(&k, v)? {
                        m.labels.insert(lk, scalar_string(&lv));
                    }
                }
                "input" | "inputs" => m.inputs.extend(paths(&k, v)?),
                "output" | "outputs" => m.outputs.extend(paths(&k, v)?),
                _ => {
                    m.extra.insert(k, v);
                }
            }
        }
        for (what, n) in [
            ("parameters", m.parameters.len()),
            ("metrics", m.metrics.len()),
            ("labels", m.labels.len()),
            ("inputs", m.inputs.len()),
            ("outputs", m.outputs.len()),
        ] {
            if n > MAX_ENTRIES {
                return Err(format!("{n} {what} is over the limit of {MAX_ENTRIES}"));
            }
        }
        m.inputs.sort();
        m.inputs.dedup();
        m.outputs.sort();
        m.outputs.dedup();
        Ok(m)
    }
}

fn bounded<'a>(s: &'a str, what: &str) -> Result<&'a str, String> {
    if s.len() > MAX_KEY {
        return Err(format!("{what} is longer than {MAX_KEY} bytes"));
    }
    Ok(s)
}

fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn opt_string(k: &str, v: Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(format!("field {k:?} must be a string, not {other}")),
    }
}

fn map(k: &str, v: Value) -> Result<BTreeMap<String, Value>, String> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(o) => {
            for key in o.keys() {
                bounded(key, "a key")?;
            }
            Ok(o.into_iter().collect())
        }
        _ => Err(format!("field {k:?} must be an object")),
    }
}

fn paths(k: &str, v: Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![bounded(&s, "a path")?.to_string()]),
        Value::Array(a) => a
            .into_iter()
            .map(|p| match p {
                Value::String(s) => Ok(bounded(&s, "a path")?.to_string()),
                other => Err(format!("field {k:?} must list paths, not {other}")),
            })
            .collect(),
        _ => Err(format!("field {k:?} must be a list of paths")),
    }
}

/// A metric or parameter as a number, when it is one or a string that
/// reads as one (Dotscience's library writes every value as a string).
pub fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Makes a path a workload declared relative to the workspace: relative
/// paths are taken from `cwd` (workspace-relative), absolute ones must lie
/// under `home` (the workspace as the workload saw it). `.` and `..` are
/// resolved lexically. None: the path leaves the workspace.
pub fn workspace_path(p: &str, home: &str, cwd: &str) -> Option<String> {
    let rest = if let Some(abs) = p.strip_prefix('/') {
        let h = home.trim_matches('/');
        let r = abs.strip_prefix(h)?;
        if !(r.is_empty() || r.starts_with('/')) {
            return None;
        }
        r.to_string()
    } else {
        format!("{cwd}/{p}")
    };
    let mut out: Vec<&str> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            x if x.contains('\0') => return None,
            x => out.push(x),
        }
    }
    Some(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_round_trips_and_only_its_canonical_form_decodes() {
        let mut r = Run {
            name: "r1".into(),
            origin: Some(Origin::Dotscience),
            workspace: "w".into(),
            before: Some(ObjectId([7; 32])),
            recorded_ns: 5,
            ..Run::default()
        };
        r.parameters.insert("lr".into(), serde_json::json!(0.1));
        r.metrics.insert("acc".into(), serde_json::json!("0.93"));
        r.labels.insert("model".into(), "m".into());
        let b = r.encode();
        assert_eq!(Run::decode(&b).unwrap(), r);
        assert_eq!(r.model(), Some("m"));
        r.labels.insert(
            "artefact:net".into(),
            r#"{"files":{"classes":"c.json","model":"net/saved"},"type":"tensorflow-model"}"#
                .into(),
        );
        r.labels.insert("artefact:odd".into(), "not json".into());
        r.outputs = vec!["o".into()];
        let ms = r.models();
        assert_eq!(ms[0], ("m", vec!["o".to_string()]));
        assert!(ms.contains(&("net", vec!["c.json".to_string(), "net/saved".to_string()])));
        assert!(ms.contains(&("odd", vec!["o".to_string()])));
        // Same value, other spelling: refused.
        let mut spaced = b[..2].to_vec();
        let v: Value = serde_json::from_slice(&b[2..]).unwrap();
        spaced.extend(serde_json::to_vec_pretty(&v).unwrap());
        assert!(Run::decode(&spaced).is_err());
        for cut in 0..b.len() {
            assert!(Run::decode(&b[..cut]).is_err());
        }
        let mut other = b.clone();
        other[1] = 9;
        assert!(Run::decode(&other).is_err());
    }

    #[test]
    fn the_encoding_is_pinned() {
        // Ids are hashes of these bytes: a change here renames every run.
        // The same bytes seed the fuzz corpus (fuzz/corpus/run/).
        let min = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/run/seed-minimal"
        ))
        .unwrap();
        assert_eq!(Run::default().encode(), min);
        let full = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/run/seed-full"
        ))
        .unwrap();
        let r = Run::decode(&full).unwrap();
        assert_eq!(r.environment.cpu_seconds, Some(1.5));
        assert_eq!(r.datasets[0].name, "raw");
        assert_eq!(r.encode(), full);
    }

    #[test]
    fn dotscience_metadata_is_read_with_its_own_field_names() {
        let doc = br#"{
    "description": "d",
    "end": "20190312T105512.360213",
    "input": ["data/in.csv"],
    "labels": {"model": "iris"},
    "output": ["model.pkl", "model.pkl"],
    "parameters": {"n": "3"},
    "start": "20190312T105512.360000",
    "summary": {"acc": "0.9"},
    "version": "1",
    "workload-file": "train.py",
    "novel": [1]
}"#;
        let m = Run::from_workload("u-1", Origin::Dotscience, doc).unwrap();
        assert_eq!(m.origin, Some(Origin::Dotscience));
        assert_eq!(m.name, "u-1");
        assert_eq!(m.inputs, vec!["data/in.csv"]);
        assert_eq!(m.outputs, vec!["model.pkl"]);
        assert_eq!(m.metrics["acc"], serde_json::json!("0.9"));
        assert_eq!(as_number(&m.metrics["acc"]), Some(0.9));
        assert_eq!(m.code.workload_file.as_deref(), Some("train.py"));
        assert_eq!(m.extra["novel"], serde_json::json!([1]));
        let parse = |b: &[u8]| Run::from_workload("x", Origin::Ds, b);
        assert!(parse(b"[1]").is_err());
        assert!(parse(br#"{"labels": 3}"#).is_err());
        assert!(parse(&vec![b' '; MAX_META + 1]).is_err());
    }

    #[test]
    fn declared_paths_are_made_workspace_relative_or_refused() {
        assert_eq!(
            workspace_path("a/./b", "/home/ds", "").as_deref(),
            Some("a/b")
        );
        assert_eq!(
            workspace_path("/home/ds/m/x.pkl", "/home/ds", "").as_deref(),
            Some("m/x.pkl")
        );
        assert_eq!(
            workspace_path("../x", "/home/ds", "sub").as_deref(),
            Some("x")
        );
        assert_eq!(workspace_path("../../x", "/home/ds", "sub"), None);
        assert_eq!(workspace_path("/etc/passwd", "/home/ds", ""), None);
        assert_eq!(workspace_path("/home/dsx/y", "/home/ds", ""), None);
    }
}
