//! The hub's HTTP side through real `ds hub`, `ds runner` and `ds up`
//! processes, with curl as the plain HTTP client: the REST API and its
//! tokens, cookies and CSRF rule, pagination, `/metrics` (parsed as
//! Prometheus text), the UI's files, and the relay to a task's port
//! (HTTP and a websocket-style upgrade) with its refusals.

use std::path::Path;
use std::process::Command;

use crate::sync::{Hub, limited_token};
use crate::tasks::{client, detach, hub, runner_token, start_runner, wait_state, wait_until};
use crate::*;

/// One HTTP exchange.
struct Reply {
    status: u16,
    headers: String,
    body: String,
    raw: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn curl(url: &str, args: &[&str]) -> Reply {
    let t = tempfile::tempdir().unwrap();
    let (b, h) = (t.path().join("body"), t.path().join("headers"));
    let out = Command::new("curl")
        .args(["-sS", "--path-as-is", "--max-time", "30", "-o"])
        .arg(&b)
        .arg("-D")
        .arg(&h)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (scripts/lib.sh installs it)");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let raw = std::fs::read(&b).unwrap_or_default();
    Reply {
        status,
        headers: std::fs::read_to_string(&h).unwrap_or_default(),
        body: String::from_utf8_lossy(&raw).into_owned(),
        raw,
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn get(hub: &Hub, path: &str, token: &str) -> Reply {
    curl(&format!("{}{path}", hub.url), &["-H", &bearer(token)])
}

/// A workspace of `files` snapshotted in store `T/me` and pushed to `hub`;
/// returns the store.
fn workspace(t: &Path, hub: &Hub, ws: &str, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let me = t.join("me");
    let work = t.join("work");
    std::fs::create_dir_all(&work).unwrap();
    for (name, content) in files {
        std::fs::write(work.join(name), content).unwrap();
    }
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", ws]));
    ok(ds(&me).args(["push", ws, "--hub", &hub.url, "--token", &hub.admin]));
    me
}

/// SERVER running as a task of workspace `ws` (a workspace of just
/// srv.py, pushed to `hub`), submitted through `hub` and answering through
/// its relay: (the store, the task id).
fn serving_task(t: &Path, hub: &Hub, ws: &str) -> (std::path::PathBuf, String) {
    let me = workspace(t, hub, ws, &[("srv.py", SERVER.as_bytes())]);
    let port = free_port().to_string();
    let id = detach(
        &me,
        hub,
        &hub.admin,
        ws,
        &["python3", "srv.py", &port],
        &["--port", &port, "--executor", "process"],
    );
    wait_state(&me, hub, &hub.admin, &id, &["running"]);
    wait_until("the task serves through the relay", 60, || {
        get(hub, &format!("/tasks/{id}/x"), &hub.admin).status == 200
    });
    (me, id)
}

fn push(t: &Path, hub: &Hub, ws: &str, content: &[u8]) {
    let me = t.join(format!("me-{ws}"));
    let work = t.join(format!("work-{ws}"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("f.txt"), content).unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", ws]));
    ok(ds(&me).args(["push", ws, "--hub", &hub.url, "--token", &hub.admin]));
}

/// Checks Prometheus text format line by line: every sample belongs to a
/// family announced by `# TYPE`, names and labels are well formed, values
/// parse. Returns (name with labels, value) of every sample.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let name = p.next().unwrap();
            let kind = p.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(typed.contains(name), "sample {line:?} before its # TYPE");
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            for kv in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line:?}"
                );
                assert!(v.starts_with('"'), "{line:?}");
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.push((series.to_string(), v));
    }
    samples
}

