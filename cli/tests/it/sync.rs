//! Push, pull and clone through real `ds hub` processes over loopback gRPC:
//! only changes travel, conflicts are refused with reasons, tokens are
//! enforced, a SIGKILLed push resumes without resending what landed, and two
//! hubs on one S3 bucket (a real moto server) lose no update.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::*;

pub struct Hub {
    child: Child,
    pub url: String,
    pub admin: String,
}

impl Hub {
    /// SIGKILLs the hub process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The hub process's resident memory, in MiB.
    pub fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token limited to workspace `ws`, made with the admin token.
pub fn limited_token(me: &Path, hub: &Hub, ws: &str) -> String {
    let out = ok(ds(me).args(["token", "-w", ws, "--hub", &hub.url, "--token", &hub.admin]));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn start_hub(data: &Path, storage: Option<&str>, env: &[(&str, &str)]) -> Hub {
    start_hub_with(data, storage, env, &[])
}

pub fn start_hub_with(
    data: &Path,
    storage: Option<&str>,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Hub {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ds"));
    c.arg("hub");
    if !extra.contains(&"--listen") {
        c.args(["--listen", "127.0.0.1:0"]);
    }
    c.arg("--data").arg(data).args(extra);
    if let Some(s) = storage {
        c.args(["--storage", s]);
    }
    c.envs(env.iter().copied()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("start ds hub");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let url = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("ds hub exited before listening:\n{seen}");
        };
        seen.push_str(&line);
        seen.push('\n');
        if let Some(u) = line.split("listening on ").nth(1) {
            break u.trim().to_string();
        }
    };
    // Keep draining stderr so the hub never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    Hub { child, url, admin }
}

fn hub_cmd(store: &Path, hub: &Hub, token: &str, args: &[&str]) -> Command {
    let mut c = ds(store);
    c.args(args).args(["--hub", &hub.url, "--token", token]);
    c
}

fn fails_saying(c: &mut Command, says: &str) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{c:?} should fail: {err}");
    assert!(
        err.contains(says),
        "{c:?}: stderr does not say {says:?}:\n{err}"
    );
    err
}

fn restore_eq(a: &Path, b: &Path, snap: &str, t: &Path) {
    let (ra, rb) = (t.join("ra"), t.join("rb"));
    let _ = std::fs::remove_dir_all(&ra);
    let _ = std::fs::remove_dir_all(&rb);
    ok(ds(a).args(["restore", snap]).arg(&ra));
    ok(ds(b).args(["restore", snap]).arg(&rb));
    let d = Command::new("diff")
        .arg("-r")
        .arg(&ra)
        .arg(&rb)
        .output()
        .unwrap();
    assert!(
        d.status.success(),
        "restores differ:\n{}",
        String::from_utf8_lossy(&d.stdout)
    );
}

fn head(store: &Path, ws: &str) -> String {
    let v = json(&ok(ds(store).args(["log", ws, "--json"])));
    v[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn push_clone_pull_ship_only_what_changed_and_refuse_conflicts() {
    let t = tempfile::tempdir().unwrap();
    let hub = start_hub(&t.path().join("hub"), None, &[]);
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let work = t.path().join("work");
    sample_tree(&work);
    ok(ds(&a).arg("snapshot").arg(&work).args(["-w", "w"]));

    let first = json(&ok(&mut hub_cmd(
        &a,
        &hub,
        &hub.admin,
        &["push", "w", "--json"],
    )));
    assert!(first["chunks_sent"].as_u64().unwrap() > 40, "{first}");
    assert_eq!(first["up_to_date"], false);
    let again = json(&ok(&mut hub_cmd(
        &a,
        &hub,
        &hub.admin,
        &["push", "w", "--json"],
    )));
    assert_eq!(again["up_to_date"], true, "{again}");
    assert_eq!(again["objects_sent"], 0);
    assert!(again["round_trips"].as_u64().unwrap() <= 3, "{again}");

    let cl = json(&ok(&mut hub_cmd(
        &b,
        &hub,
        &hub.admin,
        &["clone", "w", "--json"],
    )));
    assert_eq!(cl["snapshot"].as_str().unwrap(), head(&a, "w"));
    restore_eq(&a, &b, "w", t.path());
    fails_saying(
        &mut hub_cmd(&b, &hub, &hub.admin, &["clone", "w"]),
        "already exists",
    );

    // A 64 KiB overwrite inside a 3 MiB file and a CSV append.
    let model = work.join("src/nested/deeper/model.bin");
    let mut m = std::fs::read(&model).unwrap();
    m[1 << 20..(1 << 20) + (64 << 10)].copy_from_slice(&noise(64 << 10, 99));
    std::fs::write(&model, &m).unwrap();
    let mut csv = std::fs::read(work.join("data.csv")).unwrap();
    csv.extend_from_slice(b"20000,1,2\n".repeat(100).as_slice());
    std::fs::write(work.join("data.csv"), csv).unwrap();
    ok(ds(&a).arg("snapshot").arg(&work).args(["-w", "w"]));
    let inc = json(&ok(&mut hub_cmd(
        &a,
        &hub,
        &hub.admin,
        &["push", "w", "--json"],
    )));
    let sent = inc["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < 700 << 10,
        "incremental push sent {sent} bytes: {inc}"
    );
    assert!(inc["chunks_skipped"].as_u64().unwrap() > 0, "{inc}");
    let pulled = json(&ok(&mut hub_cmd(
        &b,
        &hub,
        &hub.admin,
        &["pull", "w", "--json"],
    )));
    assert!(
        pulled["bytes_sent"].as_u64().unwrap() < 700 << 10,
        "{pulled}"
    );
    assert_eq!(head(&b, "w"), head(&a, "w"));
    restore_eq(&a, &b, "w", t.path());
    ok(ds(&b).arg("verify"));

    // B moves on and pushes; A, behind, snapshots something else.
    std::fs::write(work.join("b.txt"), b"from b").unwrap();
    ok(ds(&b).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut hub_cmd(&b, &hub, &hub.admin, &["push", "w"]));
    std::fs::write(work.join("b.txt"), b"from a").unwrap();
    ok(ds(&a).arg("snapshot").arg(&work).args(["-w", "w"]));
    let err = fails_saying(
        &mut hub_cmd(&a, &hub, &hub.admin, &["push", "w"]),
        "not in your history",
    );
    assert!(err.contains("--force"), "{err}");
    let forced = json(&ok(&mut hub_cmd(
        &a,
        &hub,
        &hub.admin,
        &["push", "w", "--force", "--json"],
    )));
    assert_eq!(forced["previous"].as_str().unwrap(), head(&b, "w"));
    assert_eq!(forced["forced"], true);
    // Now B's local head is not in the hub's history: pull refuses, --force takes it.
    fails_saying(
        &mut hub_cmd(&b, &hub, &hub.admin, &["pull", "w"]),
        "does not descend",
    );
    ok(&mut hub_cmd(
        &b,
        &hub,
        &hub.admin,
        &["pull", "w", "--force"],
    ));
    assert_eq!(head(&b, "w"), head(&a, "w"));
}

#[test]
fn tokens_are_required_checked_and_scoped_and_remotes_are_saved() {
    let t = tempfile::tempdir().unwrap();
    let hub = start_hub(&t.path().join("hub"), None, &[]);
    let a = t.path().join("a");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("f"), b"x").unwrap();
    ok(ds(&a).arg("snapshot").arg(&work).args(["-w", "w"]));

    fails_saying(
        ds(&a)
            .args(["push", "w", "--hub", &hub.url])
            .env_remove("DS_TOKEN"),
        "no token",
    );
    fails_saying(
        &mut hub_cmd(&a, &hub, "ds_bogus", &["push", "w"]),
        "not known to the hub",
    );
    let limited = String::from_utf8(
        ok(&mut hub_cmd(
            &a,
            &hub,
            &hub.admin,
            &["token", "-w", "other"],
        ))
        .stdout,
    )
    .unwrap();
    fails_saying(
        &mut hub_cmd(&a, &hub, limited.trim(), &["push", "w"]),
        "may not use workspace",
    );
    fails_saying(
        &mut hub_cmd(&a, &hub, limited.trim(), &["token", "-w", "w"]),
        "admin",
    );

    ok(ds(&a).args(["remote", "add", "origin", &hub.url, "--token", &hub.admin]));
    let mode = std::fs::metadata(a.join("remotes.json"))
        .unwrap()
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
    ok(ds(&a)
        .args(["push", "w"])
        .env_remove("DS_TOKEN")
        .env_remove("DS_HUB"));
    fails_saying(
        ds(&a).args(["push", "w", "--hub", "nosuch"]),
        "no remote named",
    );
}

fn packs_in(dir: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "idx") {
                n += 1;
                bytes += std::fs::metadata(p.with_extension("pack")).map_or(0, |m| m.len());
            }
        }
    }
    (n, bytes)
}

