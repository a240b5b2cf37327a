//! Tasks through real `ds hub` and `ds runner` processes over loopback
//! gRPC, with the process executor and real FUSE mounts: output streamed
//! and exit codes propagated, files the workload wrote come back with
//! `ds pull`, tokens kept apart, a SIGKILLed runner's task lost (and its
//! retry run elsewhere), a hub restart mid-task losing no line, cancel,
//! floods, two tasks on one workspace, a conflicting push kept aside.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::{Hub, start_hub_with};
use crate::*;

pub(crate) struct Runner {
    child: Child,
    cache: PathBuf,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    /// Waits for the runner to exit and for all of its stderr.
    fn exited(&mut self) -> std::process::ExitStatus {
        let st = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        st
    }
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_tasks(&self.cache);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Detaches the mounts a killed runner left behind.
fn unmount_tasks(cache: &Path) {
    if let Ok(rd) = std::fs::read_dir(cache.join("tasks")) {
        for e in rd.flatten() {
            let mut mounts: Vec<PathBuf> = std::fs::read_dir(e.path().join("datasets"))
                .map(|d| d.flatten().map(|d| d.path()).collect())
                .unwrap_or_default();
            mounts.push(e.path().join("home"));
            for m in mounts {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(m)
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

pub(crate) fn runner_token(hub: &Hub, name: &str) -> String {
    let t = tempfile::tempdir().unwrap();
    let out = ok(ds(t.path()).args([
        "token", "--runner", name, "--hub", &hub.url, "--token", &hub.admin,
    ]));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub(crate) fn spawn_runner(
    hub: &Hub,
    token: &str,
    name: &str,
    cache: &Path,
    extra: &[&str],
) -> Runner {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ds"));
    c.args([
        "runner", "--hub", &hub.url, "--token", token, "--name", name, "--cache",
    ])
    .arg(cache)
    .args(["--executor", "process"])
    .args(extra)
    .env_remove("DS_TOKEN")
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start ds runner");
    let log = Arc::new(Mutex::new(String::new()));
    let (l, err) = (log.clone(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let mut l = l.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    Runner {
        child,
        cache: cache.to_path_buf(),
        log,
        reader: Some(reader),
    }
}

/// Starts a runner and waits until it is connected.
pub(crate) fn start_runner(
    hub: &Hub,
    token: &str,
    name: &str,
    cache: &Path,
    extra: &[&str],
) -> Runner {
    let mut r = spawn_runner(hub, token, name, cache, extra);
    wait_until(&format!("runner {name} connects"), 60, || {
        if let Ok(Some(st)) = r.child.try_wait() {
            panic!("ds runner exited ({st}):\n{}", r.log());
        }
        r.log().contains("connected to")
    });
    r
}

pub(crate) fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn client(store: &Path, hub: &Hub, token: &str, args: &[&str]) -> Command {
    let mut c = ds(store);
    c.args(args).env("DS_HUB", &hub.url).env("DS_TOKEN", token);
    c
}

pub(crate) fn show(store: &Path, hub: &Hub, token: &str, id: &str) -> serde_json::Value {
    json(&ok(&mut client(
        store,
        hub,
        token,
        &["task", "show", id, "--json"],
    )))
}

pub(crate) fn wait_state(
    store: &Path,
    hub: &Hub,
    token: &str,
    id: &str,
    want: &[&str],
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(&format!("task {id} is {want:?} (last: {last})"), 90, || {
        last = show(store, hub, token, id);
        want.contains(&last["state"].as_str().unwrap())
    });
    last
}

pub(crate) fn detach(
    store: &Path,
    hub: &Hub,
    token: &str,
    ws: &str,
    cmd: &[&str],
    extra: &[&str],
) -> String {
    let mut c = client(store, hub, token, &["run", "-d", "--json", "-w", ws]);
    c.args(extra).arg("--").args(cmd);
    let v = json(&ok(&mut c));
    v["task"].as_str().unwrap().to_string()
}

pub(crate) fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub(crate) fn logs(store: &Path, hub: &Hub, token: &str, id: &str) -> String {
    text(&ok(&mut client(store, hub, token, &["logs", id]))).0
}

pub(crate) fn hub(t: &Path, lease: &str) -> Hub {
    start_hub_with(&t.join("hub"), None, &[], &["--lease", lease])
}

#[test]
fn a_task_runs_on_a_runner_streams_its_output_and_its_files_come_back() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("input.txt"), b"from the laptop\n").unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut client(&me, &hub, &hub.admin, &["push", "w"]));
    let rt = runner_token(&hub, "r1");
    let runner = start_runner(
        &hub,
        &rt,
        "r1",
        &t.path().join("cache"),
        &["--label", "gpu=yes"],
    );

    // Output streamed, stdout and stderr apart, the exit code propagated.
    let script = "cat input.txt; echo \"home=$HOME pwd=$(pwd) tok=${DS_RUNNER_TOKEN}${DS_TOKEN}\"; \
                  echo to-stderr >&2; echo result > out.txt; mkdir -p d/e; echo deep > d/e/f; exit 3";
    let o = client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run", "-w", "w", "--label", "gpu=yes", "--", "sh", "-c", script,
        ],
    )
    .output()
    .unwrap();
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(3),
        "stdout {out}\nstderr {err}\nrunner {}",
        runner.log()
    );
    assert!(out.starts_with("from the laptop\n"), "{out}");
    assert!(
        !out.contains("to-stderr") && err.contains("to-stderr"),
        "{out} / {err}"
    );
    let home = out.lines().nth(1).unwrap();
    assert!(
        home.contains("/cache/tasks/t") && home.ends_with("tok="),
        "HOME is the mount, no token leaks: {home}"
    );
    let pwd = home.split(' ').nth(1).unwrap().trim_start_matches("pwd=");
    assert!(home.starts_with(&format!("home={pwd} ")), "{home}");

    let tasks = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["tasks", "--json"],
    )));
    let task = &tasks.as_array().unwrap()[0];
    assert_eq!(task["state"], "failed");
    assert_eq!(task["exit_code"], 3);
    assert_eq!(task["workspace"], "w");
    assert_eq!(task["runner"], "r1");
    assert_eq!(task["executor"], "process");
    let snap = task["snapshot"].as_str().unwrap().to_string();
    assert_eq!(task["pushed_to"], "w");

    // The files it wrote are in the workspace, on the hub, as its head.
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    let cat = ok(ds(&me).args(["cat", "w", "out.txt"]));
    assert_eq!(cat.stdout, b"result\n");
    assert_eq!(ok(ds(&me).args(["cat", "w", "d/e/f"])).stdout, b"deep\n");
    let log = json(&ok(ds(&me).args(["log", "w", "--json"])));
    assert_eq!(log[0]["id"], snap.as_str());

    // Detached, with --json; a second task moves only what changed.
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["sh", "-c", "cat out.txt; echo two >> out.txt"],
        &[],
    );
    let done = wait_state(&me, &hub, &hub.admin, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(
        done["base"],
        snap.as_str(),
        "mounted at the previous task's snapshot"
    );
    assert_eq!(logs(&me, &hub, &hub.admin, &id), "result\n");
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(
        ok(ds(&me).args(["cat", "w", "out.txt"])).stdout,
        b"result\ntwo\n"
    );

    // A command that does not exist fails the task with a reason.
    let o = client(
        &me,
        &hub,
        &hub.admin,
        &["run", "-w", "w", "--", "no-such-command-ds"],
    )
    .output()
    .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot start \"no-such-command-ds\""), "{err}");

    // A workspace the hub does not have starts empty and is created.
    let o = ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run",
            "-w",
            "fresh",
            "--",
            "sh",
            "-c",
            "ls -A; echo new > n",
        ],
    ));
    assert_eq!(text(&o).0, "", "a new workspace is empty");
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "fresh"]));
    assert_eq!(ok(ds(&me).args(["cat", "fresh", "n"])).stdout, b"new\n");

    // A label no runner has: the task waits in the queue.
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["true"],
        &["--label", "gpu=no"],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(show(&me, &hub, &hub.admin, &id)["state"], "queued");
    let c = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["task", "cancel", &id, "--json"],
    )));
    assert_eq!(c["state"], "cancelled");

    let rs = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["runners", "--json"],
    )));
    assert_eq!(rs[0]["name"], "r1");
    assert_eq!(rs[0]["online"], true);
    assert_eq!(rs[0]["labels"]["gpu"], "yes");
}