#[test]
fn the_rest_api_answers_with_the_grpc_tokens_and_pages_its_lists() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "10");
    for (ws, c) in [("alpha", "a"), ("beta", "b"), ("gamma", "c")] {
        push(t.path(), &hub, ws, c.as_bytes());
    }
    push(t.path(), &hub, "alpha", b"a2");

    // The issue's shape: an array of {name, snapshot}.
    let r = get(&hub, "/api/v1/workspaces", &hub.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    let ws = r.json();
    let names: Vec<&str> = ws
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    assert_eq!(ws[0]["snapshot"].as_str().unwrap().len(), 64);

    // No token, a wrong one, a malformed header: 401 and a JSON error.
    for args in [
        vec![],
        vec!["-H", "Authorization: Bearer ds_wrong"],
        vec!["-H", "Authorization: Basic eA=="],
    ] {
        let r = curl(&format!("{}/api/v1/workspaces", hub.url), &args);
        assert_eq!(r.status, 401, "{args:?}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "unauthenticated", "{}", r.body);
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }

    // A token limited to beta sees only beta, and not alpha's history.
    let me = t.path().join("me-beta");
    let limited = limited_token(&me, &hub, "beta");
    let r = get(&hub, "/api/v1/workspaces", &limited);
    let names: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["beta"]);
    assert_eq!(
        get(&hub, "/api/v1/workspaces/alpha/snapshots", &limited).status,
        404
    );
    assert_eq!(
        get(&hub, "/api/v1/workspaces/..%2Fx/snapshots", &hub.admin).status,
        400
    );

    // Pages: two, then the rest through the Link header.
    let r = get(&hub, "/api/v1/workspaces?limit=2", &hub.admin);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let link = r.header("link").expect("a Link header to the next page");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let r2 = get(&hub, next, &hub.admin);
    assert_eq!(r2.json()[0]["name"], "gamma");
    assert!(r2.header("link").is_none());
    assert_eq!(
        get(&hub, "/api/v1/workspaces?limit=0", &hub.admin).status,
        400
    );

    // Snapshots newest first, with parents; paged by snapshot id.
    let r = get(
        &hub,
        "/api/v1/workspaces/alpha/snapshots?limit=1",
        &hub.admin,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.json()[0].clone();
    assert_eq!(first["workspace"], "alpha");
    assert_eq!(first["parents"].as_array().unwrap().len(), 1);
    let r = get(
        &hub,
        &format!(
            "/api/v1/workspaces/alpha/snapshots?after={}",
            first["id"].as_str().unwrap()
        ),
        &hub.admin,
    );
    assert_eq!(r.json()[0]["id"], first["parents"][0]);
    assert_eq!(r.json().as_array().unwrap().len(), 1);

    // Login: a cookie that scripts cannot read and other sites do not send.
    let jar = t.path().join("jar");
    let jar_s = jar.to_str().unwrap();
    let r = curl(
        &format!("{}/api/v1/login", hub.url),
        &[
            "-c",
            jar_s,
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!("{{\"token\":\"{}\"}}", hub.admin),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let r = curl(&format!("{}/api/v1/workspaces", hub.url), &["-b", jar_s]);
    assert_eq!(r.status, 200);
    // A cookie-authenticated change without the CSRF header is refused.
    let submit = r#"{"workspace":"beta","command":["true"]}"#;
    let r = curl(
        &format!("{}/api/v1/tasks", hub.url),
        &[
            "-b",
            jar_s,
            "-H",
            "Content-Type: application/json",
            "-d",
            submit,
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("X-DS-Request"), "{}", r.body);
    let r = curl(
        &format!("{}/api/v1/tasks", hub.url),
        &[
            "-b",
            jar_s,
            "-H",
            "X-DS-Request: 1",
            "-H",
            "Content-Type: application/json",
            "-d",
            submit,
        ],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let task = r.json()["id"].as_str().unwrap().to_string();
    let r = get(&hub, &format!("/api/v1/tasks/{task}"), &hub.admin);
    assert_eq!(r.json()["state"], "queued");
    // The limited token submits to its own workspace only.
    let r = curl(
        &format!("{}/api/v1/tasks", hub.url),
        &[
            "-H",
            &bearer(&limited),
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"workspace":"alpha","command":["true"]}"#,
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        get(&hub, &format!("/api/v1/tasks/{task}"), &limited).status,
        200
    );
    // Oversized and malformed bodies get a clear refusal.
    let big = format!(
        r#"{{"workspace":"beta","command":["{}"]}}"#,
        "x".repeat(2 << 20)
    );
    let big_file = t.path().join("big.json");
    std::fs::write(&big_file, big).unwrap();
    let r = curl(
        &format!("{}/api/v1/tasks", hub.url),
        &[
            "-H",
            &bearer(&hub.admin),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", big_file.display()),
        ],
    );
    assert_eq!(r.status, 413, "{}", r.body);
    let r = curl(
        &format!("{}/api/v1/tasks", hub.url),
        &[
            "-H",
            &bearer(&hub.admin),
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"workspace\":",
        ],
    );
    assert_eq!(r.status / 100, 4, "{}", r.body);
    let r = curl(
        &format!("{}/api/v1/logout", hub.url),
        &[
            "-b",
            jar_s,
            "-c",
            jar_s,
            "-X",
            "POST",
            "-H",
            "X-DS-Request: 1",
        ],
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        curl(&format!("{}/api/v1/workspaces", hub.url), &["-b", jar_s]).status,
        401
    );

    // The UI and the API's description.
    let r = curl(&format!("{}/", hub.url), &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/ui/app.js"));
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    let r = curl(&format!("{}/api/v1/openapi.json", hub.url), &[]);
    assert!(r.json()["paths"]["/api/v1/workspaces"].is_object());

    // gRPC still works on the same address (the pushes above), and
    // /metrics speaks Prometheus text with ds_ series that counted them.
    let r = curl(&format!("{}/metrics", hub.url), &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let samples = parse_prometheus(&r.body);
    assert!(samples.iter().all(|(s, _)| s.starts_with("ds_")));
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|s| s.1);
    assert!(
        value("ds_packs_verified_total").unwrap() >= 4.0,
        "{}",
        r.body
    );
    assert!(value("ds_tasks_submitted_total").unwrap() >= 1.0);
    assert!(
        value("ds_http_requests_total{surface=\"api\",code=\"401\"}").unwrap() >= 3.0,
        "{}",
        r.body
    );
    assert!(value("ds_request_bytes_total{surface=\"grpc\"}").unwrap() > 0.0);
    assert!(
        samples.iter().any(|(s, _)| s
            .starts_with("ds_grpc_requests_total{method=\"/ds.sync.v1.Sync/UploadPack\"}")),
        "{}",
        r.body
    );
}

/// A server for the relay tests: answers GET with the request line and
/// headers it received, and an `Upgrade: echo` request with 101 and then
/// echoes bytes back (what a websocket needs of the relay).
const SERVER: &str = r#"
import socket, sys, threading
def handle(c):
    f = c.makefile("rb")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = f.readline()
        if not b: return
        head += b
    if head.startswith(b"GET /big"):
        # An endless response, for a client that stops reading.
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
        block = b"b" * 65536
        try:
            while True:
                c.sendall(block)
        except OSError:
            return
    if b"upgrade: echo" in head.lower():
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        while True:
            d = f.read1(65536)
            if not d: break
            c.sendall(d)
    else:
        body = head
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nSet-Cookie: ds_session=evil\r\nSet-Cookie: app=1\r\nConnection: close\r\n\r\n" % len(body) + body)
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
print("serving", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// Speaks the echo upgrade through the relay with a raw socket.
const UPGRADE_CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1].split(":")
s = socket.create_connection((host, int(port)), timeout=20)
s.sendall(("GET /tasks/%s/ws HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n" % (sys.argv[2], sys.argv[1], sys.argv[3])).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
for msg in [b"hello", b"x" * 200000]:
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(65536)
    assert got == msg, (len(got), len(msg))
print("echoed")
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_relay_reaches_a_tasks_port_with_a_token_and_never_forwards_the_hubs_credentials() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "10");
    let token = runner_token(&hub, "r1");
    let metrics = format!("127.0.0.1:{}", free_port());
    let _r = start_runner(
        &hub,
        &token,
        "r1",
        &t.path().join("cache"),
        &["--metrics-listen", &metrics],
    );
    // The issue's shape, with a server that shows what it was sent.
    let (me, id) = serving_task(t.path(), &hub, "web");
    let r = get(&hub, &format!("/tasks/{id}/some/path?q=1"), &hub.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    // The prefix is stripped, the query kept, the hub's token not passed.
    assert!(
        r.body.starts_with("GET /some/path?q=1 HTTP/1.1"),
        "{}",
        r.body
    );
    assert!(
        !r.body.to_lowercase().contains("authorization"),
        "{}",
        r.body
    );
    assert!(!r.body.contains(&hub.admin));
    assert!(
        r.body
            .to_lowercase()
            .contains(&format!("x-forwarded-prefix: /tasks/{id}")),
        "{}",
        r.body
    );
    // The task may not set the hub's session cookie; its own cookies pass.
    let cookies: Vec<&str> = r
        .headers
        .lines()
        .filter(|l| l.to_lowercase().starts_with("set-cookie"))
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(cookies[0].contains("app=1"));
    // The session cookie works for the relay too, and is not forwarded.
    let jar = t.path().join("jar");
    let jar_s = jar.to_str().unwrap();
    curl(
        &format!("{}/api/v1/login", hub.url),
        &[
            "-c",
            jar_s,
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!("{{\"token\":\"{}\"}}", hub.admin),
        ],
    );
    let r = curl(
        &format!("{}/tasks/{id}/", hub.url),
        &["-b", jar_s, "-H", "Cookie: app=7"],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !r.body.contains("ds_session") && !r.body.contains(&hub.admin),
        "{}",
        r.body
    );

    // Upgrades (what a websocket needs) go both ways, large messages too.
    let out = ok(Command::new("python3")
        .arg("-c")
        .arg(UPGRADE_CLIENT)
        .arg(hub.url.trim_start_matches("http://"))
        .arg(&id)
        .arg(&hub.admin));
    assert!(String::from_utf8_lossy(&out.stdout).contains("echoed"));

    // Refusals: no token, a wrong one, another workspace's token, an
    // unknown task, a path that tries to climb out to the hub's API.
    assert_eq!(curl(&format!("{}/tasks/{id}/", hub.url), &[]).status, 401);
    assert_eq!(get(&hub, &format!("/tasks/{id}/"), "ds_wrong").status, 401);
    let other = limited_token(&me, &hub, "elsewhere");
    assert_eq!(get(&hub, &format!("/tasks/{id}/"), &other).status, 404);
    assert_eq!(
        get(&hub, "/tasks/t0000000000000000000000/", &hub.admin).status,
        404
    );
    assert_eq!(get(&hub, "/tasks/nonsense/", &hub.admin).status, 404);
    let r = get(
        &hub,
        &format!("/tasks/{id}/../../api/v1/workspaces"),
        &hub.admin,
    );
    assert!(
        r.body.starts_with("GET /../../api/v1/workspaces"),
        "stays inside the task: {}",
        r.body
    );
    let r = curl(&format!("{}/metrics", hub.url), &[]);
    let hub_series = parse_prometheus(&r.body);
    assert!(
        hub_series
            .iter()
            .any(|(s, v)| s == "ds_relay_connections_total" && *v >= 4.0),
        "{}",
        r.body
    );
    // The runner's own metrics counted the same tunnels.
    let r = curl(&format!("http://{metrics}/metrics"), &[]);
    let runner_series = parse_prometheus(&r.body);
    let value = |name: &str| {
        runner_series
            .iter()
            .find(|(s, _)| s == name)
            .map(|s| s.1)
            .unwrap_or(-1.0)
    };
    assert!(value("ds_runner_tunnels_total") >= 4.0, "{}", r.body);
    assert!(
        value("ds_runner_tunnel_bytes_total") > 200_000.0,
        "{}",
        r.body
    );
    assert_eq!(value("ds_runner_tasks_running"), 1.0, "{}", r.body);
    assert!(value("ds_runner_hub_connects_total") >= 1.0);
    assert_eq!(curl(&format!("http://{metrics}/other"), &[]).status, 404);

    // A finished task's URL says so.
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
    wait_state(
        &me,
        &hub,
        &hub.admin,
        &id,
        &["cancelled", "failed", "succeeded"],
    );
    let r = get(&hub, &format!("/tasks/{id}/"), &hub.admin);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "failed_precondition");
}

#[test]
fn ds_up_starts_everything_and_ds_run_works_right_after_it() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let data = t.path().join("up");
    let port = free_port();
    let up = |args: &[&str]| {
        let mut c = ds(&store);
        c.args(args)
            .env_remove("DS_HUB")
            .env_remove("DS_TOKEN")
            .env("XDG_DATA_HOME", t.path().join("xdg"));
        c
    };
    let out = ok(
        up(&["up", "--background", "--executor", "process", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(&data),
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains(&format!("http://127.0.0.1:{port}/")),
        "{said}"
    );
    assert!(said.contains("admin.token"), "{said}");
    struct Down<'a>(&'a Path, &'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = ds(self.0).arg("down").arg("--data").arg(self.1).status();
        }
    }
    let _down = Down(&store, &data);
    // A second `ds up` on the same data refuses.
    let again = up(&["up", "--background", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let out = ok(&mut up(&[
        "run",
        "-w",
        "demo",
        "--executor",
        "process",
        "--",
        "echo",
        "hi",
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hi"),
        "{out:?}"
    );
    let admin = std::fs::read_to_string(data.join("hub/admin.token")).unwrap();
    let r = curl(
        &format!("http://127.0.0.1:{port}/api/v1/workspaces"),
        &["-H", &bearer(admin.trim())],
    );
    assert_eq!(r.json()[0]["name"], "demo", "{}", r.body);
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/"), &[]).status, 200);
    // The hub's access log (tracing, DS_LOG) is in ds up's log: the path,
    // never the query.
    let _ = curl(
        &format!("http://127.0.0.1:{port}/api/v1/workspaces?secret=s3cr3t"),
        &["-H", &bearer(admin.trim())],
    );
    let log = std::fs::read_to_string(data.join("up.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("http")
            && l.contains("path=/api/v1/workspaces")
            && l.contains("status=200")),
        "{log}"
    );
    assert!(
        !log.contains("s3cr3t") && !log.contains(admin.trim()),
        "no query or token in the log"
    );

    let out = ok(up(&["down", "--data"]).arg(&data));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the hub is gone"
    );
    let out = ok(up(&["down", "--data"]).arg(&data));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to stop"));
}

/// Debian's chromium and chromedriver, when installed. scripts/test.sh
/// installs them and sets DS_TEST_REQUIRE_BROWSER=1: then their absence
/// fails the test instead of skipping it.
fn browser() -> bool {
    let have = |c: &str| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let found = have("chromium") && have("chromedriver");
    if !found && std::env::var_os("DS_TEST_REQUIRE_BROWSER").is_some() {
        panic!("DS_TEST_REQUIRE_BROWSER is set but chromium or chromedriver is missing");
    }
    found
}

#[test]
fn runs_models_and_the_web_ui_in_a_real_browser() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "10");
    let token = runner_token(&hub, "r1");
    let _r = start_runner(
        &hub,
        &token,
        "r1",
        &t.path().join("cache"),
        &["--capacity", "2"],
    );
    let train_sh = "set -e\nfor lr in 0.1 0.01; do\n  echo \"model $lr\" > model.txt\n  \
         printf '[[DS-RUN:train-%s]]{\"parameters\":{\"lr\":%s},\"metrics\":{\"accuracy\":0.%s},\"inputs\":[\"raw.csv\"],\"outputs\":[\"model.txt\"],\"labels\":{\"model\":\"iris\"}}[[/DS-RUN:train-%s]]\\n' $lr $lr ${#lr}9 $lr\n\
         done\n";
    let me = workspace(
        t.path(),
        &hub,
        "ui",
        &[
            ("srv.py", SERVER.as_bytes()),
            ("raw.csv", b"a,b\n1,2\n"),
            ("train.sh", train_sh.as_bytes()),
        ],
    );
    let train = detach(
        &me,
        &hub,
        &hub.admin,
        "ui",
        &["sh", "train.sh"],
        &["--executor", "process"],
    );
    let done = wait_state(&me, &hub, &hub.admin, &train, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    let port = free_port().to_string();
    let serve = detach(
        &me,
        &hub,
        &hub.admin,
        "ui",
        &["python3", "srv.py", &port],
        &["--port", &port, "--executor", "process"],
    );
    wait_state(&me, &hub, &hub.admin, &serve, &["running"]);
    wait_until("the task serves through the relay", 60, || {
        get(&hub, &format!("/tasks/{serve}/"), &hub.admin).status == 200
    });
    // Runs, one with its files resolved, two compared, and the model.
    let runs = get(&hub, "/api/v1/workspaces/ui/runs", &hub.admin).json();
    let names: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["train-0.01", "train-0.1"], "newest first");
    let first = runs[1]["id"].as_str().unwrap();
    let second = runs[0]["id"].as_str().unwrap();
    let one = get(
        &hub,
        &format!("/api/v1/workspaces/ui/runs/{}", &first[..10]),
        &hub.admin,
    )
    .json();
    assert_eq!(one["id"], first, "a unique prefix finds the run");
    assert_eq!(one["output_files"][0]["path"], "model.txt");
    assert_eq!(one["output_files"][0]["kind"], "file");
    assert_eq!(one["input_files"][0]["path"], "raw.csv");
    assert_eq!(one["input_files"][0]["size"], 8);
    assert_eq!(
        get(&hub, "/api/v1/workspaces/ui/runs/zz", &hub.admin).status,
        400
    );
    assert_eq!(
        get(
            &hub,
            &format!("/api/v1/workspaces/ui/runs/{}", "f".repeat(64)),
            &hub.admin
        )
        .status,
        404
    );
    let d = get(
        &hub,
        &format!("/api/v1/workspaces/ui/runs/diff?a={first}&b={second}"),
        &hub.admin,
    )
    .json();
    assert_eq!(d["parameters"][0]["name"], "lr");
    assert_eq!(d["parameters"][0]["changed"], true);
    assert_eq!(d["metrics"][0]["a"], 0.39);
    let models = get(&hub, "/api/v1/workspaces/ui/models", &hub.admin).json();
    assert_eq!(models[0]["name"], "iris");
    assert_eq!(models[0]["versions"][0]["run"], first);
    assert_eq!(models[0]["versions"][1]["version"], 2);
    assert_eq!(models[0]["versions"][1]["files"][0], "model.txt");

    if !browser() {
        eprintln!(
            "skipped the browser part: no chromium/chromedriver (scripts/test.sh installs them)"
        );
        return;
    }
    let limited = limited_token(&me, &hub, "elsewhere");
    let shots = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| t.path().to_path_buf())
        .join("ui-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/ui.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([&hub.url, &hub.admin, "ui", &serve, &limited])
        .arg(&shots)
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "the browser test failed:\n{o}\n{e}");
    assert!(o.contains("all checks passed"), "{o}\n{e}");
    eprintln!("screenshots in {}", shots.display());
}

#[test]
fn the_rest_api_browses_and_streams_files_of_any_snapshot_and_diffs_two() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "10");
    let me = t.path().join("me");
    let work = t.path().join("work");
    sample_tree(&work);
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "tree"]));
    std::fs::write(work.join("README.md"), b"# changed\n").unwrap();
    std::fs::write(work.join("src/new.txt"), b"new\n").unwrap();
    std::fs::remove_file(work.join("empty")).unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "tree"]));
    ok(ds(&me).args(["push", "tree", "--hub", &hub.url, "--token", &hub.admin]));
    let base = "/api/v1/workspaces/tree/snapshots";

    let head = get(&hub, &format!("{base}/head"), &hub.admin).json();
    let first = head["parents"][0].as_str().unwrap().to_string();
    let top = get(&hub, &format!("{base}/head/tree"), &hub.admin).json();
    let names: Vec<&str> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"src") && names.contains(&"README.md") && !names.contains(&"empty"),
        "{names:?}"
    );
    let link = top
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "link-to-train")
        .unwrap();
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["target"], "src/train.py");
    let deeper = get(
        &hub,
        &format!("{base}/head/tree?path=src/nested/deeper"),
        &hub.admin,
    )
    .json();
    assert_eq!(deeper[0]["name"], "model.bin");
    // Pages of a directory keep its path in the next link.
    let r = get(
        &hub,
        &format!("{base}/head/tree?path=src&limit=1"),
        &hub.admin,
    );
    let next = r.header("link").unwrap();
    assert!(next.contains("path=src"), "{next}");

    // A multi-chunk file, whole and by ranges that cross chunk boundaries.
    let model = std::fs::read(work.join("src/nested/deeper/model.bin")).unwrap();
    let t2 = tempfile::tempdir().unwrap();
    let out = t2.path().join("model.bin");
    let st = Command::new("curl")
        .args(["-sS", "-f", "-o"])
        .arg(&out)
        .args(["-H", &bearer(&hub.admin)])
        .arg(format!(
            "{}{base}/head/files/src/nested/deeper/model.bin?download=true",
            hub.url
        ))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        std::fs::read(&out).unwrap() == model,
        "the download is the file, byte for byte"
    );
    for (a, b) in [
        (0u64, 0u64),
        (100_000, 1_500_000),
        (model.len() as u64 - 10, model.len() as u64 - 1),
    ] {
        let r = curl(
            &format!("{}{base}/head/files/src/nested/deeper/model.bin", hub.url),
            &[
                "-H",
                &bearer(&hub.admin),
                "-H",
                &format!("Range: bytes={a}-{b}"),
                "-o",
                "/dev/null",
            ],
        );
        assert_eq!(r.status, 206);
        assert_eq!(
            r.header("content-range").unwrap(),
            format!("bytes {a}-{b}/{}", model.len())
        );
        assert_eq!(r.header("content-length").unwrap(), (b - a + 1).to_string());
    }
    let r = curl(
        &format!("{}{base}/head/files/src/nested/deeper/model.bin", hub.url),
        &[
            "-H",
            &bearer(&hub.admin),
            "-H",
            "Range: bytes=2000000-2000009",
        ],
    );
    assert_eq!(r.raw, &model[2_000_000..2_000_010]);
    let r = get(&hub, &format!("{base}/head/files/README.md"), &hub.admin);
    assert_eq!(r.body, "# changed\n");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(r.header("x-content-type-options").unwrap(), "nosniff");
    // The first snapshot still serves its own version.
    assert_eq!(
        get(&hub, &format!("{base}/{first}/files/README.md"), &hub.admin).body,
        "# hello\n"
    );

    // Bad input: an unsatisfiable range, a path that climbs, a NUL, a
    // directory as a file, a missing file, a bad snapshot id.
    let r = curl(
        &format!("{}{base}/head/files/README.md", hub.url),
        &["-H", &bearer(&hub.admin), "-H", "Range: bytes=50-60"],
    );
    assert_eq!(r.status, 416);
    let zero = "0".repeat(64);
    for (path, status) in [
        (format!("{base}/head/files/src/../README.md"), 400),
        (format!("{base}/head/files/a%00b"), 400),
        (format!("{base}/head/files/src"), 400),
        (format!("{base}/head/files/nope"), 404),
        (format!("{base}/zzzz/tree"), 400),
        (format!("{base}/{zero}/tree"), 404),
    ] {
        assert_eq!(get(&hub, &path, &hub.admin).status, status, "{path}");
    }
    assert_eq!(
        curl(&format!("{}{base}/head/files/README.md", hub.url), &[]).status,
        401
    );

    // The diff: by default head against its parent; from/to explicit too.
    let d = get(&hub, "/api/v1/workspaces/tree/diff", &hub.admin).json();
    let changes: Vec<(String, String)> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("README.md".to_string(), "modified".to_string()),
            ("empty".into(), "removed".into()),
            ("src/new.txt".into(), "added".into()),
        ]
    );
    let d2 = get(
        &hub,
        &format!("/api/v1/workspaces/tree/diff?from={first}&to=head&limit=1"),
        &hub.admin,
    );
    assert_eq!(d2.json().as_array().unwrap().len(), 1);
    let next = d2.header("link").unwrap();
    assert!(next.contains(&format!("from={first}")), "{next}");
    let next = next.trim_start_matches('<').split('>').next().unwrap();
    assert_eq!(get(&hub, next, &hub.admin).json()[0]["path"], "empty");
}

