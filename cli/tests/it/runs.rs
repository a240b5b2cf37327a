//! Runs recorded from real workloads on real runners (process and
//! container executors), through a real hub: markers in both formats (the
//! Dotscience library's output reproduced byte for byte), a marker split
//! across reads, an oversized document refused with a warning, runs in
//! `.ds/runs/`, runs travelling with push → clone, models and provenance,
//! and runs kept when the final push conflicts.

use std::path::{Path, PathBuf};

use crate::sync::Hub;
use crate::tasks::{
    client, container_engine, detach, hub, logs, runner_token, start_runner, wait_state, wait_until,
};
use crate::*;

/// What `dotscience.publish()` prints (json.dumps(sort_keys=True,
/// indent=4) between its markers), byte for byte.
const DOTSCIENCE: &str = r#"[[DOTSCIENCE-RUN:5b2c3a7e-0c8f-4a53-9d0c-1f2e3d4c5b6a]]{
    "description": "train iris",
    "end": "20190312T105512.360213",
    "input": [
        "data/clean.csv"
    ],
    "labels": {
        "model": "iris"
    },
    "output": [
        "model.txt"
    ],
    "parameters": {
        "n_estimators": "10"
    },
    "start": "20190312T105511.123456",
    "summary": {
        "accuracy": "0.91"
    },
    "version": "1",
    "workload-file": "train.sh"
}[[/DOTSCIENCE-RUN:5b2c3a7e-0c8f-4a53-9d0c-1f2e3d4c5b6a]]
"#;

/// A workload that records five runs (two ds markers, the Dotscience one,
/// a marker split across two writes, a `.ds/runs/` file) and one 10 MiB
/// document that must be refused. A run's snapshot is taken when the
/// runner reads its marker, so the script pauses before overwriting what
/// a run output.
const TRAIN: &str = r#"set -e
mkdir -p data .ds/runs
cp raw.csv data/clean.csv
printf '[[DS-RUN:prep]]{"parameters":{"rows":3},"metrics":{"seconds":0.1},"inputs":["raw.csv"],"outputs":["data/clean.csv"],"labels":{"stage":"prep"}}[[/DS-RUN:prep]]\n'
sleep 0.5
echo "model v1" > model.txt
printf '[[DS-RUN:train-1]]{"parameters":{"lr":0.1},"metrics":{"accuracy":0.80},"inputs":["data/clean.csv"],"outputs":["model.txt"],"labels":{"model":"iris"},"workload_file":"train.sh"}[[/DS-RUN:train-1]]\n'
sleep 0.5
echo "model v2" > model.txt
cat dots.txt
sleep 0.5
echo "model v3" > model.txt
printf 'before [[DS-RU'; sleep 0.4; printf 'N:train-3]]{"parameters":{"lr":0.01},"metrics":{"accuracy":0.95},'; sleep 0.4
printf '"inputs":["data/clean.csv"],"outputs":["model.txt"],"labels":{"model":"iris"}}[[/DS-RUN:train-3]] after\n'
sleep 0.5
printf '[[DS-RUN:huge]]{"x":"'; head -c 10485760 /dev/zero | tr '\0' x; printf '"}[[/DS-RUN:huge]]\n'
echo '{"parameters":{"k":1},"metrics":{"score":2},"outputs":["/home/ds/nowhere", "model.txt"]}' > .ds/runs/notebook.json
echo finished
"#;

/// A task's whole log: its output and the runner's own lines.
fn all_logs(me: &Path, hub: &Hub, id: &str) -> String {
    let o = ok(&mut client(me, hub, &hub.admin, &["logs", id]));
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn workspace(me: &Path, work: &Path, hub: &Hub) {
    std::fs::create_dir_all(work).unwrap();
    std::fs::write(work.join("raw.csv"), b"1,2,3\n").unwrap();
    std::fs::write(work.join("train.sh"), TRAIN).unwrap();
    std::fs::write(work.join("dots.txt"), DOTSCIENCE).unwrap();
    ok(ds(me).arg("snapshot").arg(work).args(["-w", "w"]));
    ok(&mut client(me, hub, &hub.admin, &["push", "w"]));
}

/// Workspace `w` of one file, snapshotted in store `T/me` from `T/work`
/// and pushed to `hub`: (store, work dir).
fn one_file_workspace(t: &Path, hub: &Hub, name: &str, content: &[u8]) -> (PathBuf, PathBuf) {
    let (me, work) = (t.join("me"), t.join("work"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join(name), content).unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut client(&me, hub, &hub.admin, &["push", "w"]));
    (me, work)
}

/// A process-executor runner named r1 with its cache in `T/cache`.
fn runner_r1(t: &Path, hub: &Hub) -> crate::tasks::Runner {
    let rt = runner_token(hub, "r1");
    start_runner(hub, &rt, "r1", &t.join("cache"), &[])
}

fn by_name<'a>(runs: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    runs.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no run {name} in {runs:#}"))
}