#[test]
fn runner_and_user_tokens_are_kept_apart() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let user =
        String::from_utf8(ok(&mut client(&me, &hub, &hub.admin, &["token", "-w", "a"])).stdout)
            .unwrap()
            .trim()
            .to_string();
    // A user token cannot connect as a runner.
    let mut r = spawn_runner(&hub, &user, "r1", &t.path().join("c1"), &[]);
    let st = r.exited();
    assert!(!st.success());
    assert!(
        r.log().contains("only a runner token may connect"),
        "{}",
        r.log()
    );
    // A runner token only connects under its own name.
    let rt = runner_token(&hub, "r1");
    let mut r = spawn_runner(&hub, &rt, "r2", &t.path().join("c2"), &[]);
    assert!(!r.exited().success());
    assert!(r.log().contains("belongs to runner \"r1\""), "{}", r.log());
    // A wrong token.
    let mut r = spawn_runner(&hub, "not-a-token", "r1", &t.path().join("c3"), &[]);
    assert!(!r.exited().success());
    // A runner token is not a user's.
    let o = client(&me, &hub, &rt, &["tasks"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("a runner token may only connect"),
        "{}",
        text(&o).1
    );
    // A user token only submits to, and sees, its workspaces.
    let o = client(&me, &hub, &user, &["run", "-d", "-w", "b", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let other = detach(&me, &hub, &hub.admin, "b", &["true"], &[]);
    let o = client(&me, &hub, &user, &["task", "show", &other])
        .output()
        .unwrap();
    assert!(text(&o).1.contains("no task"), "{}", text(&o).1);
    let mine = detach(&me, &hub, &user, "a", &["true"], &[]);
    let list = json(&ok(&mut client(&me, &hub, &user, &["tasks", "--json"])));
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
}

#[test]
fn a_sigkilled_runner_loses_its_task_within_the_lease_and_a_retry_runs_elsewhere() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "2");
    let me = t.path().join("me");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("f"), b"before\n").unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut client(&me, &hub, &hub.admin, &["push", "w"]));
    let head = || {
        json(&ok(&mut client(
            &me,
            &hub,
            &hub.admin,
            &["pull", "w", "--json"],
        )))["snapshot"]
            .clone()
    };
    let before = head();
    let t1 = runner_token(&hub, "r1");
    let mut r1 = start_runner(&hub, &t1, "r1", &t.path().join("c1"), &[]);

    // No retries: lost.
    let script = "echo started; echo partial > f; sleep 3; echo done";
    let id = detach(&me, &hub, &hub.admin, "w", &["sh", "-c", script], &[]);
    wait_until("the task starts", 60, || {
        logs(&me, &hub, &hub.admin, &id).contains("started")
    });
    r1.kill9();
    let lost = wait_state(&me, &hub, &hub.admin, &id, &["lost", "succeeded", "failed"]);
    assert_eq!(lost["state"], "lost", "{lost}");
    assert!(lost["error"].as_str().unwrap().contains("lease"), "{lost}");
    assert_eq!(lost["snapshot"], serde_json::Value::Null);
    assert_eq!(head(), before, "the workspace ref is unchanged");

    // With a retry: the next runner takes it.
    let mut r1 = start_runner(&hub, &t1, "r1", &t.path().join("c1"), &[]);
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["sh", "-c", script],
        &["--retries", "1"],
    );
    wait_until("the task starts", 60, || {
        logs(&me, &hub, &hub.admin, &id).contains("started")
    });
    r1.kill9();
    let t2 = runner_token(&hub, "r2");
    let r2 = start_runner(&hub, &t2, "r2", &t.path().join("c2"), &[]);
    let done = wait_state(&me, &hub, &hub.admin, &id, &["lost", "succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", r2.log());
    assert_eq!(done["runner"], "r2");
    assert_eq!(done["attempts"], 2);
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(ok(ds(&me).args(["cat", "w", "f"])).stdout, b"partial\n");
}