#[test]
fn the_relay_reaches_a_port_inside_a_container() {
    let Some(image) = crate::tasks::container_engine() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "10");
    let token = runner_token(&hub, "c1");
    let _r = start_runner(
        &hub,
        &token,
        "c1",
        &t.path().join("cache"),
        &["--executor", "docker"],
    );
    let me = workspace(
        t.path(),
        &hub,
        "box",
        &[("index.html", b"hello from the container\n")],
    );
    // The port is published on the runner's loopback only, at a port the
    // engine picks; the relay finds it.
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "box",
        &["busybox", "httpd", "-f", "-p", "8000", "-h", "/home/ds"],
        &["--port", "8000", "--executor", "docker", "--image", &image],
    );
    wait_state(&me, &hub, &hub.admin, &id, &["running"]);
    let mut r = get(&hub, &format!("/tasks/{id}/index.html"), &hub.admin);
    wait_until("the container serves through the relay", 60, || {
        r = get(&hub, &format!("/tasks/{id}/index.html"), &hub.admin);
        r.status == 200
    });
    assert_eq!(r.body, "hello from the container\n");
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
    wait_state(
        &me,
        &hub,
        &hub.admin,
        &id,
        &["cancelled", "failed", "succeeded"],
    );

    // On the host's network nothing is published: the port is the host's.
    let token2 = runner_token(&hub, "c2");
    let _r2 = start_runner(
        &hub,
        &token2,
        "c2",
        &t.path().join("cache2"),
        &[
            "--executor",
            "docker",
            "--docker-network",
            "host",
            "--label",
            "net=host",
        ],
    );
    let port = free_port().to_string();
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "box",
        &["busybox", "httpd", "-f", "-p", &port, "-h", "/home/ds"],
        &[
            "--port",
            &port,
            "--executor",
            "docker",
            "--image",
            &image,
            "--label",
            "net=host",
        ],
    );
    wait_state(&me, &hub, &hub.admin, &id, &["running"]);
    wait_until(
        "the host-network container serves through the relay",
        60,
        || {
            r = get(&hub, &format!("/tasks/{id}/index.html"), &hub.admin);
            r.status == 200
        },
    );
    assert_eq!(r.body, "hello from the container\n");
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
    wait_state(
        &me,
        &hub,
        &hub.admin,
        &id,
        &["cancelled", "failed", "succeeded"],
    );
}

