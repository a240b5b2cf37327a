//! `ds run --dataset NAME[@SNAP]:PATH` through real hub and runner
//! processes and real FUSE mounts: the snapshot resolved when the task is
//! submitted (a version mirrored meanwhile is not seen), mounted
//! read-only where the workload looks (nested in the workspace for a
//! process, bound into a container), recorded on the task, its final
//! snapshot and its runs, and left out of the workspace; refusals for
//! what does not exist, what the token may not read and paths that
//! would escape.

use std::path::Path;

use crate::sync::Hub;
use crate::tasks::{
    client, container_engine, detach, hub, logs, runner_token, show, start_runner, text, wait_state,
};
use crate::*;

/// Snapshots `files` of `dir` into workspace `ws` of `me`; returns the id.
fn version(me: &Path, dir: &Path, ws: &str, files: &[(&str, &[u8])]) -> String {
    for (p, c) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, c).unwrap();
    }
    let s = json(&ok(ds(me).args(["snapshot", "-w", ws, "--json"]).arg(dir)));
    s["id"].as_str().unwrap().to_string()
}

fn failing(me: &Path, hub: &Hub, token: &str, args: &[&str]) -> String {
    let o = client(me, hub, token, args).output().unwrap();
    let (out, err) = text(&o);
    assert!(!o.status.success(), "accepted: {args:?}\n{out}");
    err
}