#[test]
fn a_hub_restarted_mid_task_loses_and_duplicates_no_line() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("hub");
    let first = start_hub_with(&data, None, &[], &["--lease", "20"]);
    let port = first.url.rsplit(':').next().unwrap().to_string();
    let listen = format!("127.0.0.1:{port}");
    let me = t.path().join("me");
    let rt = runner_token(&first, "r1");
    let runner = start_runner(&first, &rt, "r1", &t.path().join("c"), &[]);
    let script = "for i in $(seq 1 60); do echo line $i; sleep 0.05; done; echo end > f";
    let follower = client(
        &me,
        &first,
        &first.admin,
        &["run", "-w", "w", "--", "sh", "-c", script],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let admin = first.admin.clone();
    drop(first);
    let again = start_hub_with(&data, None, &[], &["--lease", "20", "--listen", &listen]);
    assert_eq!(again.admin, admin);
    let out = follower.wait_with_output().unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}\nrunner:\n{}", runner.log());
    let want: String = (1..=60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(o, want, "every line once, in order");
    let tasks = json(&ok(&mut client(
        &me,
        &again,
        &again.admin,
        &["tasks", "--json"],
    )));
    let id = tasks[0]["id"].as_str().unwrap();
    assert_eq!(logs(&me, &again, &again.admin, id), want);
    assert_eq!(tasks[0]["state"], "succeeded");
}

