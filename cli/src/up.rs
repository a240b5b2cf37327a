//! `ds up` and `ds down`: the whole stack on one machine with one command.
//!
//! `ds up` runs, in this process, a hub (storage in a local directory, or
//! `--storage s3://…`) and a runner named `local` connected to it (the
//! docker executor too when a Docker API answers), saves the hub as the
//! default remote of the store with the admin token, and says where the
//! web UI and the admin token are. `--background` starts the same as a
//! detached process (its output in `DATA/up.log`), returns once it is
//! ready, and `ds down` stops it (SIGTERM: running tasks finish first).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ds_proto::RunnerName;

/// The runner `ds up` starts.
const RUNNER: &str = "local";
/// The remote `ds up` saves.
const REMOTE: &str = "local";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address the hub listens on (gRPC, the web UI and the REST API)
    #[arg(long, default_value = "127.0.0.1:7878", value_name = "HOST:PORT")]
    listen: String,
    /// The hub's storage: file:///DIR or s3://BUCKET/PREFIX (S3 settings
    /// from the AWS_* variables) [default: DATA/hub/storage]
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// State of the hub and the runner, the log and pid of `--background`
    /// [default: $XDG_DATA_HOME/ds/up]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Executors the runner offers (repeat) [default: docker and process
    /// when a Docker API answers, else process]
    #[arg(long = "executor", value_name = "process|docker")]
    executors: Vec<String>,
    /// Start in the background and return once ready (`ds down` stops it)
    #[arg(long)]
    background: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The directory `ds up --data` was given [default: $XDG_DATA_HOME/ds/up]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

fn data_dir(d: &Option<PathBuf>) -> PathBuf {
    d.clone()
        .unwrap_or_else(|| crate::data_home().join("ds").join("up"))
}

fn pid_file(data: &Path) -> PathBuf {
    data.join("up.pid")
}

fn ready_file(data: &Path) -> PathBuf {
    data.join("up.ready")
}

/// The pid in `DATA/up.pid`, if that process is alive and is a `ds up`.
fn running(data: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(data))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter().any(|a| *a == b"up").then_some(pid)
}

pub fn up(store: &Path, a: UpArgs) -> Result<ExitCode> {
    let data = data_dir(&a.data);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let data = std::fs::canonicalize(&data)?;
    if let Some(pid) = running(&data) {
        bail!(
            "ds up is already running (pid {pid}, data {}); `ds down` stops it",
            data.display()
        );
    }
    if a.background {
        return background(store, &a, &data);
    }
    foreground(store, a, &data)
}