/// JupyterLab from scripts/jupyter.sh (DS_TEST_JUPYTER); required when
/// the browser is (scripts/test.sh sets both).
fn jupyter() -> Option<String> {
    match std::env::var("DS_TEST_JUPYTER") {
        Ok(j) if !j.is_empty() => Some(j),
        _ => {
            assert!(
                std::env::var_os("DS_TEST_REQUIRE_BROWSER").is_none(),
                "DS_TEST_REQUIRE_BROWSER is set but DS_TEST_JUPYTER is not (eval \"$(scripts/jupyter.sh)\")"
            );
            None
        }
    }
}

#[test]
fn jupyterlab_on_a_runner_runs_a_notebook_cell_through_the_relay_in_a_browser() {
    let (true, Some(jupyter)) = (browser(), jupyter()) else {
        eprintln!("skipped: no chromium or JupyterLab (scripts/test.sh provides both)");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "10");
    let token = runner_token(&hub, "r1");
    let _r = start_runner(&hub, &token, "r1", &t.path().join("cache"), &[]);
    let notebook = serde_json::json!({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": null,
                   "outputs": [], "source": ["print(6 * 7)"]}]
    })
    .to_string();
    let me = workspace(
        t.path(),
        &hub,
        "lab",
        &[("check.ipynb", notebook.as_bytes())],
    );
    let port = free_port().to_string();
    // JupyterLab is told its base URL, so the relay passes paths whole;
    // the hub authenticates, so Jupyter's own token is off.
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "lab",
        &[
            "sh",
            "-c",
            "exec \"$0\" lab --no-browser --ip=127.0.0.1 --port=\"$1\" --ServerApp.token= \
             --ServerApp.password= --ServerApp.allow_remote_access=True --allow-root \
             --ServerApp.base_url=/tasks/$DS_TASK/ --ServerApp.root_dir=\"$HOME\"",
            &jupyter,
            &port,
        ],
        &["--port", &port, "--keep-prefix", "--executor", "process"],
    );
    wait_state(&me, &hub, &hub.admin, &id, &["running"]);
    wait_until("JupyterLab answers through the relay", 120, || {
        get(&hub, &format!("/tasks/{id}/api/status"), &hub.admin).status == 200
    });
    let shots = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| t.path().to_path_buf())
        .join("jupyter-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/jupyter.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([&hub.url, &hub.admin, &id, "check.ipynb"])
        .arg(&shots)
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let task_log = crate::tasks::logs(&me, &hub, &hub.admin, &id);
    assert!(
        out.status.success(),
        "the JupyterLab test failed:\n{o}\n{e}\ntask output:\n{task_log}"
    );
    eprintln!("screenshots in {}", shots.display());
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
    wait_state(
        &me,
        &hub,
        &hub.admin,
        &id,
        &["cancelled", "failed", "succeeded"],
    );
}