/// Checks the five runs TRAIN records, as any listing gives them.
fn check_runs(runs: &serde_json::Value, task: &str) {
    let names: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "notebook",
            "train-3",
            "5b2c3a7e-0c8f-4a53-9d0c-1f2e3d4c5b6a",
            "train-1",
            "prep"
        ],
        "newest first: {runs:#}"
    );
    for r in runs.as_array().unwrap() {
        assert_eq!(r["workspace"], "w");
        assert_eq!(r["task"], task);
        assert_eq!(r["id"].as_str().unwrap().len(), 64);
        assert_eq!(r["snapshot"].as_str().unwrap().len(), 64);
    }
    let dots = by_name(runs, "5b2c3a7e-0c8f-4a53-9d0c-1f2e3d4c5b6a");
    assert_eq!(dots["origin"], "dotscience");
    assert_eq!(dots["metrics"]["accuracy"], "0.91");
    assert_eq!(dots["parameters"]["n_estimators"], "10");
    assert_eq!(dots["labels"]["model"], "iris");
    assert_eq!(dots["description"], "train iris");
    assert_eq!(dots["start"], "20190312T105511.123456");
    let t3 = by_name(runs, "train-3");
    assert_eq!(t3["metrics"]["accuracy"], 0.95);
    assert_eq!(t3["parameters"]["lr"], 0.01);
    assert_eq!(by_name(runs, "notebook")["origin"], "file");
    // Each run's snapshot is its own: the workload kept going between them.
    let snaps: std::collections::BTreeSet<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(snaps.len(), 5, "{runs:#}");
}

#[test]
fn a_process_workload_records_runs_that_travel_with_push_and_clone() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    workspace(&me, &t.path().join("work"), &hub);
    let runner = runner_r1(t.path(), &hub);
    let id = detach(&me, &hub, &hub.admin, "w", &["sh", "train.sh"], &[]);
    let done = wait_state(&me, &hub, &hub.admin, &id, &["succeeded", "failed"]);
    let log = all_logs(&me, &hub, &id);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", runner.log());
    assert!(
        log.contains("finished"),
        "the task went on after the huge run"
    );
    assert!(
        log.contains("run \"huge\" not recorded") && log.contains("byte limit"),
        "{}",
        &log[log.len().saturating_sub(3000)..]
    );
    assert!(
        log.contains("before [[DS-RUN:train-3]]"),
        "markers stay in the log"
    );

    // Through the hub (DS_HUB is set), without walking a tree.
    let runs = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["runs", "w", "--json"],
    )));
    check_runs(&runs, &id);

    // push → clone into another store: the runs come along.
    let other = t.path().join("other");
    ok(ds(&other).args(["clone", "w", "--hub", &hub.url, "--token", &hub.admin]));
    let local = json(&ok(ds(&other).args(["runs", "w", "--json"])));
    assert_eq!(local, runs, "a cloned workspace has the same runs");

    // A run with its provenance.
    let t1 = by_name(&runs, "train-1")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = json(&ok(ds(&other).args(["run", "show", &t1[..10], "--json"])));
    assert_eq!(show["id"], t1.as_str());
    assert_eq!(show["outputs"][0]["path"], "model.txt");
    assert_eq!(show["outputs"][0]["size"], 9);
    assert!(show["outputs"][0]["content"].is_string(), "{show:#}");
    assert_eq!(show["inputs"][0]["path"], "data/clean.csv");
    assert_eq!(show["code"]["workload_file"], "train.sh");
    assert!(show["code"]["workload_content"].is_string());
    let env = &show["environment"];
    assert_eq!(env["executor"], "process");
    assert_eq!(env["runner"], "r1");
    assert_eq!(env["command"], serde_json::json!(["sh", "train.sh"]));
    assert!(env["cpu_seconds"].is_number(), "{env}");
    assert!(env["peak_memory_bytes"].as_u64().unwrap() > 0, "{env}");
    let nb = by_name(&runs, "notebook")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nbs = json(&ok(ds(&other).args(["run", "show", &nb, "--json"])));
    assert_eq!(nbs["outputs"].as_array().unwrap().len(), 1, "{nbs:#}");
    assert!(
        nbs["warnings"][0]
            .as_str()
            .unwrap()
            .contains("outside the workspace")
    );

    // Three versions of one model, and the chain that made them.
    let models = json(&ok(ds(&other).args(["models", "--json"])));
    assert_eq!(models[0]["name"], "iris", "{models:#}");
    let versions = models[0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[0]["run"], t1.as_str());
    assert_eq!(versions[2]["version"], 3);
    let m = json(&ok(ds(&other).args(["model", "show", "iris@3", "--json"])));
    assert_eq!(m["version"], 3);
    assert_eq!(m["run"]["name"], "train-3");
    assert_eq!(m["files"][0]["path"], "model.txt");
    let prep = by_name(&runs, "prep")["id"].as_str().unwrap();
    let edges = m["provenance"]["edges"].as_array().unwrap();
    assert!(
        edges
            .iter()
            .any(|e| e["from"] == format!("run:{}", &prep[..12])
                && e["to"]
                    .as_str()
                    .unwrap()
                    .starts_with("file:data/clean.csv@")),
        "train-3's input traces back to prep: {edges:#?}"
    );
    let dot = ok(ds(&other).args(["provenance", "model:iris@1", "--dot"]));
    let dot = String::from_utf8(dot.stdout).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("prep"), "{dot}");
    let file = json(&ok(ds(&other).args([
        "provenance",
        "w:data/clean.csv",
        "--json",
    ])));
    assert!(
        file["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["run"] == prep),
        "{file:#}"
    );

    // Two runs compared: parameters, metrics and the files that differ.
    let t3 = by_name(&runs, "train-3")["id"].as_str().unwrap();
    let d = json(&ok(ds(&other).args(["runs", "diff", &t1, t3, "--json"])));
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&d["parameters"]), ["lr"]);
    assert_eq!(keys(&d["metrics"]), ["accuracy"]);
    let files: Vec<&str> = d["files"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert!(files.contains(&"model.txt"), "{files:?}");

    // Filters and ordering.
    let iris = json(&ok(ds(&other).args([
        "runs",
        "w",
        "--json",
        "--label",
        "model=iris",
        "--sort",
        "accuracy",
    ])));
    let acc: Vec<String> = iris
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metrics"]["accuracy"].to_string())
        .collect();
    assert_eq!(acc, ["0.95", "\"0.91\"", "0.8"]);
    let text = String::from_utf8(ok(ds(&other).args(["runs", "w"])).stdout).unwrap();
    assert!(
        text.contains("m:accuracy") && text.contains("train-3"),
        "{text}"
    );
    // Mounting a model version by name.
    assert_eq!(
        String::from_utf8(ok(ds(&other).args(["cat", "model:iris@2", "model.txt"])).stdout)
            .unwrap(),
        "model v2\n"
    );
}