#[test]
fn a_push_killed_with_sigkill_resumes_without_resending_what_landed() {
    let t = tempfile::tempdir().unwrap();
    let hub = start_hub(&t.path().join("hub"), None, &[]);
    let bucket = t.path().join("hub/storage");
    let a = t.path().join("a");
    ok(ds(&a).args(["init", "--pack-size", "1048576", "--compression", "none"]));
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    for i in 0..12u64 {
        std::fs::write(work.join(format!("part{i}.bin")), noise(8 << 20, i)).unwrap();
    }
    ok(ds(&a).arg("snapshot").arg(&work).args(["-w", "w"]));

    let mut push = hub_cmd(&a, &hub, &hub.admin, &["push", "w"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let landed_before_kill = loop {
        let (n, _) = packs_in(&bucket);
        if n >= 3 {
            push.kill().unwrap(); // SIGKILL
            break n;
        }
        assert!(
            push.try_wait().unwrap().is_none(),
            "push finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    push.wait().unwrap();
    assert!(
        !bucket.join("refs/w").exists(),
        "the killed push moved the ref"
    );
    let (_, landed) = packs_in(&bucket);
    assert!(landed_before_kill >= 3);

    let r = json(&ok(&mut hub_cmd(
        &a,
        &hub,
        &hub.admin,
        &["push", "w", "--json"],
    )));
    let total: u64 = 96 << 20;
    let sent = r["bytes_sent"].as_u64().unwrap();
    assert!(
        sent + landed <= total + (2 << 20),
        "resumed push sent {sent} bytes although {landed} had landed: {r}"
    );
    let b = t.path().join("b");
    ok(&mut hub_cmd(&b, &hub, &hub.admin, &["clone", "w"]));
    ok(ds(&b).arg("verify"));
    restore_eq(&a, &b, "w", t.path());
}

#[test]
fn two_hubs_on_one_s3_bucket_lose_no_update() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = s3_bucket(&ep, &format!("ds-cli-{}", std::process::id()));
    let env = s3_env(&ep);
    let t = tempfile::tempdir().unwrap();
    let url = format!("s3://{bucket}/ds");
    let h1 = start_hub(&t.path().join("h1"), Some(&url), &env);
    let h2 = start_hub(&t.path().join("h2"), Some(&url), &env);
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let work = t.path().join("work");
    sample_tree(&work);
    ok(ds(&a).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut hub_cmd(&a, &h1, &h1.admin, &["push", "w"]));
    // Each hub accepts the other's admin token: grants live in the bucket.
    ok(&mut hub_cmd(&b, &h2, &h1.admin, &["clone", "w"]));
    for round in 0..3 {
        for (s, who) in [(&a, "a"), (&b, "b")] {
            std::fs::write(work.join("who"), format!("{who} {round}")).unwrap();
            ok(ds(s).arg("snapshot").arg(&work).args(["-w", "w"]));
        }
        let pa = hub_cmd(&a, &h1, &h1.admin, &["push", "w"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pb = hub_cmd(&b, &h2, &h2.admin, &["push", "w"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (oa, ob) = (
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        );
        let wins = [&oa, &ob].iter().filter(|o| o.status.success()).count();
        assert_eq!(
            wins,
            1,
            "round {round}: exactly one concurrent push must win:\n{}\n{}",
            String::from_utf8_lossy(&oa.stderr),
            String::from_utf8_lossy(&ob.stderr)
        );
        let (winner, loser, lout): (&PathBuf, &PathBuf, _) = if oa.status.success() {
            (&a, &b, &ob)
        } else {
            (&b, &a, &oa)
        };
        let why = String::from_utf8_lossy(&lout.stderr);
        assert!(
            why.contains("not in your history") || why.contains("not at"),
            "the loser is not told why: {why}"
        );
        // The hub (read through either hub) holds the winner's snapshot.
        let c = t.path().join(format!("check{round}"));
        ok(&mut hub_cmd(&c, &h2, &h2.admin, &["clone", "w"]));
        assert_eq!(head(&c, "w"), head(winner, "w"));
        // The loser catches up for the next round.
        ok(&mut hub_cmd(
            loser,
            &h1,
            &h1.admin,
            &["pull", "w", "--force"],
        ));
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (Debian package openssl) makes the test certificates");
    assert!(st.success(), "openssl {args:?}");
}

#[test]
fn tls_hub_serves_clients_that_trust_its_ca_and_only_those() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // A private CA and a server certificate for 127.0.0.1 signed by it.
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=ds test CA",
            ],
        ]
        .concat(),
        d,
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                "key.pem",
                "-out",
                "req.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
        d,
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
        d,
    );
    let (cert, key, ca) = (d.join("cert.pem"), d.join("key.pem"), d.join("ca.pem"));
    let hub = start_hub_with(
        &t.path().join("hub"),
        None,
        &[],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(hub.url.starts_with("https://"), "{}", hub.url);
    let a = t.path().join("a");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("f"), b"over tls").unwrap();
    ok(ds(&a).arg("snapshot").arg(&work).args(["-w", "w"]));
    // Without the CA, the certificate is not trusted.
    let out = hub_cmd(&a, &hub, &hub.admin, &["push", "w"])
        .env_remove("DS_CA_CERT")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted"
    );
    ok(hub_cmd(&a, &hub, &hub.admin, &["push", "w"])
        .arg("--ca-cert")
        .arg(&ca));
    let b = t.path().join("b");
    ok(hub_cmd(&b, &hub, &hub.admin, &["clone", "w"]).env("DS_CA_CERT", &ca));
    assert_eq!(head(&b, "w"), head(&a, "w"));
}

/// `ds forget W --hub`: on a hub over local storage and over S3 (where
/// forgetting is a conditional write of a tombstone).
fn forget_on_a_hub(storage: Option<&str>, env: &[(&str, &str)]) {
    let t = tempfile::tempdir().unwrap();
    let hub = start_hub_with(&t.path().join("hub"), storage, env, &[]);
    let me = t.path().join("me");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("f"), b"one").unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "gone"]));
    ok(ds(&me).args(["push", "gone", "--hub", &hub.url, "--token", &hub.admin]));
    let limited = limited_token(&me, &hub, "gone");
    // Only an admin may forget a workspace on the hub.
    let out = ds(&me)
        .args(["forget", "gone", "--hub", &hub.url, "--token", &limited])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{out:?}"
    );
    let out = ok(ds(&me).args(["forget", "gone", "--hub", &hub.url, "--token", &hub.admin]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forgot workspace gone"));
    // Gone from the hub (clone, the API), kept in the local store.
    let other = t.path().join("other");
    let out = ds(&other)
        .args(["clone", "gone", "--hub", &hub.url, "--token", &hub.admin])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let listed = Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {}", hub.admin)])
        .arg(format!("{}/api/v1/workspaces", hub.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "[]");
    ok(ds(&me).args(["log", "gone"]));
    // Forgetting it again says there is nothing; pushing it again works.
    let out = ds(&me)
        .args(["forget", "gone", "--hub", &hub.url, "--token", &hub.admin])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no workspace"),
        "{out:?}"
    );
    ok(ds(&me).args(["push", "gone", "--hub", &hub.url, "--token", &hub.admin]));
    ok(ds(&other).args(["clone", "gone", "--hub", &hub.url, "--token", &hub.admin]));
}

#[test]
fn forget_on_a_hub_removes_its_ref_only_for_an_admin() {
    forget_on_a_hub(None, &[]);
    if let Some(ep) = s3_endpoint() {
        let bucket = s3_bucket(&ep, &format!("ds-forget-{}", std::process::id()));
        forget_on_a_hub(Some(&format!("s3://{bucket}/ds")), &s3_env(&ep));
    }
}
