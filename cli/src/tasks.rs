//! `ds run`, `ds tasks`, `ds task`, `ds logs`, `ds runners` and `ds runner`:
//! the CLI face of tasks. The client commands reach the hub like `ds push`
//! (`--hub`, `--token`, `DS_HUB`, `DS_TOKEN`, a saved remote); `ds runner`
//! is the daemon (`ds-runner`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use ds_proto::RunnerName;
use ds_proto::runner::{
    CancelRequest, GetTaskRequest, ListRunnersRequest, ListTasksRequest, LogsRequest,
    SubmitRequest, TaskInfo, TaskSpec,
};
use ds_sync::tasks::Tasks;

use crate::cmd::json::{RunnerJson, TaskJson};
use crate::cmd::print_json;
use crate::sync::{HubArgs, runtime, target, terminated};

#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct RunArgs {
    /// Workspace the task runs in: mounted read-write as the workload's
    /// home and working directory, snapshotted and pushed when it ends
    #[arg(long, short = 'w', value_name = "W", required = true)]
    workspace: Option<String>,
    /// Executor: process (a child process of the runner) or docker (a
    /// container) [default: the runner's first]
    #[arg(long, value_name = "process|docker")]
    executor: Option<String>,
    /// Container image (docker executor)
    #[arg(long, value_name = "IMG")]
    image: Option<String>,
    /// Run only on runners with this label (repeat for several)
    #[arg(long = "label", value_name = "K=V", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Set a variable in the workload's environment (repeat for several)
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Run it again, up to N times, when its runner is lost
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: u32,
    /// Print the task id (with --json, a JSON object) and return at once
    #[arg(long, short = 'd')]
    detach: bool,
    /// Git repository to check out into the workspace at --ref first
    #[arg(long, requires = "git_ref", value_name = "URL")]
    repo: Option<String>,
    /// Commit (or branch, tag) of --repo
    #[arg(long = "ref", requires = "repo", value_name = "REF")]
    git_ref: Option<String>,
    /// A TCP port the workload serves (JupyterLab, TensorBoard, a model
    /// server): the hub relays it at /tasks/<id>/ to whoever holds a
    /// token for the workspace, though the runner accepts no connections
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Relay paths whole (/tasks/<id>/…) instead of stripping /tasks/<id>:
    /// for apps given their base URL, e.g. jupyter lab
    /// --ServerApp.base_url=/tasks/$DS_TASK/
    #[arg(long, requires = "port")]
    keep_prefix: bool,
    /// Mount a dataset (or any workspace) read-only at PATH: relative to
    /// the home directory, or absolute in a container (docker executor).
    /// NAME alone is its newest snapshot when the task is submitted; NAME@ID
    /// a snapshot of its history (a prefix of the id will do). The task
    /// and its runs record the snapshot they saw. Repeat for several
    #[arg(long = "dataset", value_name = "NAME[@SNAP]:PATH", value_parser = dataset_mount)]
    datasets: Vec<ds_proto::runner::DatasetMount>,
    #[command(flatten)]
    hub: HubArgs,
    /// The command and its arguments, run as is (no shell)
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(subcommand)]
    sub: Option<RunSub>,
}

#[derive(Debug, clap::Subcommand)]
pub enum RunSub {
    /// Show a recorded run with its provenance: inputs and outputs with
    /// their content ids, code, environment
    Show(crate::runs::RunShowArgs),
}

fn dataset_mount(s: &str) -> Result<ds_proto::runner::DatasetMount, String> {
    ds_proto::mounts::parse(s).map_err(|e| e.0)
}

pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Only tasks of this workspace
    #[arg(long, short = 'w', value_name = "W")]
    workspace: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Show a task: its state, runner, exit status and final snapshot
    Show {
        id: String,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Stop a task: a queued one at once; a running one gets SIGTERM, a
    /// grace period, then SIGKILL, and still its final snapshot and push
    Cancel {
        id: String,
        #[command(flatten)]
        hub: HubArgs,
    },
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    cmd: TaskCmd,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The task
    id: String,
    /// Keep following until the task ends
    #[arg(long, short = 'f')]
    follow: bool,
    /// Start at this line (0 is the first)
    #[arg(long, default_value_t = 0)]
    from: u64,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// Hub URL (the runner connects out; nothing connects to it)
    #[arg(long, env = "DS_HUB", value_name = "URL")]
    hub: String,
    /// Runner token, made by an admin with `ds token --runner NAME`
    #[arg(
        long,
        env = "DS_RUNNER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: String,
    /// The runner's name: the one its token was made for
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Executor to offer (repeat for several; the first is the default)
    #[arg(
        long = "executor",
        value_name = "process|docker",
        default_value = "process"
    )]
    executors: Vec<String>,
    /// Label tasks can ask for with `ds run --label` (repeat for several)
    #[arg(long = "label", value_name = "K=V", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Tasks run at once
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// Cache: a ds store of the workspaces tasks ran on (only changes are
    /// pulled next time) and the tasks' mounts [default:
    /// $XDG_DATA_HOME/ds/runner]
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// PEM file of the CA that signed an https hub's certificate
    #[arg(long, env = "DS_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Docker executor: the containers' network mode (none, host, bridge,
    /// a network's name) [default: the engine's]
    #[arg(long, value_name = "MODE", default_value = "")]
    docker_network: String,
    /// Docker executor: run workloads as UID[:GID] (their home is shown as
    /// owned by it) [default: the image's user]
    #[arg(long, value_name = "UID[:GID]", default_value = "")]
    docker_user: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (tasks, reconnects,
    /// heartbeats, output lines, relayed connections and bytes)
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
}

