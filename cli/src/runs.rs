//! `ds runs`, `ds run show`, `ds runs diff`, `ds models`, `ds model show`
//! and `ds provenance`: reading the runs workloads recorded.
//!
//! Runs are read from the local store (which holds a workspace's runs once
//! it is pulled) unless a hub is named with `--hub` or `$DS_HUB`; then the
//! hub lists them (`ListRuns`) and the local store, where it holds the
//! runs' snapshots, supplies what needs trees (file content ids, diffs).
//! A model is the line of runs whose label `model` names it: version 1 is
//! the oldest. Provenance follows content, not names: a run's input is
//! traced to the latest earlier run that output a file with the same
//! content id, wherever it lay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use ds_store::format::ObjectId;
use ds_store::format::manifest::FileRef;
use ds_store::format::run::as_number;
use ds_store::runs::{self, Listed};
use ds_store::{Access, Store};
use serde_json::Value;

use crate::cmd::json::{
    CodeJson, DiffJson, EdgeJson, ModelJson, ModelShowJson, ModelVersionJson, NodeJson,
    ProvenanceJson, RunFileJson, RunJson, RunShowJson, RunsDiffJson, ValueDiffJson,
};
use crate::cmd::{print_json, print_json_direct};
use crate::open::open;
use crate::sync::{HubArgs, runtime, target};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    /// Only runs of this workspace [default: every workspace]
    #[arg(value_name = "W")]
    workspace: Option<String>,
    /// Only runs with this label (repeat: all must match)
    #[arg(long = "label", value_name = "K=V", value_parser = crate::tasks::key_value)]
    labels: Vec<(String, String)>,
    /// Order by this metric, highest first (`--sort=-M`: lowest first);
    /// runs without it come last
    #[arg(long, value_name = "METRIC", allow_hyphen_values = true)]
    sort: Option<String>,
    /// At most this many
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    cmd: Option<RunsCmd>,
}

#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    /// Compare two runs: parameters, metrics, and the files (code and
    /// data) that differ between their snapshots, with bytes changed
    Diff {
        a: String,
        b: String,
        #[arg(long, short = 'w', value_name = "W")]
        workspace: Option<String>,
        #[command(flatten)]
        hub: HubArgs,
    },
}

/// `ds run show RUN`.
#[derive(Debug, Args)]
pub struct RunShowArgs {
    /// A run's id (or a unique prefix of 4+ hex digits) or the name its
    /// workload gave it
    pub run: String,
    /// Look only in this workspace
    #[arg(long, short = 'w', value_name = "W")]
    pub workspace: Option<String>,
    #[command(flatten)]
    pub hub: HubArgs,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ModelsArgs {
    /// Only models of this workspace [default: every workspace]
    #[arg(value_name = "W")]
    workspace: Option<String>,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// A model version: its files, metrics, run, and the chain of runs and
    /// datasets that made its inputs
    Show {
        /// NAME (its latest version) or NAME@VERSION
        model: String,
        #[arg(long, short = 'w', value_name = "W")]
        workspace: Option<String>,
        #[command(flatten)]
        hub: HubArgs,
    },
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    cmd: ModelCmd,
}

#[derive(Debug, Args)]
pub struct ProvenanceArgs {
    /// `model:NAME[@V]`, or `W:PATH` (a file in workspace W's latest
    /// snapshot)
    target: String,
    /// Print Graphviz (dot) instead of text
    #[arg(long, conflicts_with = "json")]
    dot: bool,
    #[command(flatten)]
    hub: HubArgs,
}

/// Where runs come from, and the store that can resolve their files.
struct Source {
    runs: Vec<Listed>,
    store: Option<Store>,
    /// Root trees of snapshots already read (a graph looks up many paths
    /// in each run's snapshot).
    roots: std::cell::RefCell<HashMap<ObjectId, Option<ds_store::format::tree::DirRef>>>,
}

fn hub_named(a: &HubArgs) -> bool {
    a.hub.is_some() || std::env::var("DS_HUB").is_ok_and(|v| !v.is_empty())
}

fn load(store_path: &Path, hub: &HubArgs, ws: Option<&str>) -> Result<Source> {
    if hub_named(hub) {
        let (url, token) = target(store_path, hub)?;
        let runs = runtime()?.block_on(async {
            let mut r = ds_sync::Remote::connect(&url, &token, hub.ca_cert.as_deref())
                .await
                .with_context(|| format!("connecting to {url}"))?;
            r.list_runs(ws).await.map_err(anyhow::Error::from)
        })?;
        let store = if store_path.join("config").exists() {
            Some(open(store_path, Access::Read)?)
        } else {
            None
        };
        return Ok(Source {
            runs,
            store,
            roots: Default::default(),
        });
    }
    let store = open(store_path, Access::Read)?;
    let runs = match ws {
        Some(w) => {
            let head = store
                .refs()
                .get(w)?
                .ok_or_else(|| anyhow!("no workspace {w:?} in this store (ds pull {w}?)"))?;
            runs::history(&store, head)?
        }
        None => runs::all(&store)?,
    };
    Ok(Source {
        runs,
        store: Some(store),
        roots: Default::default(),
    })
}

impl Source {
    fn file(&self, snapshot: &ObjectId, path: &str) -> Option<FileRef> {
        let s = self.store.as_ref()?;
        let root = *self
            .roots
            .borrow_mut()
            .entry(*snapshot)
            .or_insert_with(|| s.load_snapshot(snapshot).ok().map(|snap| snap.root));
        runs::content(s, &root?, path).ok().flatten()
    }