/// Starts `ds up` again as a detached process and waits until it is ready.
fn background(store: &Path, a: &UpArgs, data: &Path) -> Result<ExitCode> {
    let log_path = data.join("up.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let _ = std::fs::remove_file(ready_file(data));
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--store")
        .arg(store)
        .arg("up")
        .arg("--listen")
        .arg(&a.listen)
        .arg("--data")
        .arg(data);
    if let Some(s) = &a.storage {
        cmd.arg("--storage").arg(s);
    }
    for e in &a.executors {
        cmd.arg("--executor").arg(e);
    }
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own session: closing this terminal does not stop it.
        .process_group(0)
        .spawn()
        .context("starting ds up in the background")?;
    let pid = child.id();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(300) {
        if ready_file(data).exists() {
            let text = std::fs::read_to_string(ready_file(data)).unwrap_or_default();
            print!("{text}");
            println!(
                "ds up: running in the background (pid {pid}; log {}); `ds down` stops it",
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
        {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "ds up stopped before it was ready; the end of {}:\n{}",
                log_path.display(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "ds up was not ready within 300 s (see {})",
        log_path.display()
    )
}

/// Writes `path` readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn foreground(store: &Path, a: UpArgs, data: &Path) -> Result<ExitCode> {
    crate::sync::init_logs();
    crate::sync::raise_open_files("up");
    crate::open::open_or_init(store)?;
    std::fs::write(pid_file(data), format!("{}\n", std::process::id()))?;
    let hub_data = data.join("hub");
    let opts = ds_hub::server::HubOptions {
        listen: a.listen.clone(),
        storage: a.storage.clone(),
        data: hub_data.clone(),
        tls: None,
        advertise: None,
        tasks_domain: None,
        conn_limits: Default::default(),
        tasks: ds_hub::tasks::TaskOptions::with_lease(Duration::from_secs(30)),
        gc_settle: ds_hub::gc::SETTLE,
    };
    let rt = crate::sync::runtime()?;
    // The hub stops after the runner (whose final pushes go to it); the
    // runner drains at the first signal and stops at once at a second:
    // its k-th `signal()` waits for `signals >= k`.
    let (hub_tx, mut hub_stop) = tokio::sync::watch::channel(false);
    let (signals_tx, signals) = tokio::sync::watch::channel(0u32);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let hub = rt.spawn(async move {
        ds_hub::server::run(
            opts,
            move |addr| {
                let _ = ready_tx.send(addr);
            },
            async move {
                let _ = hub_stop.wait_for(|s| *s).await;
            },
        )
        .await
    });
    let addr = match ready_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(a) => a,
        Err(_) => {
            let e = rt
                .block_on(hub)
                .map_err(|e| anyhow!("{e}"))?
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "it stopped".into());
            bail!("the hub did not start: {e}");
        }
    };
    let url = format!("http://{addr}");
    let admin = std::fs::read_to_string(hub_data.join("admin.token"))
        .context("reading the hub's admin token")?
        .trim()
        .to_string();
    let runner_token = rt.block_on(runner_token(&url, &admin, data))?;
    crate::sync::save_default_remote(store, REMOTE, &url, &admin)?;
    let executors = if a.executors.is_empty() {
        match rt.block_on(ds_runner::docker::probe()) {
            Ok(_) => vec!["docker".to_string(), "process".to_string()],
            Err(why) => {
                eprintln!(
                    "ds up: no container engine ({why}); the runner offers the process executor"
                );
                vec!["process".to_string()]
            }
        }
    } else {
        a.executors.clone()
    };
    let cfg = ds_runner::Config {
        hub: url.clone(),
        token: runner_token,
        ca: None,
        name: RunnerName::new(RUNNER).map_err(|e| anyhow!("{e}"))?,
        labels: Default::default(),
        capacity: 4,
        executors: executors.clone(),
        cache: data.join("runner"),
        docker: Default::default(),
        metrics: None,
    };
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let runner = std::thread::Builder::new()
        .name("ds-up-runner".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("ds-runner-link")
                .enable_all()
                .build()?;
            rt.block_on(ds_runner::run(cfg, || {
                let k = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let mut s = signals.clone();
                async move {
                    let _ = s.wait_for(|n| *n >= k).await;
                }
            }))
            .map_err(|e| anyhow!("runner: {e}"))
        })?;
    let banner = format!(
        "ds up: hub and web UI at {url}/ (storage {})\n\
         ds up: log in with the admin token in {}\n\
         ds up: runner {RUNNER:?} offers {}\n\
         ds up: saved remote {REMOTE:?} (the store's default, with the admin token): try\n\
         \x20   ds run -w demo --executor process -- echo hi\n",
        a.storage
            .clone()
            .unwrap_or_else(|| format!("file://{}", hub_data.join("storage").display())),
        hub_data.join("admin.token").display(),
        executors.join(" and "),
    );
    print!("{banner}");
    let _ = std::io::stdout().flush();
    write_private(&ready_file(data), &banner)?;
    rt.block_on(crate::sync::terminated());
    eprintln!("ds up: stopping (running tasks finish first; a second signal stops at once)");
    let _ = signals_tx.send(1);
    rt.spawn(async move {
        crate::sync::terminated().await;
        let _ = signals_tx.send(2);
    });
    let r = runner
        .join()
        .map_err(|_| anyhow!("the runner thread panicked"))?;
    let _ = hub_tx.send(true);
    let h = rt.block_on(hub).map_err(|e| anyhow!("{e}"))?;
    let _ = std::fs::remove_file(ready_file(data));
    let _ = std::fs::remove_file(pid_file(data));
    r?;
    h.map_err(|e| anyhow!("hub: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// The runner's token, made once and kept in `DATA/runner.token`.
async fn runner_token(url: &str, admin: &str, data: &Path) -> Result<String> {
    let path = data.join("runner.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        // Kept only while the hub still knows it (a new --storage does not).
        let t = t.trim().to_string();
        if probe_runner_token(url, &t).await {
            return Ok(t);
        }
    }
    let mut remote = ds_sync::Remote::connect(url, admin, None).await?;
    let t = remote
        .create_token(vec![], "ds up runner".into(), Some(RUNNER.into()))
        .await?;
    write_private(&path, &format!("{t}\n"))?;
    Ok(t)
}

/// Whether the hub takes `token` as a runner token: a runner token may
/// not list tasks, and says so (a token the hub does not know is
/// unauthenticated instead).
async fn probe_runner_token(url: &str, token: &str) -> bool {
    let Ok(mut c) = ds_sync::tasks::connect(url, token, None).await else {
        return false;
    };
    match c
        .list_tasks(ds_proto::runner::ListTasksRequest::default())
        .await
    {
        Err(s) => s.code() == tonic::Code::PermissionDenied,
        Ok(_) => false,
    }
}

pub fn down(a: DownArgs) -> Result<ExitCode> {
    let data = data_dir(&a.data);
    let Some(pid) = running(&data) else {
        eprintln!(
            "ds down: nothing to stop (no ds up running with data {})",
            data.display()
        );
        let _ = std::fs::remove_file(pid_file(&data));
        return Ok(ExitCode::SUCCESS);
    };
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    kill(Pid::from_raw(pid), Signal::SIGTERM).with_context(|| format!("stopping pid {pid}"))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if running(&data).is_none() {
            eprintln!("ds down: stopped (pid {pid})");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("ds up (pid {pid}) did not stop within 120 s; its running tasks may still be finishing")
}