#[test]
fn a_task_mounts_datasets_read_only_at_the_snapshot_resolved_when_it_was_submitted() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let src = t.path().join("src");
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let v1 = version(
        &me,
        &src,
        "imgs",
        &[("a.txt", b"one\n"), ("sub/big.bin", &big)],
    );
    let v2 = version(
        &me,
        &src,
        "imgs",
        &[("a.txt", b"two\n"), ("c.txt", b"see\n")],
    );
    ok(&mut client(&me, &hub, &hub.admin, &["push", "imgs"]));
    let work = t.path().join("work");
    version(&me, &work, "w", &[("train.sh", b"echo hi\n")]);
    ok(&mut client(&me, &hub, &hub.admin, &["push", "w"]));
    let rt = runner_token(&hub, "r1");
    let runner = start_runner(&hub, &rt, "r1", &t.path().join("cache"), &[]);

    // Two versions of one dataset side by side; writes refused; a run
    // recorded with both as its datasets.
    // (The process executor sees the host: the source is there to compare.)
    let script = format!(
        "cat data/old/a.txt data/new/a.txt; cmp data/old/sub/big.bin {}/sub/big.bin \
         && echo same-big; (echo x > data/new/a.txt) 2>/dev/null || echo read-only; \
         (mkdir data/new/d) 2>/dev/null || echo no-mkdir; echo made > out.txt; \
         printf '[[DS-RUN:r]]{{\"metrics\":{{\"m\":1}},\"outputs\":[\"out.txt\"]}}[[/DS-RUN:r]]\\n'",
        src.display()
    );
    let v1_short = &v1[..10];
    let o = client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run",
            "-w",
            "w",
            "--json",
            "--dataset",
            &format!("imgs@{v1_short}:data/old"),
            "--dataset",
            "imgs:data/new",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .output()
    .unwrap();
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "{out}\n{err}\nrunner:\n{}",
        runner.log()
    );
    assert!(
        err.contains("one\ntwo\nsame-big\nread-only\nno-mkdir\n"),
        "{err}"
    );
    let task = json(&o);
    let ds_ = task["datasets"].as_array().unwrap();
    assert_eq!(ds_.len(), 2, "{task}");
    assert_eq!(ds_[0]["name"], "imgs");
    assert_eq!(ds_[0]["at"], v1_short);
    assert_eq!(ds_[0]["snapshot"], v1.as_str());
    assert_eq!(ds_[0]["path"], "data/old");
    assert_eq!(ds_[1]["snapshot"], v2.as_str());
    assert!(ds_[1]["at"].is_null());
    let snap = task["snapshot"].as_str().unwrap().to_string();

    // The workspace got the output, not the datasets nor their mount points.
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(ok(ds(&me).args(["cat", "w", "out.txt"])).stdout, b"made\n");
    let ls = String::from_utf8(ok(ds(&me).args(["ls", "w"])).stdout).unwrap();
    assert!(
        !ls.contains("data"),
        "mount points left in the workspace: {ls}"
    );
    let log = json(&ok(ds(&me).args(["log", "w", "--json"])));
    assert_eq!(log[0]["id"], snap.as_str());
    let meta = log[0]["metadata"]["datasets"].as_str().unwrap();
    assert!(
        meta.contains(&format!("imgs@{v1}:")) && meta.contains(&format!("imgs@{v2}:")),
        "{meta}"
    );
    // The run's provenance names both snapshots and where they were.
    let run = json(&ok(ds(&me).args(["run", "show", "r", "-w", "w", "--json"])));
    let used: Vec<(&str, &str)> = run["datasets"]
        .as_array()
        .unwrap_or_else(|| panic!("{run:#}"))
        .iter()
        .map(|d| (d["snapshot"].as_str().unwrap(), d["path"].as_str().unwrap()))
        .collect();
    assert_eq!(used.len(), 2, "{run:#}");
    assert_eq!(used[0].0, v1.as_str());
    assert!(used[0].1.ends_with("/home/data/old"), "{run:#}");
    assert_eq!(used[1].0, v2.as_str());

    // Lazy: a task that reads one small file of the dataset moves that
    // file, not the 3 MiB beside it.
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["cat", "d/c.txt"],
        &["--dataset", "imgs:d"],
    );
    let done = wait_state(&me, &hub, &hub.admin, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(logs(&me, &hub, &hub.admin, &id), "see\n");
    let all = text(&ok(&mut client(&me, &hub, &hub.admin, &["logs", &id]))).1;
    let read: u64 = all
        .lines()
        .find_map(|l| {
            l.split_once("chunks (")?
                .1
                .split_once(" bytes) were read")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no lazy read report in {all}"));
    assert!(
        read > 0 && read < 1 << 20,
        "{read} bytes fetched to read a 4-byte file:\n{all}"
    );
    // What a task fetched is kept in the runner's cache: the same file
    // again is read locally.
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["cat", "d/c.txt"],
        &["--dataset", "imgs:d"],
    );
    wait_state(&me, &hub, &hub.admin, &id, &["succeeded", "failed"]);
    assert_eq!(logs(&me, &hub, &hub.admin, &id), "see\n");
    let all = text(&ok(&mut client(&me, &hub, &hub.admin, &["logs", &id]))).1;
    assert!(
        all.contains("datasets: 0 chunks (0 bytes) were read from the hub"),
        "{all}"
    );

    // Resolved at submit: a task queued before v3 is pushed still sees v2.
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["cat", "d/a.txt"],
        &["--dataset", "imgs:d", "--label", "later=yes"],
    );
    assert_eq!(
        show(&me, &hub, &hub.admin, &id)["datasets"][0]["snapshot"],
        v2.as_str()
    );
    let v3 = version(&me, &src, "imgs", &[("a.txt", b"three\n")]);
    ok(&mut client(&me, &hub, &hub.admin, &["push", "imgs"]));
    let rt2 = runner_token(&hub, "r2");
    let r2 = start_runner(
        &hub,
        &rt2,
        "r2",
        &t.path().join("cache2"),
        &["--label", "later=yes"],
    );
    let done = wait_state(&me, &hub, &hub.admin, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", r2.log());
    assert_eq!(logs(&me, &hub, &hub.admin, &id), "two\n");
    let o = ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &[
            "run",
            "-w",
            "w",
            "--dataset",
            &format!("imgs@{}:d", &v3[..12]),
            "--",
            "cat",
            "d/a.txt",
        ],
    ));
    assert_eq!(text(&o).0, "three\n");

    // Refusals, each at submit, saying why.
    let a = &hub.admin;
    let e = failing(
        &me,
        &hub,
        a,
        &["run", "-w", "w", "--dataset", "nope:d", "--", "true"],
    );
    assert!(e.contains("has no dataset \"nope\""), "{e}");
    let e = failing(
        &me,
        &hub,
        a,
        &[
            "run",
            "-w",
            "w",
            "--dataset",
            "imgs@0000ffff:d",
            "--",
            "true",
        ],
    );
    assert!(e.contains("has no snapshot 0000ffff"), "{e}");
    for bad in [
        "imgs:../x",
        "imgs:/home/ds",
        "imgs:",
        "imgs@zz:d",
        "imgs:a/./b",
    ] {
        let e = failing(
            &me,
            &hub,
            a,
            &["run", "-w", "w", "--dataset", bad, "--", "true"],
        );
        assert!(e.contains("--dataset"), "{bad}: {e}");
    }
    let e = failing(
        &me,
        &hub,
        a,
        &["run", "-w", "w", "--dataset", "imgs:/data", "--", "true"],
    );
    assert!(e.contains("a place in a container"), "{e}");
    let e = failing(
        &me,
        &hub,
        a,
        &[
            "run",
            "-w",
            "w",
            "--dataset",
            "imgs:d",
            "--dataset",
            "imgs:d/e",
            "--",
            "true",
        ],
    );
    assert!(e.contains("one would hide the other"), "{e}");
    let limited =
        String::from_utf8(ok(&mut client(&me, &hub, a, &["token", "-w", "w"])).stdout).unwrap();
    let e = failing(
        &me,
        &hub,
        limited.trim(),
        &["run", "-w", "w", "--dataset", "imgs:d", "--", "true"],
    );
    assert!(e.contains("may not use workspace \"imgs\""), "{e}");
    // Over REST too (the same checks: it submits through the same call).
    let r = std::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-X", "POST", "-H"])
        .arg(format!("authorization: Bearer {a}"))
        .args(["-H", "content-type: application/json", "-d"])
        .arg(r#"{"workspace":"w","command":["true"],"datasets":["imgs:../up"]}"#)
        .arg(format!("{}/api/v1/tasks", hub.url))
        .output()
        .unwrap();
    let r = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(r.ends_with("\n400") && r.contains("'..'"), "{r}");
}