#[test]
fn cancel_stops_the_workload_gracefully_and_still_snapshots() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let rt = runner_token(&hub, "r1");
    let _r = start_runner(&hub, &rt, "r1", &t.path().join("c"), &[]);
    let script = "trap 'echo got TERM; echo bye > cancelled.txt; exit 7' TERM; echo ready; \
                  while true; do sleep 0.1; done";
    let id = detach(&me, &hub, &hub.admin, "w", &["sh", "-c", script], &[]);
    wait_until("the task is ready", 60, || {
        logs(&me, &hub, &hub.admin, &id).contains("ready")
    });
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
    let done = wait_state(
        &me,
        &hub,
        &hub.admin,
        &id,
        &["cancelled", "failed", "succeeded"],
    );
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["exit_code"], 7);
    assert!(logs(&me, &hub, &hub.admin, &id).contains("got TERM"));
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(
        ok(ds(&me).args(["cat", "w", "cancelled.txt"])).stdout,
        b"bye\n"
    );
}

#[test]
fn a_flood_of_output_arrives_whole_and_two_tasks_on_one_workspace_take_turns() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let rt = runner_token(&hub, "r1");
    let r = start_runner(&hub, &rt, "r1", &t.path().join("c"), &["--capacity", "2"]);
    // 300,000 lines (3.3 MB) as fast as the pipe takes them, and a line
    // longer than the protocol's limit.
    let o = ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run",
            "-w",
            "flood",
            "--",
            "sh",
            "-c",
            "seq 1 300000; head -c 600000 /dev/zero | tr '\\0' x; echo",
        ],
    ));
    let out = text(&o).0;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 300_000 + 3, "runner:\n{}", r.log());
    assert_eq!(lines[0], "1");
    assert_eq!(lines[299_999], "300000");
    assert_eq!(
        lines[300_000..].concat().len(),
        600_000,
        "the long line, in pieces, whole"
    );

    // Two tasks on one workspace: the second waits for the first (the
    // runner has room for both) and sees what it wrote.
    let a = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["sh", "-c", "sleep 2; echo a >> log"],
        &[],
    );
    let b = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["sh", "-c", "echo b >> log"],
        &[],
    );
    wait_until("the first task runs", 60, || {
        show(&me, &hub, &hub.admin, &a)["state"] == "running"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        show(&me, &hub, &hub.admin, &b)["state"],
        "queued",
        "the second waits"
    );
    wait_state(&me, &hub, &hub.admin, &b, &["succeeded"]);
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(
        ok(ds(&me).args(["cat", "w", "log"])).stdout,
        b"a\nb\n",
        "no lost update"
    );
}

#[test]
fn a_workspace_that_moved_meanwhile_keeps_the_tasks_snapshot_under_its_id() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("f"), b"one\n").unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut client(&me, &hub, &hub.admin, &["push", "w"]));
    let rt = runner_token(&hub, "r1");
    let _r = start_runner(&hub, &rt, "r1", &t.path().join("c"), &[]);
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["sh", "-c", "echo started; echo task > t; sleep 2"],
        &[],
    );
    wait_until("the task starts", 60, || {
        logs(&me, &hub, &hub.admin, &id).contains("started")
    });
    std::fs::write(work.join("f"), b"two\n").unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut client(&me, &hub, &hub.admin, &["push", "w"]));
    let done = wait_state(&me, &hub, &hub.admin, &id, &["failed", "succeeded"]);
    assert_eq!(done["conflict"], true, "{done}");
    assert_eq!(done["pushed_to"], id.as_str());
    assert_eq!(done["exit_code"], 0);
    // Nothing is lost: the user's push stands, and the task's result is
    // on the hub under the task's id.
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(ok(ds(&me).args(["cat", "w", "f"])).stdout, b"two\n");
    ok(&mut client(&me, &hub, &hub.admin, &["clone", &id]));
    assert_eq!(ok(ds(&me).args(["cat", &id, "t"])).stdout, b"task\n");
}