async fn client(store: &Path, a: &HubArgs) -> Result<Tasks> {
    let (url, token) = target(store, a)?;
    ds_sync::tasks::connect(&url, &token, a.ca_cert.as_deref())
        .await
        .with_context(|| format!("connecting to {url}"))
}

fn show(t: &TaskInfo) {
    let j = TaskJson::from(t);
    println!("task      {}", j.id);
    println!("state     {}", j.state);
    println!("workspace {}", j.workspace);
    println!("command   {}", j.command.join(" "));
    if let Some(r) = &j.runner {
        println!(
            "runner    {r} (attempt {}, executor {})",
            j.attempts,
            j.executor.as_deref().unwrap_or("?")
        );
    }
    for d in &j.datasets {
        let at = d.snapshot.map(|s| s.to_hex()).unwrap_or_default();
        println!("dataset   {}@{at} at {} (read-only)", d.name, d.path);
    }
    match (j.exit_code, j.signal) {
        (Some(c), _) => println!("exit      {c}"),
        (_, Some(s)) => println!("exit      killed by signal {s}"),
        _ => {}
    }
    if let Some(s) = j.snapshot {
        let to = j.pushed_to.unwrap_or_default();
        let c = if j.conflict {
            " (conflict: the workspace had moved)"
        } else {
            ""
        };
        println!("snapshot  {s} -> {to}{c}");
    }
    if let Some(e) = j.error {
        println!("error     {e}");
    }
}

/// The exit status `ds run` ends with for a finished task.
fn exit_for(t: &TaskInfo) -> ExitCode {
    match (t.exit_code, t.signal) {
        (Some(c), _) => ExitCode::from((c & 0xff) as u8),
        (_, Some(s)) => ExitCode::from((128 + (s & 0x7f)) as u8),
        _ => ExitCode::from(1),
    }
}

pub fn run(store: &Path, a: RunArgs) -> Result<ExitCode> {
    if let Some(RunSub::Show(s)) = a.sub {
        return crate::runs::show(store, s);
    }
    let spec = TaskSpec {
        workspace: a.workspace.context("--workspace is required")?,
        command: a.command,
        executor: a.executor.unwrap_or_default(),
        image: a.image.unwrap_or_default(),
        labels: a.labels.into_iter().collect(),
        retries: a.retries,
        repo: a.repo.unwrap_or_default(),
        git_ref: a.git_ref.unwrap_or_default(),
        env: a.env.into_iter().collect(),
        port: a.port.map(u32::from).unwrap_or(0),
        keep_prefix: a.keep_prefix,
        datasets: a.datasets,
    };
    runtime()?.block_on(async {
        let mut c = client(store, &a.hub).await?;
        let t = c
            .submit(SubmitRequest { spec: Some(spec) })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?
            .into_inner();
        if a.detach {
            if a.hub.json {
                print_json(&TaskJson::from(&t))?;
            } else {
                println!("{}", t.id);
            }
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "ds: task {} queued; `ds logs -f {}` shows it again",
            t.id, t.id
        );
        // With --json, stdout holds only the final JSON: the output goes to stderr.
        let end = follow(&mut c, &t.id, 0, true, a.hub.json).await?;
        match end.state.as_str() {
            "succeeded" => {}
            "lost" => eprintln!("ds: task {} was lost: {}", t.id, end.error),
            s => {
                if !end.error.is_empty() {
                    eprintln!("ds: task {} {s}: {}", t.id, end.error);
                }
            }
        }
        if a.hub.json {
            print_json(&TaskJson::from(&end))?;
        }
        Ok(exit_for(&end))
    })
}