#[test]
fn a_snapshot_of_a_directory_records_new_run_files_once() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("s");
    let work = t.path().join("work");
    std::fs::create_dir_all(work.join(".ds/runs")).unwrap();
    std::fs::write(work.join("out.bin"), b"o").unwrap();
    std::fs::write(
        work.join(".ds/runs/a.json"),
        format!(
            "{{\"parameters\":{{\"p\":1}},\"outputs\":[\"{}/out.bin\"]}}",
            work.display()
        ),
    )
    .unwrap();
    let s1 = json(&ok(ds(&store)
        .arg("snapshot")
        .arg(&work)
        .args(["-w", "w", "--json"])));
    assert_eq!(s1["runs"].as_array().unwrap().len(), 1);
    let s2 = json(&ok(ds(&store)
        .arg("snapshot")
        .arg(&work)
        .args(["-w", "w", "--json"])));
    assert_eq!(
        s2["runs"].as_array().unwrap().len(),
        0,
        "an unchanged file is not a new run"
    );
    std::fs::write(work.join(".ds/runs/a.json"), b"{\"parameters\":{\"p\":2}}").unwrap();
    std::fs::write(work.join(".ds/runs/bad.json"), b"{not json").unwrap();
    let o = ok(ds(&store)
        .arg("snapshot")
        .arg(&work)
        .args(["-w", "w", "--json"]));
    assert_eq!(json(&o)["runs"].as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json: run metadata is not JSON"));
    // A Dotscience artefact label: the model `net`, its files named in it.
    std::fs::write(
        work.join(".ds/runs/c.json"),
        br#"{"labels":{"artefact:net":"{\"files\":{\"model\":\"out.bin\"},\"type\":\"tensorflow-model\"}"}}"#,
    )
    .unwrap();
    ok(ds(&store).arg("snapshot").arg(&work).args(["-w", "w"]));
    let models = json(&ok(ds(&store).args(["models", "--json"])));
    assert_eq!(models[0]["name"], "net", "{models:#}");
    assert_eq!(
        models[0]["versions"][0]["files"],
        serde_json::json!(["out.bin"])
    );
    let m = json(&ok(ds(&store).args(["model", "show", "net", "--json"])));
    assert!(m["files"][0]["content"].is_string(), "{m:#}");
    std::fs::remove_file(work.join(".ds/runs/c.json")).unwrap();
    let all = json(&ok(ds(&store).args(["runs", "w", "--json"])));
    assert_eq!(all.as_array().unwrap().len(), 3);
    let runs = serde_json::Value::Array(all.as_array().unwrap()[1..].to_vec());
    assert_eq!(runs[0]["parameters"]["p"], 2);
    assert_eq!(runs[1]["parameters"]["p"], 1);
    assert_eq!(runs[1]["task"], serde_json::Value::Null);
    let show = json(&ok(ds(&store).args([
        "run",
        "show",
        runs[1]["id"].as_str().unwrap(),
        "--json",
    ])));
    assert_eq!(
        show["outputs"][0]["path"], "out.bin",
        "made workspace-relative"
    );
    assert!(show["outputs"][0]["content"].is_string());
    // gc keeps run records; verify checks them.
    ok(ds(&store).arg("gc"));
    ok(ds(&store).arg("verify"));
    assert_eq!(json(&ok(ds(&store).args(["runs", "w", "--json"]))), all);
}