/// The test image on the container engine scripts/test.sh starts
/// (scripts/podman.sh), or a loud skip (`None`) when run outside it.
pub(crate) fn container_engine() -> Option<String> {
    match (std::env::var("DOCKER_HOST"), std::env::var("DS_TEST_IMAGE")) {
        (Ok(h), Ok(i)) if !h.is_empty() && !i.is_empty() => Some(i),
        _ => {
            assert!(
                std::env::var_os("DS_TEST_REQUIRE_PODMAN").is_none(),
                "DS_TEST_REQUIRE_PODMAN is set but DOCKER_HOST or DS_TEST_IMAGE is not"
            );
            eprintln!(
                "\n*** SKIPPING container test: DOCKER_HOST/DS_TEST_IMAGE are not set \
                 (scripts/test.sh starts podman; or: eval \"$(scripts/podman.sh)\") ***\n"
            );
            None
        }
    }
}

#[test]
fn the_docker_executor_runs_the_workload_in_a_container_with_the_workspace_as_home() {
    let Some(image) = container_engine() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("input.txt"), b"from the laptop\n").unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut client(&me, &hub, &hub.admin, &["push", "w"]));
    let rt = runner_token(&hub, "c1");
    let runner = start_runner(
        &hub,
        &rt,
        "c1",
        &t.path().join("cache"),
        &["--executor", "docker", "--docker-network", "none"],
    );
    // A line longer than the engine's 16 KiB frames comes back whole.
    let script = "cat input.txt; echo \"home=$HOME pwd=$(pwd)\"; echo oops >&2; \
                  head -c 40000 /dev/zero | tr '\\0' y; echo; echo made > out.txt; exit 4";
    let o = client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run",
            "-w",
            "w",
            "--executor",
            "docker",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .output()
    .unwrap();
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{out}\n{err}\nrunner:\n{}",
        runner.log()
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "from the laptop");
    assert_eq!(lines[1], "home=/home/ds pwd=/home/ds");
    assert_eq!(lines[2].len(), 40_000, "one line, reassembled");
    assert!(err.contains("oops"), "{err}");
    let tasks = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["tasks", "--json"],
    )));
    assert_eq!(tasks[0]["executor"], "docker");
    assert_eq!(tasks[0]["exit_code"], 4);
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(ok(ds(&me).args(["cat", "w", "out.txt"])).stdout, b"made\n");

    // An image the engine does not have and cannot pull fails the task
    // with the reason.
    let o = client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run",
            "-w",
            "w",
            "--executor",
            "docker",
            "--image",
            "localhost/no-such-image:0",
            "--",
            "true",
        ],
    )
    .output()
    .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown image"), "{err}");

    // Cancel reaches the container: SIGTERM, and still the snapshot.
    let script =
        "trap 'echo bye > cancelled.txt; exit 9' TERM; echo ready; while true; do sleep 0.1; done";
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["sh", "-c", script],
        &["--executor", "docker", "--image", &image],
    );
    wait_until("the container is ready", 60, || {
        logs(&me, &hub, &hub.admin, &id).contains("ready")
    });
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
    let done = wait_state(
        &me,
        &hub,
        &hub.admin,
        &id,
        &["cancelled", "failed", "succeeded"],
    );
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["exit_code"], 9);
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(
        ok(ds(&me).args(["cat", "w", "cancelled.txt"])).stdout,
        b"bye\n"
    );

    // --docker-user: the workload runs as that user and owns its home.
    drop(runner);
    let user = start_runner(
        &hub,
        &rt,
        "c1",
        &t.path().join("cache"),
        &[
            "--executor",
            "docker",
            "--docker-network",
            "none",
            "--docker-user",
            "1000:1000",
        ],
    );
    let o = client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run",
            "-w",
            "w",
            "--executor",
            "docker",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "id -u; id -g; echo mine > by-user.txt; ls -ln by-user.txt",
        ],
    )
    .output()
    .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}\nrunner:\n{}", user.log());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], &["1000", "1000"], "{out}");
    assert!(
        lines[2].contains(" 1000 "),
        "owned by the container's user: {out}"
    );
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(
        ok(ds(&me).args(["cat", "w", "by-user.txt"])).stdout,
        b"mine\n"
    );
}