#[test]
fn a_container_sees_datasets_read_only_at_absolute_and_home_paths() {
    let Some(image) = container_engine() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    let v = version(
        &me,
        &t.path().join("src"),
        "imgs",
        &[("x/a.txt", b"data\n")],
    );
    ok(&mut client(&me, &hub, &hub.admin, &["push", "imgs"]));
    version(&me, &t.path().join("work"), "w", &[("keep.txt", b"k\n")]);
    ok(&mut client(&me, &hub, &hub.admin, &["push", "w"]));
    let rt = runner_token(&hub, "c1");
    let runner = start_runner(
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
    let script = "cat /data/x/a.txt; cat here/x/a.txt; (touch /data/new) 2>/dev/null || echo ro; \
                  (touch here/new) 2>/dev/null || echo ro; id -u; echo out > out.txt";
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
            "--json",
            "--dataset",
            "imgs:/data",
            "--dataset",
            "imgs:here",
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .output()
    .unwrap();
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "{out}\n{err}\nrunner:\n{}",
        runner.log()
    );
    assert!(err.contains("data\ndata\nro\nro\n1000\n"), "{err}");
    let task = json(&o);
    assert_eq!(task["datasets"][0]["snapshot"], v.as_str());
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    assert_eq!(ok(ds(&me).args(["cat", "w", "out.txt"])).stdout, b"out\n");
    let ls = String::from_utf8(ok(ds(&me).args(["ls", "w"])).stdout).unwrap();
    assert!(!ls.contains("here"), "{ls}");
}

/// The hub a lazy mount reads from restarts while the workload is between
/// two files: the second is read on a new connection, whole, and the task
/// ends as if nothing happened.
#[test]
fn a_lazy_dataset_mount_reads_on_through_a_hub_restart() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("hub");
    let first = crate::sync::start_hub_with(&data, None, &[], &["--lease", "20"]);
    let listen = format!("127.0.0.1:{}", first.url.rsplit(':').next().unwrap());
    let me = t.path().join("me");
    let src = t.path().join("src");
    let f = |seed: u32| -> Vec<u8> {
        (0..5u32 << 20)
            .map(|i| (i * seed + i / 999) as u8)
            .collect()
    };
    version(&me, &src, "imgs", &[("f1", &f(3)), ("f2", &f(5))]);
    ok(&mut client(&me, &first, &first.admin, &["push", "imgs"]));
    let rt = runner_token(&first, "r1");
    let runner = start_runner(&first, &rt, "r1", &t.path().join("cache"), &[]);
    let flag = t.path().join("go");
    let script = format!(
        "cmp d/f1 {s}/f1 && echo first-ok; while [ ! -e {g} ]; do sleep 0.05; done; \
         cmp d/f2 {s}/f2 && echo second-ok",
        s = src.display(),
        g = flag.display()
    );
    let id = detach(
        &me,
        &first,
        &first.admin,
        "w",
        &["sh", "-c", &script],
        &["--dataset", "imgs:d"],
    );
    crate::tasks::wait_until("the first file is read", 60, || {
        logs(&me, &first, &first.admin, &id).contains("first-ok")
    });
    drop(first);
    let again =
        crate::sync::start_hub_with(&data, None, &[], &["--lease", "20", "--listen", &listen]);
    std::fs::write(&flag, b"").unwrap();
    let done = wait_state(
        &me,
        &again,
        &again.admin,
        &id,
        &["succeeded", "failed", "lost"],
    );
    assert_eq!(
        done["state"],
        "succeeded",
        "{done}\nrunner:\n{}",
        runner.log()
    );
    assert_eq!(
        logs(&me, &again, &again.admin, &id),
        "first-ok\nsecond-ok\n"
    );
}