#[test]
fn a_relay_request_to_another_hub_on_the_bucket_is_forwarded_to_the_runners_hub() {
    let t = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", t.path().join("shared").display());
    let h1 = crate::sync::start_hub_with(
        &t.path().join("h1"),
        Some(&storage),
        &[],
        &["--lease", "10"],
    );
    let h2 = crate::sync::start_hub_with(
        &t.path().join("h2"),
        Some(&storage),
        &[],
        &["--lease", "10"],
    );
    let token = runner_token(&h1, "r1");
    let _r = start_runner(&h2, &token, "r1", &t.path().join("cache"), &[]);
    // Through h1, where the runner is not connected: h1 forwards to h2.
    let (me, id) = serving_task(t.path(), &h1, "two");
    let r = get(&h1, &format!("/tasks/{id}/x"), &h1.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("GET /x HTTP/1.1"), "{}", r.body);
    assert!(
        !r.body.to_lowercase().contains("authorization"),
        "{}",
        r.body
    );
    // Upgrades too.
    let out = ok(Command::new("python3")
        .arg("-c")
        .arg(UPGRADE_CLIENT)
        .arg(h1.url.trim_start_matches("http://"))
        .arg(&id)
        .arg(&h1.admin));
    assert!(String::from_utf8_lossy(&out.stdout).contains("echoed"));
    // The forwarded request is authenticated again: no token, no relay.
    assert_eq!(curl(&format!("{}/tasks/{id}/", h1.url), &[]).status, 401);
    ok(&mut client(&me, &h1, &h1.admin, &["task", "cancel", &id]));
}