#[test]
fn a_task_submitted_through_one_hub_runs_on_a_runner_of_another_hub_on_the_same_bucket() {
    let Some(ep) = s3_endpoint() else {
        return;
    };
    let bucket = s3_bucket(&ep, &format!("ds-tasks-{}", std::process::id()));
    let env = s3_env(&ep);
    let t = tempfile::tempdir().unwrap();
    let url = format!("s3://{bucket}/ds");
    let h1 = start_hub_with(&t.path().join("h1"), Some(&url), &env, &["--lease", "5"]);
    let h2 = start_hub_with(&t.path().join("h2"), Some(&url), &env, &["--lease", "5"]);
    let me = t.path().join("me");
    let rt = runner_token(&h1, "r1");
    let r = start_runner(&h2, &rt, "r1", &t.path().join("c"), &[]);
    // Submitted and followed through h1; run by the runner on h2.
    let o = client(
        &me,
        &h1,
        &h1.admin,
        &["run", "-w", "w", "--", "sh", "-c", "echo hi; echo x > f"],
    )
    .output()
    .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}\nrunner:\n{}", r.log());
    assert_eq!(out, "hi\n");
    let tasks = json(&ok(&mut client(&me, &h2, &h2.admin, &["tasks", "--json"])));
    assert_eq!(tasks[0]["state"], "succeeded");
    assert_eq!(tasks[0]["runner"], "r1");
    let rs = json(&ok(&mut client(
        &me,
        &h1,
        &h1.admin,
        &["runners", "--json"],
    )));
    assert_eq!(rs[0]["name"], "r1", "h1 sees the runner connected to h2");
    ok(&mut client(&me, &h1, &h1.admin, &["pull", "w"]));
    assert_eq!(ok(ds(&me).args(["cat", "w", "f"])).stdout, b"x\n");
}

#[test]
fn a_task_with_a_repo_runs_on_that_commit_and_records_it() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", text(&o).1);
        text(&o).0.trim().to_string()
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("train.sh"), b"echo v1 lr=$LR\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    let first = git(&["rev-parse", "HEAD"]);
    std::fs::write(repo.join("train.sh"), b"echo v2\n").unwrap();
    git(&["commit", "-qam", "two"]);
    let rt = runner_token(&hub, "r1");
    let _r = start_runner(&hub, &rt, "r1", &t.path().join("c"), &[]);
    let url = format!("file://{}", repo.display());
    let o = ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run", "-w", "g", "--repo", &url, "--ref", &first, "-e", "LR=0.1", "--", "sh",
            "train.sh",
        ],
    ));
    let out = text(&o).0;
    assert!(
        out.starts_with("v1 lr=0.1\n"),
        "the first commit ran, with its variable: {out}"
    );
    let tasks = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["tasks", "--json"],
    )));
    assert_eq!(tasks[0]["commit"], first.as_str());
    assert_eq!(tasks[0]["repo"], url.as_str());
    // The checkout is in the workspace, and its snapshot records the commit.
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "g"]));
    assert_eq!(
        ok(ds(&me).args(["cat", "g", "train.sh"])).stdout,
        b"echo v1 lr=$LR\n"
    );
    let log = json(&ok(ds(&me).args(["log", "g", "--json"])));
    assert_eq!(log[0]["metadata"]["git_commit"], first.as_str(), "{log}");
    // A branch name works as a ref too, on the same workspace.
    let o = ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run", "-w", "g", "--repo", &url, "--ref", "HEAD", "--", "sh", "train.sh",
        ],
    ));
    assert_eq!(text(&o).0, "v2\n");
}

#[test]
fn sigterm_makes_a_runner_finish_its_task_push_it_and_exit() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let rt = runner_token(&hub, "r1");
    let mut r = start_runner(&hub, &rt, "r1", &t.path().join("c"), &[]);
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["sh", "-c", "echo started; sleep 2; echo done > f"],
        &[],
    );
    wait_until("the task starts", 60, || {
        logs(&me, &hub, &hub.admin, &id).contains("started")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(r.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = r.exited();
    assert!(st.success(), "a drained runner exits 0: {st}\n{}", r.log());
    assert!(r.log().contains("shutting down"), "{}", r.log());
    let done = show(&me, &hub, &hub.admin, &id);
    assert_eq!(
        done["state"], "succeeded",
        "the task finished before the runner left: {done}"
    );
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(ok(ds(&me).args(["cat", "w", "f"])).stdout, b"done\n");
    // While it drained, no new task went to it; with it gone, one waits.
    let next = detach(&me, &hub, &hub.admin, "w", &["true"], &[]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(show(&me, &hub, &hub.admin, &next)["state"], "queued");
}