    fn files(&self, snapshot: &ObjectId, paths: &[String]) -> Vec<RunFileJson> {
        paths
            .iter()
            .map(|p| {
                let f = self.file(snapshot, p);
                RunFileJson {
                    path: p.clone(),
                    content: f.map(|f| f.root),
                    size: f.map(|f| f.size),
                }
            })
            .collect()
    }

    fn show<'a>(&self, l: &'a Listed) -> RunShowJson<'a> {
        let r = &l.run;
        let workload_content = r
            .code
            .workload_file
            .as_deref()
            .and_then(|w| self.file(&l.snapshot, w))
            .map(|f| f.root);
        RunShowJson {
            run: RunJson::from(l),
            inputs: self.files(&l.snapshot, &r.inputs),
            outputs: self.files(&l.snapshot, &r.outputs),
            datasets: r.datasets.clone(),
            code: CodeJson {
                repo: r.code.repo.clone(),
                commit: r.code.commit.clone(),
                workload_file: r.code.workload_file.clone(),
                workload_content,
            },
            environment: r.environment.clone(),
            warnings: r.warnings.clone(),
            extra: r.extra.clone(),
        }
    }
}

pub fn list(store_path: &Path, a: RunsArgs) -> Result<ExitCode> {
    if let Some(RunsCmd::Diff {
        a: ra,
        b: rb,
        workspace,
        hub,
    }) = a.cmd
    {
        return diff(store_path, &ra, &rb, workspace.as_deref(), &hub);
    }
    let src = load(store_path, &a.hub, a.workspace.as_deref())?;
    let mut runs: Vec<&Listed> = src
        .runs
        .iter()
        .filter(|l| a.labels.iter().all(|(k, v)| l.run.labels.get(k) == Some(v)))
        .collect();
    if let Some(m) = &a.sort {
        let (key, lowest) = match m.strip_prefix('-') {
            Some(k) => (k, true),
            None => (m.as_str(), false),
        };
        let val = |l: &Listed| l.run.metrics.get(key).and_then(as_number);
        runs.sort_by(|x, y| match (val(x), val(y)) {
            (Some(p), Some(q)) if lowest => p.total_cmp(&q),
            (Some(p), Some(q)) => q.total_cmp(&p),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    if let Some(n) = a.limit {
        runs.truncate(n);
    }
    if a.hub.json {
        let v: Vec<RunJson> = runs.iter().map(|l| RunJson::from(*l)).collect();
        print_json_direct(&v)?;
    } else {
        print_table(&runs);
    }
    Ok(ExitCode::SUCCESS)
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs as a table: one column per parameter and metric (up to 8 each).
fn print_table(runs: &[&Listed]) {
    if runs.is_empty() {
        eprintln!("no runs");
        return;
    }
    let keys = |f: &dyn Fn(&Listed) -> Vec<String>| -> Vec<String> {
        let set: BTreeSet<String> = runs.iter().flat_map(|l| f(l)).collect();
        set.into_iter().take(8).collect()
    };
    let params = keys(&|l| l.run.parameters.keys().cloned().collect());
    let metrics = keys(&|l| l.run.metrics.keys().cloned().collect());
    let mut rows: Vec<Vec<String>> = vec![
        ["RUN", "TIME", "WORKSPACE", "NAME"]
            .iter()
            .map(|s| s.to_string())
            .chain(params.iter().map(|k| format!("p:{k}")))
            .chain(metrics.iter().map(|k| format!("m:{k}")))
            .collect(),
    ];
    for l in runs {
        let r = &l.run;
        let mut row = vec![
            l.id.to_hex()[..12].to_string(),
            crate::fmt::time(r.recorded_ns),
            r.workspace.clone(),
            r.name.chars().take(36).collect(),
        ];
        row.extend(
            params
                .iter()
                .map(|k| r.parameters.get(k).map(cell).unwrap_or_default()),
        );
        row.extend(
            metrics
                .iter()
                .map(|k| r.metrics.get(k).map(cell).unwrap_or_default()),
        );
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                .min(40)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{:<w$}", v.chars().take(*w).collect::<String>(), w = *w))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub fn show(store_path: &Path, a: RunShowArgs) -> Result<ExitCode> {
    let src = load(store_path, &a.hub, a.workspace.as_deref())?;
    let l = runs::find(&src.runs, &a.run)?;
    let j = src.show(l);
    if a.hub.json {
        print_json(&j)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = &j.run;
    println!("run {}", r.id);
    println!("  name:       {}", r.name);
    println!(
        "  workspace:  {} (snapshot {}, before {})",
        r.workspace,
        r.snapshot.short(),
        r.before.map(|b| b.short()).unwrap_or_else(|| "none".into())
    );
    if let Some(t) = &r.task {
        println!("  task:       {t}");
    }
    println!("  recorded:   {}", r.time);
    for (what, m) in [("parameter", r.parameters), ("metric", r.metrics)] {
        for (k, v) in m {
            println!("  {what:<10}  {k} = {}", cell(v));
        }
    }
    for (k, v) in r.labels {
        println!("  label       {k} = {v}");
    }
    for (what, files) in [("input", &j.inputs), ("output", &j.outputs)] {
        for f in files {
            let c = f
                .content
                .map(|c| c.short())
                .unwrap_or_else(|| "(not in snapshot)".into());
            println!("  {what:<10}  {} {c}", f.path);
        }
    }
    if let Some(c) = &j.code.commit {
        println!(
            "  code:       {} @ {c}",
            j.code.repo.as_deref().unwrap_or("")
        );
    }
    if let Some(w) = &j.code.workload_file {
        println!("  workload:   {w}");
    }
    let e = &j.environment;
    println!(
        "  executor:   {} on {}{}",
        e.executor.as_deref().unwrap_or("-"),
        e.runner.as_deref().or(e.host.as_deref()).unwrap_or("-"),
        e.image
            .as_deref()
            .map(|i| format!(", image {i}"))
            .unwrap_or_default()
    );
    for w in &j.warnings {
        println!("  warning:    {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn value_diff(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<ValueDiffJson> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| ValueDiffJson {
            key: k.clone(),
            a: a.get(k).cloned(),
            b: b.get(k).cloned(),
        })
        .collect()
}

fn diff(
    store_path: &Path,
    ra: &str,
    rb: &str,
    ws: Option<&str>,
    hub: &HubArgs,
) -> Result<ExitCode> {
    let src = load(store_path, hub, ws)?;
    let (x, y) = (runs::find(&src.runs, ra)?, runs::find(&src.runs, rb)?);
    let store = src.store.as_ref().ok_or_else(|| {
        anyhow!(
            "comparing files needs the runs' snapshots in a local store: ds pull {}",
            x.run.workspace
        )
    })?;
    let sa = store.load_snapshot(&x.snapshot).with_context(|| {
        format!(
            "run {}'s snapshot (ds pull {}?)",
            x.id.short(),
            x.run.workspace
        )
    })?;
    let sb = store.load_snapshot(&y.snapshot).with_context(|| {
        format!(
            "run {}'s snapshot (ds pull {}?)",
            y.id.short(),
            y.run.workspace
        )
    })?;
    let changes = ds_store::diff::diff(store, &sa.root, &sb.root)?;
    let total = changes.iter().map(|c| c.bytes_changed).sum();
    let j = RunsDiffJson {
        a: RunJson::from(x),
        b: RunJson::from(y),
        parameters: value_diff(&x.run.parameters, &y.run.parameters),
        metrics: value_diff(&x.run.metrics, &y.run.metrics),
        files: DiffJson::new(&x.snapshot, &y.snapshot, &changes, total),
    };
    if hub.json {
        print_json(&j)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {} → run {}", x.id.short(), y.id.short());
    for (what, d) in [("parameter", &j.parameters), ("metric", &j.metrics)] {
        for v in d {
            let s = |o: &Option<Value>| o.as_ref().map(cell).unwrap_or_else(|| "-".into());
            println!("  {what:<10} {}: {} → {}", v.key, s(&v.a), s(&v.b));
        }
    }
    for c in &changes {
        println!(
            "  {:<9}  {} ({} changed)",
            c.kind.as_str(),
            String::from_utf8_lossy(&c.path),
            crate::fmt::bytes(c.bytes_changed)
        );
    }
    println!(
        "  {} files differ, {} changed",
        changes.len(),
        crate::fmt::bytes(total)
    );
    Ok(ExitCode::SUCCESS)
}

/// The files of model `name` in run `l` (see `Run::models`).
fn model_files(l: &Listed, name: &str) -> Vec<String> {
    l.run
        .models()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f)
        .unwrap_or_default()
}

fn version_json(name: &str, version: u32, l: &Listed) -> ModelVersionJson {
    ModelVersionJson {
        version,
        run: l.id,
        workspace: l.run.workspace.clone(),
        snapshot: l.snapshot,
        time: crate::fmt::time(l.run.recorded_ns),
        parameters: l.run.parameters.clone(),
        metrics: l.run.metrics.clone(),
        files: model_files(l, name),
    }
}

pub fn list_models(store_path: &Path, a: ModelsArgs) -> Result<ExitCode> {
    let src = load(store_path, &a.hub, a.workspace.as_deref())?;
    let all: Vec<ModelJson> = runs::models(&src.runs)
        .into_iter()
        .map(|(name, v)| ModelJson {
            versions: v
                .iter()
                .enumerate()
                .map(|(i, l)| version_json(&name, i as u32 + 1, l))
                .collect(),
            name,
        })
        .collect();
    if a.hub.json {
        print_json(&all)?;
    } else if all.is_empty() {
        eprintln!(
            "no models (a run labelled model=NAME, or Dotscience's artefact:NAME, makes a \
             version of NAME)"
        );
    } else {
        for m in &all {
            let last = m.versions.last().expect("a model has a version");
            let n = m.versions.len();
            println!(
                "{:<24} {n} version{}, latest {} (run {}, {})",
                m.name,
                if n == 1 { "" } else { "s" },
                last.version,
                last.run.short(),
                last.time
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn model(store_path: &Path, a: ModelArgs) -> Result<ExitCode> {
    let ModelCmd::Show {
        model,
        workspace,
        hub,
    } = a.cmd;
    let src = load(store_path, &hub, workspace.as_deref())?;
    let (name, version, versions, l) = runs::find_model(&src.runs, &model)?;
    let j = ModelShowJson {
        name: name.clone(),
        version,
        versions,
        files: src.files(&l.snapshot, &model_files(l, &name)),
        metrics: l.run.metrics.clone(),
        run: src.show(l),
        provenance: graph(&src, Start::Run(l)),
    };
    if hub.json {
        print_json(&j)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "model {name} version {version} of {versions}: run {} in {}",
        l.id.short(),
        l.run.workspace
    );
    for f in &j.files {
        println!(
            "  file    {} {}",
            f.path,
            f.content.map(|c| c.short()).unwrap_or_else(|| "-".into())
        );
    }
    for (k, v) in &j.metrics {
        println!("  metric  {k} = {}", cell(v));
    }
    print_graph_text(&j.provenance);
    Ok(ExitCode::SUCCESS)
}

pub fn provenance(store_path: &Path, a: ProvenanceArgs) -> Result<ExitCode> {
    let g = if let Some(m) = a.target.strip_prefix("model:") {
        let src = load(store_path, &a.hub, None)?;
        let (_, _, _, l) = runs::find_model(&src.runs, m)?;
        graph(&src, Start::Run(l))
    } else {
        let (ws, path) = a
            .target
            .split_once(':')
            .ok_or_else(|| anyhow!("{:?}: give model:NAME[@V] or W:PATH", a.target))?;
        let src = load(store_path, &a.hub, Some(ws))?;
        let store = src.store.as_ref().ok_or_else(|| {
            anyhow!("tracing a file needs workspace {ws} in a local store (ds pull {ws})")
        })?;
        let head = store
            .refs()
            .get(ws)?
            .ok_or_else(|| anyhow!("no workspace {ws:?} in this store (ds pull {ws})"))?;
        let path = path.trim_matches('/').to_string();
        let f = src
            .file(&head, &path)
            .ok_or_else(|| anyhow!("no file {path:?} in {ws}'s latest snapshot"))?;
        graph(
            &src,
            Start::File {
                path,
                content: f.root,
                snapshot: head,
            },
        )
    };
    if a.dot {
        print_dot(&g);
    } else if a.hub.json {
        print_json(&g)?;
    } else {
        print_graph_text(&g);
    }
    Ok(ExitCode::SUCCESS)
}

enum Start<'a> {
    Run(&'a Listed),
    File {
        path: String,
        content: ObjectId,
        snapshot: ObjectId,
    },
}

type Outputs = HashMap<ObjectId, Vec<Option<ObjectId>>>;

/// The producer of `content`: the latest run before `before_ns` that
/// output it. `makers` are the runs with outputs, newest first; `outputs`
/// memoizes each run's output contents.
fn producer<'a>(
    src: &Source,
    makers: &[&'a Listed],
    outputs: &mut Outputs,
    content: ObjectId,
    before_ns: i64,
) -> Option<&'a Listed> {
    let from = makers.partition_point(|l| l.run.recorded_ns >= before_ns);
    makers[from..].iter().copied().find(|l| {
        outputs
            .entry(l.id)
            .or_insert_with(|| {
                l.run
                    .outputs
                    .iter()
                    .map(|p| src.file(&l.snapshot, p).map(|f| f.root))
                    .collect()
            })
            .contains(&Some(content))
    })
}

/// Walks back from `start`: each run's inputs (content as the run saw
/// it: in its "before" snapshot when there, else its own) to the latest
/// earlier run that output the same content, and each run's datasets;
/// at most 256 runs deep.
fn graph<'a>(src: &'a Source, start: Start<'a>) -> ProvenanceJson {
    let mut nodes: Vec<NodeJson> = Vec::new();
    let mut edges: Vec<EdgeJson> = Vec::new();
    let mut have: BTreeSet<String> = BTreeSet::new();
    let mut outputs: Outputs = HashMap::new();
    let mut makers: Vec<&'a Listed> = src
        .runs
        .iter()
        .filter(|l| !l.run.outputs.is_empty())
        .collect();
    makers.sort_by_key(|l| std::cmp::Reverse(l.run.recorded_ns));
    let mut node = |nodes: &mut Vec<NodeJson>, n: NodeJson| {
        if have.insert(n.id.clone()) {
            nodes.push(n);
        }
    };
    let file_node = |path: &str, content: Option<ObjectId>, snapshot: ObjectId| NodeJson {
        id: format!(
            "file:{path}@{}",
            content
                .map(|c| c.short())
                .unwrap_or_else(|| "missing".into())
        ),
        kind: "file",
        label: path.to_string(),
        run: None,
        snapshot: Some(snapshot),
        path: Some(path.to_string()),
        content,
    };
    let run_node = |l: &Listed| NodeJson {
        id: format!("run:{}", l.id.short()),
        kind: "run",
        label: format!("run {} ({})", l.run.name, l.run.workspace),
        run: Some(l.id),
        snapshot: Some(l.snapshot),
        path: None,
        content: None,
    };
    let mut todo: Vec<&'a Listed> = Vec::new();
    let root = match start {
        Start::Run(l) => {
            todo.push(l);
            format!("run:{}", l.id.short())
        }
        Start::File {
            path,
            content,
            snapshot,
        } => {
            let n = file_node(&path, Some(content), snapshot);
            let id = n.id.clone();
            node(&mut nodes, n);
            if let Some(p) = producer(src, &makers, &mut outputs, content, i64::MAX) {
                edges.push(EdgeJson {
                    from: format!("run:{}", p.id.short()),
                    to: id.clone(),
                    kind: "output",
                });
                todo.push(p);
            }
            id
        }
    };
    let mut done: BTreeSet<ObjectId> = BTreeSet::new();
    while let Some(l) = todo.pop() {
        if !done.insert(l.id) || done.len() > 256 {
            continue;
        }
        let rid = format!("run:{}", l.id.short());
        node(&mut nodes, run_node(l));
        for o in &l.run.outputs {
            let n = file_node(o, src.file(&l.snapshot, o).map(|f| f.root), l.snapshot);
            edges.push(EdgeJson {
                from: rid.clone(),
                to: n.id.clone(),
                kind: "output",
            });
            node(&mut nodes, n);
        }
        for i in &l.run.inputs {
            let (snap, f) = match l.run.before.and_then(|b| src.file(&b, i).map(|f| (b, f))) {
                Some((b, f)) => (b, Some(f)),
                None => (l.snapshot, src.file(&l.snapshot, i)),
            };
            let content = f.map(|f| f.root);
            let n = file_node(i, content, snap);
            edges.push(EdgeJson {
                from: n.id.clone(),
                to: rid.clone(),
                kind: "input",
            });
            let fid = n.id.clone();
            node(&mut nodes, n);
            if let Some(c) = content
                && let Some(p) = producer(src, &makers, &mut outputs, c, l.run.recorded_ns)
            {
                edges.push(EdgeJson {
                    from: format!("run:{}", p.id.short()),
                    to: fid,
                    kind: "output",
                });
                todo.push(p);
            }
        }
        for d in &l.run.datasets {
            let id = format!("dataset:{}@{}", d.name, d.snapshot.short());
            node(
                &mut nodes,
                NodeJson {
                    id: id.clone(),
                    kind: "dataset",
                    label: format!("dataset {} @ {}", d.name, d.snapshot.short()),
                    run: None,
                    snapshot: Some(d.snapshot),
                    path: Some(d.path.clone()),
                    content: None,
                },
            );
            edges.push(EdgeJson {
                from: id,
                to: rid.clone(),
                kind: "input",
            });
        }
    }
    edges.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    edges.dedup_by(|a, b| a.from == b.from && a.to == b.to);
    ProvenanceJson { root, nodes, edges }
}

fn print_graph_text(g: &ProvenanceJson) {
    println!("provenance of {}:", g.root);
    for e in &g.edges {
        let arrow = if e.kind == "input" {
            "is an input of"
        } else {
            "output"
        };
        println!("  {} {arrow} {}", e.from, e.to);
    }
}

fn print_dot(g: &ProvenanceJson) {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    println!("digraph provenance {{\n  rankdir=LR;");
    for n in &g.nodes {
        let shape = match n.kind {
            "run" => "box",
            "dataset" => "cylinder",
            _ => "note",
        };
        println!("  {} [label={}, shape={shape}];", q(&n.id), q(&n.label));
    }
    for e in &g.edges {
        println!("  {} -> {} [label={}];", q(&e.from), q(&e.to), q(e.kind));
    }
    println!("}}");
}