#[test]
fn runs_of_a_task_whose_push_conflicts_are_kept_under_the_tasks_ref() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let (me, work) = one_file_workspace(t.path(), &hub, "f", b"one\n");
    let _r = runner_r1(t.path(), &hub);
    let script = "echo started; sleep 2; \
                  echo '[[DS-RUN:late]]{\"metrics\":{\"m\":1}}[[/DS-RUN:late]]'";
    let id = detach(&me, &hub, &hub.admin, "w", &["sh", "-c", script], &[]);
    wait_until("the task starts", 60, || {
        logs(&me, &hub, &hub.admin, &id).contains("started")
    });
    std::fs::write(work.join("f"), b"two\n").unwrap();
    ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    ok(&mut client(&me, &hub, &hub.admin, &["push", "w"]));
    let done = wait_state(&me, &hub, &hub.admin, &id, &["failed", "succeeded"]);
    assert_eq!(done["conflict"], true, "{done}");
    let log = all_logs(&me, &hub, &id);
    assert!(log.contains("recorded run late"), "{log}");
    let runs = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["runs", &id, "--json"],
    )));
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
    assert_eq!(runs[0]["name"], "late");
    assert_eq!(runs[0]["metrics"]["m"], 1);
    let none = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["runs", "w", "--json"],
    )));
    assert_eq!(none, serde_json::json!([]));
    // Every workspace the token may read: the task's ref among them.
    let all = json(&ok(&mut client(&me, &hub, &hub.admin, &["runs", "--json"])));
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[test]
fn a_container_workload_records_its_runs_with_its_image() {
    let Some(image) = container_engine() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let me = t.path().join("me");
    workspace(&me, &t.path().join("work"), &hub);
    let rt = runner_token(&hub, "c1");
    let runner = start_runner(
        &hub,
        &rt,
        "c1",
        &t.path().join("cache"),
        &["--executor", "docker", "--docker-network", "none"],
    );
    let id = detach(
        &me,
        &hub,
        &hub.admin,
        "w",
        &["sh", "train.sh"],
        &["--executor", "docker", "--image", &image],
    );
    let done = wait_state(&me, &hub, &hub.admin, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", runner.log());
    let runs = json(&ok(&mut client(
        &me,
        &hub,
        &hub.admin,
        &["runs", "w", "--json"],
    )));
    check_runs(&runs, &id);
    let t1 = by_name(&runs, "train-1")["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    let show = json(&ok(ds(&me).args(["run", "show", &t1, "--json"])));
    let env = &show["environment"];
    assert_eq!(env["executor"], "docker");
    assert_eq!(env["image"], image.as_str());
    assert!(
        env["image_digest"].as_str().is_some_and(|d| !d.is_empty()),
        "{env}"
    );
    // The notebook's absolute path was under the container's home.
    let nb = by_name(&runs, "notebook")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nbs = json(&ok(ds(&me).args(["run", "show", &nb, "--json"])));
    let outs: Vec<&str> = nbs["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(outs, ["model.txt", "nowhere"], "{nbs:#}");
}

#[test]
fn runs_pushed_through_one_hub_on_s3_are_listed_by_another_hub_on_the_bucket() {
    let Some(ep) = s3_endpoint() else {
        return;
    };
    let bucket = s3_bucket(&ep, &format!("ds-runs-{}", std::process::id()));
    let env = s3_env(&ep);
    let t = tempfile::tempdir().unwrap();
    let url = format!("s3://{bucket}/ds");
    let h1 = crate::sync::start_hub_with(&t.path().join("h1"), Some(&url), &env, &[]);
    let h2 = crate::sync::start_hub_with(&t.path().join("h2"), Some(&url), &env, &[]);
    let me = t.path().join("me");
    let work = t.path().join("work");
    std::fs::create_dir_all(work.join(".ds/runs")).unwrap();
    for i in 0..3 {
        std::fs::write(
            work.join(format!(".ds/runs/r{i}.json")),
            format!("{{\"parameters\":{{\"i\":{i}}},\"labels\":{{\"model\":\"m\"}}}}"),
        )
        .unwrap();
        ok(ds(&me).arg("snapshot").arg(&work).args(["-w", "w"]));
    }
    ok(&mut client(&me, &h1, &h1.admin, &["push", "w"]));
    let local = json(&ok(ds(&me).args(["runs", "w", "--json"])));
    assert_eq!(local.as_array().unwrap().len(), 3);
    let remote = json(&ok(&mut client(
        &me,
        &h2,
        &h2.admin,
        &["runs", "w", "--json"],
    )));
    assert_eq!(remote, local);
    let models = json(&ok(&mut client(&me, &h2, &h2.admin, &["models", "--json"])));
    assert_eq!(models[0]["versions"].as_array().unwrap().len(), 3);
    // A token limited to another workspace sees none of them.
    let limited = String::from_utf8(
        ok(&mut client(
            &me,
            &h1,
            &h1.admin,
            &["token", "--workspace", "other"],
        ))
        .stdout,
    )
    .unwrap();
    let o = client(&me, &h2, limited.trim(), &["runs", "w", "--json"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("may not use workspace"));
    let all = json(&ok(&mut client(
        &me,
        &h2,
        limited.trim(),
        &["runs", "--json"],
    )));
    assert_eq!(all, serde_json::json!([]));
}

/// The process executor stops the workload's process group from the
/// moment a run's end marker is read until the run's snapshot is taken,
/// so a workload that overwrites its output right after announcing a run
/// (with no pause of its own) mostly has that run's output recorded. Only
/// mostly: the workload runs on between its write to the pipe and the
/// runner reading it (it may even be stopped between truncating the file
/// and writing it again), so what is asserted is that no run's snapshot
/// holds an output older than the run, and the runs' snapshots are in
/// order.
#[test]
fn each_runs_snapshot_holds_the_output_as_of_its_announcement_or_later() {
    let t = tempfile::tempdir().unwrap();
    let hub = hub(t.path(), "5");
    let (me, _) = one_file_workspace(t.path(), &hub, "m.txt", b"v0\n");
    let _r = runner_r1(t.path(), &hub);
    let script = "i=1; while [ $i -le 8 ]; do echo $i > m.txt; \
                  echo \"[[DS-RUN:r$i]]{\\\"outputs\\\":[\\\"m.txt\\\"]}[[/DS-RUN:r$i]]\"; \
                  i=$((i+1)); done; echo 9 > m.txt";
    let id = detach(&me, &hub, &hub.admin, "w", &["sh", "-c", script], &[]);
    let done = wait_state(&me, &hub, &hub.admin, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    ok(&mut client(&me, &hub, &hub.admin, &["pull", "w"]));
    let runs = json(&ok(ds(&me).args(["runs", "w", "--json"])));
    assert_eq!(runs.as_array().unwrap().len(), 8, "{runs:#}");
    let mut seen = Vec::new();
    for r in runs.as_array().unwrap().iter().rev() {
        let n: u32 = r["name"].as_str().unwrap()[1..].parse().unwrap();
        let snap = r["snapshot"].as_str().unwrap();
        let got = ok(ds(&me).args(["cat", snap, "m.txt"])).stdout;
        // Empty: caught between the next write's truncation and its data.
        let text = String::from_utf8(got).unwrap();
        let v: u32 = if text.is_empty() {
            n + 1
        } else {
            text.trim().parse().unwrap()
        };
        assert!(
            v >= n,
            "run r{n}'s snapshot holds output {v}, older than the run"
        );
        seen.push((n, v));
    }
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "{seen:?}");
    let exact = seen.iter().filter(|(n, v)| n == v).count();
    eprintln!("runs whose snapshot holds exactly their output: {exact} of 8: {seen:?}");
    assert_eq!(ok(ds(&me).args(["cat", "w", "m.txt"])).stdout, b"9\n");
}