#[test]
fn with_a_tasks_domain_a_task_is_also_relayed_on_its_own_origin() {
    let t = tempfile::tempdir().unwrap();
    let hub = crate::sync::start_hub_with(
        &t.path().join("hub"),
        None,
        &[],
        &["--lease", "10", "--tasks-domain", "ds.example.test"],
    );
    let token = runner_token(&hub, "r1");
    let _r = start_runner(&hub, &token, "r1", &t.path().join("cache"), &[]);
    let (me, id) = serving_task(t.path(), &hub, "dom");
    let host = format!("Host: {id}.tasks.ds.example.test");
    let r = curl(
        &format!("{}/a/b?c=d", hub.url),
        &["-H", &host, "-H", &bearer(&hub.admin)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The whole path, as the app sees it on its own origin.
    assert!(r.body.starts_with("GET /a/b?c=d HTTP/1.1"), "{}", r.body);
    // The hub's API is not reachable on a task's origin.
    let r = curl(
        &format!("{}/api/v1/workspaces", hub.url),
        &["-H", &host, "-H", &bearer(&hub.admin)],
    );
    assert!(r.body.starts_with("GET /api/v1/workspaces"), "{}", r.body);
    assert_eq!(curl(&format!("{}/", hub.url), &["-H", &host]).status, 401);
    // Logging in at the domain sets the cookie for the task origins too;
    // at another name (an IP), for the hub alone.
    let login = |host: &str| {
        curl(
            &format!("{}/api/v1/login", hub.url),
            &[
                "-H",
                host,
                "-H",
                "Content-Type: application/json",
                "-d",
                &format!("{{\"token\":\"{}\"}}", hub.admin),
            ],
        )
    };
    let c = login("Host: ds.example.test").header("set-cookie").unwrap();
    assert!(c.contains("Domain=ds.example.test"), "{c}");
    let c = login("Host: 127.0.0.1").header("set-cookie").unwrap();
    assert!(!c.contains("Domain="), "{c}");
    // The hub itself still answers at its own names.
    assert_eq!(get(&hub, "/api/v1/workspaces", &hub.admin).status, 200);
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
}

#[test]
fn connections_past_the_cap_idle_connections_and_request_floods_are_refused_clearly() {
    use std::io::{Read, Write};
    let t = tempfile::tempdir().unwrap();
    let hub = crate::sync::start_hub_with(
        &t.path().join("hub"),
        None,
        &[],
        &["--max-connections", "4", "--header-timeout", "1"],
    );
    let addr = hub.url.trim_start_matches("http://").to_string();
    // A connection that sends nothing is closed after the header timeout.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 16];
    assert_eq!(idle.read(&mut b).unwrap_or(0), 0, "closed without a word");
    drop(idle);

    // Four keep-alive connections hold the cap.
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).unwrap();
            assert!(got[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    // The fifth is told why, in HTTP and in gRPC.
    let r = curl(
        &format!("{}/api/v1/workspaces", hub.url),
        &["-H", &bearer(&hub.admin)],
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "resource_exhausted");
    assert!(r.body.contains("limit connections"), "{}", r.body);
    let me = t.path().join("me");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("f"), b"x").unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    let out = ds(&me)
        .args(["push", "w", "--hub", &hub.url, "--token", &hub.admin])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("limit connections"),
        "{out:?}"
    );
    drop(held);
    wait_until("the cap frees up", 30, || {
        ds(&me)
            .args(["push", "w", "--hub", &hub.url, "--token", &hub.admin])
            .status()
            .unwrap()
            .success()
    });

    // A flood from one token hits its budget, with the limit named; another
    // token is not held back by it.
    let other = limited_token(&me, &hub, "w");
    // Four clients at once, 2,000 requests each, on keep-alive connections:
    // faster than the budget refills.
    let urls: Vec<String> = (0..2000)
        .map(|_| format!("{}/api/v1/whoami", hub.url))
        .collect();
    let floods: Vec<_> = (0..4)
        .map(|_| {
            Command::new("curl")
                .args(["-s", "-w", "\n%{http_code}\n", "-H", &bearer(&hub.admin)])
                .args(&urls)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut all = String::new();
    for f in floods {
        all.push_str(&String::from_utf8_lossy(
            &f.wait_with_output().unwrap().stdout,
        ));
    }
    let refused = all.lines().filter(|c| *c == "429").count();
    let served = all.lines().filter(|c| *c == "200").count();
    assert!(
        refused > 0 && served >= 2000,
        "{served} served, {refused} refused"
    );
    assert!(
        all.contains("limit requests_per_token"),
        "the refusal names the limit"
    );
    assert_eq!(get(&hub, "/api/v1/whoami", &other).status, 200);
    let samples = parse_prometheus(&curl(&format!("{}/metrics", hub.url), &[]).body);
    let refusals = |limit: &str| {
        samples
            .iter()
            .find(|(s, _)| s == &format!("ds_limit_refusals_total{{limit=\"{limit}\"}}"))
            .map(|s| s.1)
            .unwrap_or(0.0)
    };
    assert!(refusals("connections") >= 2.0);
    assert!(refusals("idle_connection") >= 1.0);
    assert!(refusals("requests_per_token") >= 1.0);
}

/// Opens `GET /tasks/ID/big` through the relay and never reads the reply.
const STALLED_CLIENT: &str = r#"
import socket, sys, time
host, port = sys.argv[1].split(":")
s = socket.create_connection((host, int(port)))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(("GET /tasks/%s/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % (sys.argv[2], sys.argv[3])).encode())
print("stalled", flush=True)
time.sleep(600)
"#;

#[test]
fn a_browser_that_stops_reading_stalls_only_its_own_tunnel() {
    let t = tempfile::tempdir().unwrap();
    // A short lease: if the stalled tunnel held up the runner's control
    // stream, its heartbeats would stop and the task would be lost.
    let hub = hub(t.path(), "3");
    let token = runner_token(&hub, "r1");
    let _r = start_runner(&hub, &token, "r1", &t.path().join("cache"), &[]);
    let (me, id) = serving_task(t.path(), &hub, "slow");
    let rss_before = hub.rss_mib();
    let mut stalled: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new("python3")
                .arg("-c")
                .arg(STALLED_CLIENT)
                .arg(hub.url.trim_start_matches("http://"))
                .arg(&id)
                .arg(&hub.admin)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Longer than two leases: other requests keep being served, the task
    // keeps its lease (heartbeats flow), and the hub holds only each
    // tunnel's credit of the stalled responses.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
    let mut served = 0;
    while std::time::Instant::now() < until {
        let r = get(&hub, &format!("/tasks/{id}/x"), &hub.admin);
        assert_eq!(r.status, 200, "{}", r.body);
        served += 1;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(served >= 20);
    let state = crate::tasks::show(&me, &hub, &hub.admin, &id);
    assert_eq!(state["state"], "running", "{state}");
    let rss = hub.rss_mib();
    eprintln!("hub RSS {rss_before} -> {rss} MiB with 4 stalled 1 GiB responses, {served} served");
    assert!(
        rss < rss_before + 64,
        "hub RSS {rss_before} -> {rss} MiB with 4 stalled 1 GiB responses"
    );
    for c in &mut stalled {
        let _ = c.kill();
        let _ = c.wait();
    }
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
}

/// Holds N upgraded connections through the relay open.
const HOLD_CLIENT: &str = r#"
import socket, sys, time
host, port = sys.argv[1].split(":")
socks = []
for i in range(int(sys.argv[4])):
    s = socket.create_connection((host, int(port)), timeout=20)
    s.sendall(("GET /tasks/%s/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n" % (sys.argv[2], sys.argv[3])).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    socks.append(s)
print("held", flush=True)
time.sleep(600)
"#;

#[test]
fn a_token_past_its_relayed_connections_is_refused_until_one_closes() {
    let t = tempfile::tempdir().unwrap();
    let hub = crate::sync::start_hub_with(
        &t.path().join("hub"),
        None,
        &[],
        &["--lease", "10", "--relays-per-token", "2"],
    );
    let token = runner_token(&hub, "r1");
    let _r = start_runner(&hub, &token, "r1", &t.path().join("cache"), &[]);
    let (me, id) = serving_task(t.path(), &hub, "cap");
    let mut hold = Command::new("python3")
        .arg("-c")
        .arg(HOLD_CLIENT)
        .arg(hub.url.trim_start_matches("http://"))
        .arg(&id)
        .arg(&hub.admin)
        .arg("2")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hold.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    let r = get(&hub, &format!("/tasks/{id}/x"), &hub.admin);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(
        r.body.contains("limit relay_connections_per_token"),
        "{}",
        r.body
    );
    // Another token is not held back; and once the two close, this one
    // is served again.
    let other = limited_token(&me, &hub, "cap");
    assert_eq!(get(&hub, &format!("/tasks/{id}/x"), &other).status, 200);
    let _ = hold.kill();
    let _ = hold.wait();
    wait_until("the closed connections are uncounted", 30, || {
        get(&hub, &format!("/tasks/{id}/x"), &hub.admin).status == 200
    });
    ok(&mut client(&me, &hub, &hub.admin, &["task", "cancel", &id]));
}

#[test]
fn ds_up_with_s3_storage_runs_a_task_and_keeps_it_in_the_bucket() {
    let Some(ep) = s3_endpoint() else {
        return;
    };
    let bucket = s3_bucket(&ep, &format!("ds-up-{}", std::process::id()));
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let data = t.path().join("up");
    let port = free_port();
    let up = |args: &[&str]| {
        let mut c = ds(&store);
        c.args(args)
            .env_remove("DS_HUB")
            .env_remove("DS_TOKEN")
            .envs(s3_env(&ep).iter().copied());
        c
    };
    ok(
        up(&["up", "--background", "--executor", "process", "--storage"])
            .arg(format!("s3://{bucket}/ds"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(&data),
    );
    struct Down<'a>(&'a Path, &'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = ds(self.0).arg("down").arg("--data").arg(self.1).status();
        }
    }
    let _down = Down(&store, &data);
    let out = ok(&mut up(&[
        "run",
        "-w",
        "s3demo",
        "--executor",
        "process",
        "--",
        "sh",
        "-c",
        "echo hi > f; cat f",
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hi"),
        "{out:?}"
    );
    ok(up(&["down", "--data"]).arg(&data));
    // The task's snapshot is in the bucket: a hub started afresh on it serves it.
    let hub = crate::sync::start_hub_with(
        &t.path().join("hub2"),
        Some(&format!("s3://{bucket}/ds")),
        &s3_env(&ep),
        &[],
    );
    let other = t.path().join("other");
    ok(ds(&other).args(["clone", "s3demo", "--hub", &hub.url, "--token", &hub.admin]));
    assert_eq!(ok(ds(&other).args(["cat", "s3demo", "f"])).stdout, b"hi\n");
}

#[test]
fn tasks_over_rest_submit_run_and_stream_their_logs_as_server_sent_events() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "10");
    let token = runner_token(&hub, "r1");
    let _r = start_runner(&hub, &token, "r1", &t.path().join("cache"), &[]);
    let spec = r#"{"workspace":"sse","command":["sh","-c","for i in 1 2 3; do echo line $i; sleep 0.3; done; echo oops >&2"],"executor":"process"}"#;
    let r = curl(
        &format!("{}/api/v1/tasks", hub.url),
        &[
            "-H",
            &bearer(&hub.admin),
            "-H",
            "Content-Type: application/json",
            "-d",
            spec,
        ],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    // Followed while it runs: one `line` event per line, then `end` with
    // the task in its final state.
    let r = curl(
        &format!("{}/api/v1/tasks/{id}/logs?follow=true", hub.url),
        &["-N", "-H", &bearer(&hub.admin)],
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events: Vec<(String, serde_json::Value)> = r
        .body
        .split("\n\n")
        .filter_map(|e| {
            let kind = e.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((kind.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    let lines: Vec<&str> = events
        .iter()
        .filter(|(k, v)| k == "line" && v["stream"] == "stdout")
        .map(|(_, v)| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["line 1", "line 2", "line 3"], "{}", r.body);
    assert!(
        events
            .iter()
            .any(|(k, v)| k == "line" && v["stream"] == "stderr" && v["text"] == "oops")
    );
    let (kind, end) = events.last().unwrap();
    assert_eq!(kind, "end");
    assert_eq!(end["state"], "succeeded", "{end}");
    // The same lines as JSON once it ended, from a line number on.
    let all = get(&hub, &format!("/api/v1/tasks/{id}/logs?from=1"), &hub.admin).json();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|l| l["n"].as_u64().unwrap() >= 1)
    );
    // Listed, shown, and a cancel of a finished task says so.
    let listed = get(&hub, "/api/v1/tasks?workspace=sse", &hub.admin).json();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(
        get(&hub, &format!("/api/v1/tasks/{id}"), &hub.admin).json()["exit_code"],
        0
    );
    let runners = get(&hub, "/api/v1/runners", &hub.admin).json();
    assert_eq!(runners[0]["name"], "r1");
    assert_eq!(get(&hub, "/api/v1/tasks/nonsense", &hub.admin).status, 404);
}