/// Prints a task's output from line `from` (stdout lines on stdout, the
/// rest on stderr). With `follow`, until the task ends, reconnecting after
/// a dropped stream where it left off; returns the task as it ended.
async fn follow(
    c: &mut Tasks,
    id: &str,
    from: u64,
    follow: bool,
    all_to_stderr: bool,
) -> Result<TaskInfo> {
    let mut next = from;
    let mut failures = 0u32;
    loop {
        let r = c
            .logs(LogsRequest {
                task: id.into(),
                from: next,
                follow,
            })
            .await;
        let mut s = match r {
            Ok(s) => s.into_inner(),
            Err(e) if retryable(&e) && failures < 60 => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => bail!("{}", e.message()),
        };
        loop {
            match s.message().await {
                Ok(Some(m)) => {
                    failures = 0;
                    let mut out = std::io::stdout().lock();
                    let mut err = std::io::stderr().lock();
                    for (i, l) in m.lines.iter().enumerate() {
                        if m.first + (i as u64) < next {
                            continue;
                        }
                        if l.stream == 1 && !all_to_stderr {
                            out.write_all(&l.text)?;
                            out.write_all(b"\n")?;
                        } else {
                            err.write_all(&l.text)?;
                            err.write_all(b"\n")?;
                        }
                    }
                    out.flush()?;
                    next = next.max(m.first + m.lines.len() as u64);
                    if let Some(end) = m.ended {
                        return Ok(end);
                    }
                }
                Ok(None) => {
                    if !follow {
                        let t = c
                            .get_task(GetTaskRequest { task: id.into() })
                            .await
                            .map_err(|s| anyhow!("{}", s.message()))?;
                        return Ok(t.into_inner());
                    }
                    break; // the hub went away mid-follow: resume
                }
                Err(e) if retryable(&e) => break,
                Err(e) => bail!("{}", e.message()),
            }
        }
        failures += 1;
        if failures > 60 {
            bail!(
                "lost the hub while following task {id}; `ds logs -f {id} --from {next}` resumes"
            );
        }
        eprintln!("ds: the hub's stream broke; resuming task {id}'s output at line {next}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    )
}

pub fn tasks(store: &Path, a: TasksArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut c = client(store, &a.hub).await?;
        let r = c
            .list_tasks(ListTasksRequest {
                workspace: a.workspace.unwrap_or_default(),
                limit: a.limit,
            })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?
            .into_inner();
        if a.hub.json {
            let v: Vec<TaskJson> = r.tasks.iter().map(TaskJson::from).collect();
            return print_json(&v).map(|_| ExitCode::SUCCESS);
        }
        if r.tasks.is_empty() {
            eprintln!("ds: no tasks");
        }
        for t in &r.tasks {
            let j = TaskJson::from(t);
            let exit = j
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "{}  {:<9}  {:<4}  {:<16}  {:<12}  {}",
                j.id,
                j.state,
                exit,
                j.workspace,
                j.runner.as_deref().unwrap_or("-"),
                j.command.join(" ")
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn task(store: &Path, a: TaskArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let (id, hub, cancel) = match &a.cmd {
            TaskCmd::Show { id, hub } => (id, hub, false),
            TaskCmd::Cancel { id, hub } => (id, hub, true),
        };
        let mut c = client(store, hub).await?;
        let t = if cancel {
            c.cancel(CancelRequest { task: id.clone() }).await
        } else {
            c.get_task(GetTaskRequest { task: id.clone() }).await
        }
        .map_err(|s| anyhow!("{}", s.message()))?
        .into_inner();
        if hub.json {
            print_json(&TaskJson::from(&t))?;
        } else {
            show(&t);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn logs(store: &Path, a: LogsArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut c = client(store, &a.hub).await?;
        follow(&mut c, &a.id, a.from, a.follow, false).await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn runners(store: &Path, a: HubArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut c = client(store, &a).await?;
        let r = c
            .list_runners(ListRunnersRequest {})
            .await
            .map_err(|s| anyhow!("{}", s.message()))?
            .into_inner();
        if a.json {
            let v: Vec<RunnerJson> = r.runners.iter().map(RunnerJson::from).collect();
            return print_json(&v).map(|_| ExitCode::SUCCESS);
        }
        if r.runners.is_empty() {
            eprintln!("ds: no runners have connected yet (start one with `ds runner`)");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for r in &r.runners {
            let ago = |ms: u64| format!("{:.0}s ago", now.saturating_sub(ms) as f64 / 1000.0);
            let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{:<16} {:<7} capacity {} running [{}] labels [{}] connected {} heartbeat {} via {}",
                r.name,
                if r.online { "online" } else { "offline" },
                r.capacity,
                r.running.join(" "),
                labels.join(" "),
                ago(r.connected_ms),
                ago(r.heartbeat_ms),
                r.hub
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn runner(a: RunnerArgs) -> Result<ExitCode> {
    crate::sync::init_logs();
    let name = RunnerName::new(&a.name).map_err(|e| anyhow!("--name: {e}"))?;
    let cache = a
        .cache
        .unwrap_or_else(|| crate::data_home().join("ds").join("runner"));
    let cfg = ds_runner::Config {
        hub: a.hub,
        token: a.token,
        ca: a.ca_cert,
        name,
        labels: a.labels.into_iter().collect::<HashMap<_, _>>(),
        capacity: a.capacity,
        executors: a.executors,
        cache,
        docker: ds_runner::docker::DockerOptions {
            network: a.docker_network,
            user: a.docker_user,
        },
        metrics: a.metrics_listen,
    };
    // The link's own runtime: nothing a task does runs on it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ds-runner-link")
        .enable_all()
        .build()?;
    rt.block_on(ds_runner::run(cfg, terminated))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}
