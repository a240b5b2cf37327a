//! The container executor: the workload in a container of its own, through
//! the Docker Engine API (bollard; podman serves the same API), with the
//! workspace mount bind-mounted as its home directory.
//!
//! Same contract as the process executor ([`crate::exec`]): the command as
//! given (the image's entrypoint, if any, still applies), `$HOME` and the
//! working directory are the workspace ([`HOME_IN_CONTAINER`]), a clean
//! environment plus the task's variables, output streamed line by line —
//! the engine cuts long lines into 16 KiB frames; [`LineCutter`] joins
//! them again. Cancel is SIGTERM, the grace period, SIGKILL. The container
//! is removed at the end whatever happened. The image must be present on
//! the engine or pullable by it; a missing one fails the task with the
//! engine's reason.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, LogsOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use ds_proto::TaskId;
use ds_proto::runner::TaskSpec;
use futures::StreamExt;

use crate::exec::{Exit, Io, LineCutter};
use crate::ledger::{STDERR, STDOUT};

/// Where the workspace appears inside the container.
pub const HOME_IN_CONTAINER: &str = ds_proto::HOME_IN_CONTAINER;

/// How containers are run (runner settings).
#[derive(Debug, Clone, Default)]
pub struct DockerOptions {
    /// Network mode (`none`, `host`, `bridge`, a network's name); empty:
    /// the engine's default.
    pub network: String,
    /// `UID[:GID]` the workload runs as; empty: the image's user.
    pub user: String,
}

fn engine() -> Result<Docker, String> {
    Docker::connect_with_defaults().map_err(|e| {
        format!("cannot reach the container engine (DOCKER_HOST or /var/run/docker.sock): {e}")
    })
}

/// Checks that an engine answers; the runner refuses to offer `docker`
/// otherwise.
pub async fn probe() -> Result<String, String> {
    let d = engine()?
        .negotiate_version()
        .await
        .map_err(|e| format!("the container engine does not answer: {e}"))?;
    let v = d
        .version()
        .await
        .map_err(|e| format!("the container engine does not answer: {e}"))?;
    Ok(format!(
        "{} {}",
        v.components
            .and_then(|c| c.first().map(|c| c.name.clone()))
            .unwrap_or_else(|| "engine".into()),
        v.version.unwrap_or_default()
    ))
}

/// Runs the task's container to its end. Err: it could not be started.
/// `(home, binds)`: the workspace's mount, and further binds
/// (`HOST:CONTAINER:ro`, the task's datasets).
pub async fn run(
    spec: &TaskSpec,
    id: &TaskId,
    (home, binds): (&Path, &[String]),
    io: Io<'_>,
    opts: &DockerOptions,
    say: &(dyn Fn(String) + Sync),
) -> Result<Exit, String> {
    let d = engine()?
        .negotiate_version()
        .await
        .map_err(|e| format!("the container engine does not answer: {e}"))?;
    let image = ensure_image(&d, &spec.image, say).await?;
    io.runs.set_image_digest(image.clone());
    let name = format!("ds-task-{id}");
    let mut env = vec![
        format!("HOME={HOME_IN_CONTAINER}"),
        format!("DS_TASK={id}"),
        format!("DS_WORKSPACE={}", spec.workspace),
    ];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.command.clone()),
        env: Some(env),
        working_dir: Some(HOME_IN_CONTAINER.into()),
        user: (!opts.user.is_empty()).then(|| opts.user.clone()),
        labels: Some(HashMap::from([("ds.task".to_string(), id.to_string())])),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        host_config: Some(HostConfig {
            binds: Some(
                std::iter::once(format!("{}:{HOME_IN_CONTAINER}", home.display()))
                    .chain(binds.iter().cloned())
                    .collect(),
            ),
            network_mode: (!opts.network.is_empty()).then(|| opts.network.clone()),
            // The task's port, published on the runner's loopback only (an
            // ephemeral port the engine picks): the relay's tunnels connect
            // there, nothing else can.
            // (With the host's network the port is the host's already; with
            // none, nothing can reach it.)
            port_bindings: (spec.port != 0 && !matches!(opts.network.as_str(), "host" | "none"))
                .then(|| {
                    HashMap::from([(
                        format!("{}/tcp", spec.port),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(String::new()),
                        }]),
                    )])
                }),
            ..HostConfig::default()
        }),
        exposed_ports: (spec.port != 0).then(|| vec![format!("{}/tcp", spec.port)]),
        ..ContainerCreateBody::default()
    };
    let create = || {
        d.create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body.clone(),
        )
    };
    if create().await.is_err() {
        // A container of this task left by a killed runner: replace it.
        remove(&d, &name).await;
        create()
            .await
            .map_err(|e| format!("cannot create a container of {}: {e}", spec.image))?;
    }
    say(format!(
        "container {name} of image {} ({image})",
        spec.image
    ));
    let host_port = (opts.network == "host").then_some(spec.port);
    let r = supervise(&d, &name, id, io, host_port).await;
    remove(&d, &name).await;
    r
}

/// The image's id, pulling it first when the engine lacks it.
async fn ensure_image(
    d: &Docker,
    image: &str,
    say: &(dyn Fn(String) + Sync),
) -> Result<String, String> {
    if let Ok(i) = d.inspect_image(image).await {
        return Ok(i.id.unwrap_or_default());
    }
    say(format!("pulling image {image}"));
    let mut pull = d.create_image(
        Some(CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(p) = pull.next().await {
        p.map_err(|e| format!("unknown image {image:?}: the engine could not pull it: {e}"))?;
    }
    d.inspect_image(image)
        .await
        .map(|i| i.id.unwrap_or_default())
        .map_err(|e| format!("unknown image {image:?}: {e}"))
}

/// The loopback address the engine published the task's port on.
fn published(n: Option<bollard::models::NetworkSettings>) -> Option<std::net::SocketAddr> {
    let ports = n?.ports?;
    let (_, bindings) = ports.into_iter().next()?;
    let b = bindings?.into_iter().next()?;
    let port: u16 = b.host_port?.parse().ok()?;
    Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// `host_port`: the task's port when the container shares the host's
/// network (nothing is published then: the port is the host's own).
async fn supervise(
    d: &Docker,
    name: &str,
    id: &TaskId,
    io: Io<'_>,
    host_port: Option<u32>,
) -> Result<Exit, String> {
    let Io {
        ledger,
        control,
        runs,
    } = io;
    d.start_container(name, None)
        .await
        .map_err(|e| format!("cannot start container {name}: {e}"))?;
    // The container's main process, for the CPU time and peak memory of
    // its runs (a host pid: the engine runs on this machine).
    if let Ok(i) = d.inspect_container(name, None).await {
        if let Some(pid) = i.state.and_then(|s| s.pid).filter(|p| *p > 0) {
            runs.set_pid(pid as u32);
        }
        if let Some(a) = published(i.network_settings) {
            control.set_target(a);
        }
    }
    if let Some(Ok(port)) = host_port.map(u16::try_from)
        && port != 0
    {
        control.set_target(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let mut tap = runs.tap();
    let mut logs = d.logs(
        name,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    let mut wait = d.wait_container(name, None::<WaitContainerOptions>);
    let (mut out, mut err) = (LineCutter::default(), LineCutter::default());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut kill_at: Option<Instant> = None;
    let mut exit: Option<Result<Exit, String>> = None;
    let mut logs_done = false;
    let mut got_output = false;
    let mut exited_at: Option<Instant> = None;
    // The ledger may block (backpressure); this runtime is the task
    // thread's own, so that only pauses reading the container's output.
    let emit = |cut: &mut LineCutter, stream: u32, b: &[u8]| {
        cut.feed(b, |l| ledger.line(id, stream, l));
    };
    while exit.is_none() || !logs_done {
        tokio::select! {
            l = logs.next(), if !logs_done => match l {
                Some(Ok(LogOutput::StdOut { message })) => {
                    got_output = true;
                    tap.feed(&message);
                    emit(&mut out, STDOUT, &message)
                }
                Some(Ok(LogOutput::StdErr { message } | LogOutput::Console { message })) => {
                    got_output = true;
                    emit(&mut err, STDERR, &message)
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(_)) | None => logs_done = true,
            },
            w = wait.next(), if exit.is_none() => {
                exit = Some(match w {
                    Some(Ok(r)) => Ok(Exit { code: Some(r.status_code as i32), signal: None }),
                    Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                        Ok(Exit { code: Some(code as i32), signal: None })
                    }
                    Some(Err(e)) => Err(format!("waiting for container {name}: {e}")),
                    None => Err(format!("the engine stopped reporting on container {name}")),
                });
            }
            _ = tick.tick() => {
                if exit.is_some() {
                    // The log stream ends with the container; an engine
                    // that keeps it open gets 5 s.
                    let t = *exited_at.get_or_insert_with(Instant::now);
                    if t.elapsed() > Duration::from_secs(5) {
                        logs_done = true;
                    }
                    continue;
                }
                let signal = if control.dropped() {
                    Some("SIGKILL")
                } else if let Some(grace) = control.cancelled() {
                    match kill_at {
                        None => {
                            kill_at = Some(Instant::now() + Duration::from_secs(grace.into()));
                            Some("SIGTERM")
                        }
                        Some(t) if Instant::now() >= t => Some("SIGKILL"),
                        Some(_) => None,
                    }
                } else {
                    None
                };
                if let Some(s) = signal {
                    let _ = d
                        .kill_container(name, Some(KillContainerOptions { signal: s.into() }))
                        .await;
                }
            }
        }
    }
    // A follow stream that failed, or gave nothing before the engine's
    // grace ran out (a loaded engine: the container had exited before its
    // logs were asked for), is asked once more, whole, now that the
    // container has exited: no output is lost to that race.
    if !got_output {
        let mut again = d.logs(
            name,
            Some(LogsOptions {
                follow: false,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        while let Ok(Some(Ok(l))) =
            tokio::time::timeout(Duration::from_secs(30), again.next()).await
        {
            match l {
                LogOutput::StdOut { message } => {
                    tap.feed(&message);
                    emit(&mut out, STDOUT, &message)
                }
                LogOutput::StdErr { message } | LogOutput::Console { message } => {
                    emit(&mut err, STDERR, &message)
                }
                LogOutput::StdIn { .. } => {}
            }
        }
    }
    out.finish(|l| ledger.line(id, STDOUT, l));
    tap.finish();
    err.finish(|l| ledger.line(id, STDERR, l));
    exit.unwrap_or_else(|| Err("no exit status".into()))
}

async fn remove(d: &Docker, name: &str) {
    let _ = d
        .remove_container(
            name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
}
