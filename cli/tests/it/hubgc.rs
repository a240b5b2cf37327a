//! Hub gc (`ds gc --hub`): what it deletes, what it must never delete while
//! pushes run through several hubs, and SIGKILLs of the hub running it.
//! Hubs run with `--gc-settle 1` so that condemn → delete takes a second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::sync::{Hub, limited_token, start_hub_with};
use super::{assert_same_tree, ds, json, noise, ok, s3_bucket, s3_endpoint, s3_env};

const SETTLE: &[&str] = &["--gc-settle", "1"];

fn gc(store: &Path, hub: &Hub, args: &[&str]) -> serde_json::Value {
    json(&ok(ds(store)
        .args(["gc", "--json", "--hub", &hub.url, "--token", &hub.admin])
        .args(args)))
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

fn push(store: &Path, ws: &str, hub: &Hub) {
    ok(ds(store).args(["push", ws, "--hub", &hub.url, "--token", &hub.admin]));
}

/// Clones `ws` into a new store, verifies it and compares it with `dir`.
fn clone_matches(t: &Path, name: &str, ws: &str, hub: &Hub, dir: &Path) {
    let store = t.join(format!("clone-{name}"));
    ok(ds(&store).args(["clone", ws, "--hub", &hub.url, "--token", &hub.admin]));
    ok(ds(&store).arg("verify"));
    let out = t.join(format!("restored-{name}"));
    ok(ds(&store).arg("restore").arg(ws).arg(&out));
    assert_same_tree(dir, &out);
}

fn pack_files(storage: &Path) -> usize {
    files_ending(storage, "pack")
}

/// Packs whose index object is written: committed, visible to every hub.
fn committed_packs(storage: &Path) -> usize {
    files_ending(storage, "idx")
}

fn files_ending(storage: &Path, ext: &str) -> usize {
    walkdir(&storage.join("packs"))
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .count()
}

/// Replaces `dir` with exactly `files`.
fn write_files<N: AsRef<Path>>(dir: &Path, files: &[(N, Vec<u8>)]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (n, b) in files {
        std::fs::write(dir.join(n), b).unwrap();
    }
}

fn deletes_only_what_no_ref_reaches(storage: Option<&str>, env: &[(&str, &str)]) {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let hub = start_hub_with(&t.join("hub"), storage, env, SETTLE);
    let local = storage.is_none().then(|| t.join("hub/storage"));
    let me = t.join("me");
    let (keep, gone) = (t.join("keep"), t.join("gone"));
    write_files(
        &keep,
        &[("shared", noise(2 << 20, 1)), ("own", noise(1 << 20, 2))],
    );
    write_files(
        &gone,
        &[("shared", noise(2 << 20, 1)), ("own", noise(3 << 20, 3))],
    );
    ok(ds(&me).arg("snapshot").arg(&keep).args(["-w", "keep"]));
    ok(ds(&me).arg("snapshot").arg(&gone).args(["-w", "gone"]));
    push(&me, "keep", &hub);
    push(&me, "gone", &hub);

    // Only an admin may collect.
    let limited = limited_token(&me, &hub, "keep");
    let out = ds(&me)
        .args([
            "gc", "--hub", &hub.url, "--grace", "0s", "--token", &limited,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{out:?}"
    );

    // Everything is referenced: nothing to do.
    let r = gc(&me, &hub, &["--grace", "0s"]);
    assert_eq!(
        (num(&r, "packs_condemned"), num(&r, "packs_deleted")),
        (0, 0),
        "{r}"
    );
    assert_eq!(num(&r, "workspaces"), 2);

    ok(ds(&me).args(["forget", "gone", "--hub", &hub.url, "--token", &hub.admin]));
    let r = gc(&me, &hub, &["--grace", "0s", "--dry-run"]);
    assert!(num(&r, "packs_condemned") >= 1, "{r}");
    assert_eq!(r["dry_run"], true);
    let before = local.as_deref().map(pack_files);
    let r = gc(&me, &hub, &["--grace", "0s"]);
    assert!(num(&r, "packs_deleted") >= 1, "{r}");
    assert!(num(&r, "bytes_freed") >= 3 << 20, "{r}");
    assert!(
        num(&r, "bytes_freed") < 5 << 20,
        "only gone's own data goes: {r}"
    );
    if let (Some(dir), Some(n)) = (&local, before) {
        assert_eq!(pack_files(dir), n - num(&r, "packs_deleted") as usize);
    }
    // What a ref reaches is whole; the forgotten workspace is gone.
    clone_matches(t, "keep", "keep", &hub, &keep);
    let out = ds(&t.join("nothing"))
        .args(["clone", "gone", "--hub", &hub.url, "--token", &hub.admin])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Pushing it again uploads what gc deleted (the hub no longer claims it).
    push(&me, "gone", &hub);
    clone_matches(t, "gone", "gone", &hub, &gone);

    // A grace keeps condemned packs, and a push of the same data revives
    // them (the client uploads the very same pack again).
    ok(ds(&me).args(["forget", "gone", "--hub", &hub.url, "--token", &hub.admin]));
    std::thread::sleep(Duration::from_millis(2200));
    let r = gc(&me, &hub, &["--grace", "2s"]);
    assert!(num(&r, "packs_condemned") >= 1, "{r}");
    assert_eq!(num(&r, "packs_deleted"), 0, "{r}");
    assert!(num(&r, "packs_pending") >= 1, "{r}");
    assert!(r["next_deletion"].as_i64().is_some(), "{r}");
    push(&me, "gone", &hub);
    clone_matches(t, "gone2", "gone", &hub, &gone);
    std::thread::sleep(Duration::from_millis(2200));
    let r = gc(&me, &hub, &["--grace", "0s"]);
    assert_eq!(num(&r, "packs_deleted"), 0, "{r}");
    assert!(num(&r, "packs_rescued") >= 1, "{r}");
    clone_matches(t, "gone3", "gone", &hub, &gone);
    clone_matches(t, "keep2", "keep", &hub, &keep);
    // The text report says what waits.
    ok(ds(&me).args(["forget", "gone", "--hub", &hub.url, "--token", &hub.admin]));
    let out = ok(ds(&me).args([
        "gc", "--hub", &hub.url, "--token", &hub.admin, "--grace", "1h",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hub gc on"), "{text}");
}

#[test]
fn hub_gc_deletes_only_what_no_ref_reaches() {
    deletes_only_what_no_ref_reaches(None, &[]);
    if let Some(ep) = s3_endpoint() {
        let bucket = s3_bucket(&ep, &format!("ds-hubgc-{}", std::process::id()));
        deletes_only_what_no_ref_reaches(Some(&format!("s3://{bucket}/ds")), &s3_env(&ep));
    }
}

/// One writer's workspace: its files after `round` rounds.
fn writer_files(w: u64, round: u64) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        // Shared by every writer and by the churner's garbage.
        ("common".to_string(), noise(300 << 10, 7 + round % 2)),
    ];
    for r in round.saturating_sub(1)..=round {
        v.push((format!("f{r}"), noise(150 << 10, w * 100 + r)));
    }
    v
}

/// Pushes through two hubs on one bucket while others make garbage that
/// shares chunks with them and hub gc runs with `--grace 0s` again and
/// again, through either hub; then every workspace's last push must clone
/// and verify. The interleavings are the threads' own, with seeded pauses.
fn races(storage: &str, env: &[(&str, &str)], t: &Path) {
    let hubs = [
        start_hub_with(&t.join("hub1"), Some(storage), env, SETTLE),
        start_hub_with(&t.join("hub2"), Some(storage), env, SETTLE),
    ];
    let hubs = &hubs;
    const ROUNDS: u64 = 5;
    let done = std::sync::atomic::AtomicBool::new(false);
    let done = &done;
    let gcs = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                s.spawn(move || {
                    let store = t.join(format!("w{w}"));
                    let dir = t.join(format!("w{w}-dir"));
                    let ws = format!("w{w}");
                    for round in 0..ROUNDS {
                        write_files(&dir, &writer_files(w, round));
                        ok(ds(&store).arg("snapshot").arg(&dir).args(["-w", &ws]));
                        let hub = &hubs[((w + round) % 2) as usize];
                        push(&store, &ws, hub);
                        std::thread::sleep(Duration::from_millis(
                            noise(1, w * 7 + round)[0] as u64 * 4,
                        ));
                    }
                })
            })
            .collect();
        let churner = s.spawn(move || {
            let store = t.join("churn");
            let dir = t.join("churn-dir");
            for k in 0..ROUNDS * 2 {
                let mut files = writer_files(9, k);
                files.push(("mine".into(), noise(200 << 10, 5000 + k)));
                write_files(&dir, &files);
                let ws = format!("tmp{k}");
                ok(ds(&store).arg("snapshot").arg(&dir).args(["-w", &ws]));
                let hub = &hubs[(k % 2) as usize];
                push(&store, &ws, hub);
                ok(ds(&store).args(["forget", &ws, "--hub", &hub.url, "--token", &hub.admin]));
            }
        });
        let collector = s.spawn(move || {
            let me = t.join("gc");
            let mut runs = 0;
            let mut deleted = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let hub = &hubs[runs % 2];
                let r = gc(&me, hub, &["--grace", "0s"]);
                deleted += num(&r, "packs_deleted");
                runs += 1;
            }
            (runs, deleted)
        });
        // Stop the collector whatever the others did, then report.
        let results: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
        let churned = churner.join();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let gcs = collector.join();
        for r in results {
            r.unwrap();
        }
        churned.unwrap();
        gcs.unwrap()
    });
    assert!(gcs.0 >= 2, "gc ran {} times during the pushes", gcs.0);
    // A last gc, then every workspace's last push is whole.
    let r = gc(&t.join("gc"), &hubs[0], &["--grace", "0s"]);
    assert_eq!(num(&r, "workspaces"), 3, "{r}");
    eprintln!(
        "gc ran {} times during the pushes, deleting {} packs; then {r}",
        gcs.0, gcs.1
    );
    assert!(
        gcs.1 + num(&r, "packs_deleted") >= 1,
        "the churner's garbage was collected"
    );
    for w in 0..3u64 {
        let dir = t.join(format!("w{w}-dir"));
        for (i, hub) in hubs.iter().enumerate() {
            clone_matches(t, &format!("w{w}-{i}"), &format!("w{w}"), hub, &dir);
        }
        // The whole history came along and verifies (clone_matches ran verify).
        let log =
            ok(ds(&t.join(format!("clone-w{w}-0"))).args(["log", &format!("w{w}"), "--json"]));
        assert_eq!(
            json(&log).as_array().map(|a| a.len()),
            Some(ROUNDS as usize)
        );
    }
}

#[test]
fn hub_gc_racing_pushes_through_two_hubs_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    match s3_endpoint() {
        Some(ep) => {
            let bucket = s3_bucket(&ep, &format!("ds-hubgc-race-{}", std::process::id()));
            races(&format!("s3://{bucket}/ds"), &s3_env(&ep), t.path());
        }
        None => {
            let storage = format!("file://{}", t.path().join("bucket").display());
            races(&storage, &[], t.path());
        }
    }
}

/// The hub running gc is SIGKILLed at seeded moments; a restarted hub's
/// gc finishes the job, and what refs reach is whole throughout.
#[test]
fn hub_gc_sigkilled_at_any_moment_loses_nothing_and_reruns_to_completion() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let data = t.join("hub");
    let storage = format!("file://{}", t.join("bucket").display());
    let mut hub = start_hub_with(&data, Some(&storage), &[], SETTLE);
    let me = t.join("me");
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    let mut kept_packs = 0;
    for i in 0..24u64 {
        let dir = t.join(format!("d{i}"));
        write_files(
            &dir,
            &[
                ("common", noise(100 << 10, 1)),
                ("own", noise(300 << 10, 100 + i)),
            ],
        );
        let ws = format!("ws{i}");
        ok(ds(&me).arg("snapshot").arg(&dir).args(["-w", &ws]));
        push(&me, &ws, &hub);
        dirs.push((ws, dir));
        if i == 7 {
            kept_packs = pack_files(&t.join("bucket"));
        }
    }
    for (ws, _) in dirs.iter().skip(8) {
        ok(ds(&me).args(["forget", ws, "--hub", &hub.url, "--token", &hub.admin]));
    }
    for k in 0..4u64 {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ds"));
        c.env("DS_STORE", &me)
            .args([
                "gc", "--hub", &hub.url, "--token", &hub.admin, "--grace", "0s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        let pause = 100 + u64::from(noise(2, k)[0]) * 6;
        std::thread::sleep(Duration::from_millis(pause));
        hub.kill();
        let _ = child.wait();
        hub = start_hub_with(&data, Some(&storage), &[], SETTLE);
        // What refs reach is whole after every kill.
        let (ws, dir) = &dirs[k as usize];
        clone_matches(t, &format!("k{k}"), ws, &hub, dir);
    }
    // A dead gc's lease lapses (6 settle times); then gc completes.
    let r = loop {
        let out = ds(&me)
            .args([
                "gc", "--json", "--hub", &hub.url, "--token", &hub.admin, "--grace", "0s",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break json(&out);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("already running"), "{err}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let r2 = gc(&me, &hub, &["--grace", "0s"]);
    assert_eq!(
        num(&r2, "packs_deleted"),
        0,
        "the first complete gc left nothing: {r} {r2}"
    );
    assert_eq!(num(&r2, "packs_pending"), 0, "{r2}");
    assert_eq!(
        pack_files(&t.join("bucket")),
        kept_packs,
        "the packs of the kept workspaces, no more: {r} {r2}"
    );
    for (ws, dir) in dirs.iter().take(8) {
        clone_matches(t, &format!("end-{ws}"), ws, &hub, dir);
    }
}

/// A pack that is mostly garbage (a force-push left most of it behind) is
/// repacked: what is still needed is copied, the pack is condemned and
/// deleted, and the workspace clones whole, also through a second hub
/// whose cache pointed at the old pack.
#[test]
fn hub_gc_repacks_mostly_garbage_packs() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let storage = format!("file://{}", t.join("bucket").display());
    let hub = start_hub_with(&t.join("hub"), Some(&storage), &[], SETTLE);
    let other = start_hub_with(&t.join("hub2"), Some(&storage), &[], SETTLE);
    let (old, new) = (t.join("old"), t.join("new"));
    write_files(
        &old,
        &[("keep", noise(1 << 20, 1)), ("drop", noise(3 << 20, 2))],
    );
    write_files(&new, &[("keep", noise(1 << 20, 1))]);
    let (a, b) = (t.join("a"), t.join("b"));
    ok(ds(&a).arg("snapshot").arg(&old).args(["-w", "w"]));
    push(&a, "w", &hub);
    // The second hub reads the pack before gc moves its objects.
    clone_matches(t, "before", "w", &other, &old);
    ok(ds(&b).arg("snapshot").arg(&new).args(["-w", "w"]));
    ok(ds(&b).args([
        "push", "w", "--force", "--hub", &hub.url, "--token", &hub.admin,
    ]));
    // Never repacking keeps the pack: it holds something needed.
    let r = gc(&a, &hub, &["--grace", "0s", "--max-unused", "100"]);
    assert_eq!(
        (num(&r, "packs_repacked"), num(&r, "packs_deleted")),
        (0, 0),
        "{r}"
    );
    let r = gc(&a, &hub, &["--grace", "0s"]);
    // The chunk pack (keep + drop) and the tree-node pack (keep's file
    // node + the old snapshot's nodes) are both mostly garbage.
    assert!(num(&r, "packs_repacked") >= 1, "{r}");
    assert_eq!(num(&r, "packs_deleted"), num(&r, "packs_repacked"), "{r}");
    assert!(num(&r, "repack_bytes_written") >= 1 << 20, "{r}");
    assert!(
        num(&r, "repack_bytes_written") < 2 << 20,
        "only what is needed is copied: {r}"
    );
    assert!(num(&r, "bytes_freed") >= 4 << 20, "{r}");
    for (i, h) in [&hub, &other].into_iter().enumerate() {
        clone_matches(t, &format!("after{i}"), "w", h, &new);
    }
    // Nothing is left to do.
    let r = gc(&a, &other, &["--grace", "0s"]);
    assert_eq!(
        (num(&r, "packs_repacked"), num(&r, "packs_deleted")),
        (0, 0),
        "{r}"
    );
}

/// A push with several packs in flight, its hub SIGKILLed part way: the
/// push fails, a push to the restarted hub completes from what the first
/// one left, and the clone is whole.
#[test]
fn a_pipelined_push_across_a_hub_restart_resumes_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let data = t.join("hub");
    let storage = format!("file://{}", t.join("bucket").display());
    let mut hub = start_hub_with(&data, Some(&storage), &[], &[]);
    let dir = t.join("big");
    let files: Vec<(String, Vec<u8>)> = (0..12u64)
        .map(|i| (format!("f{i}"), noise(24 << 20, 300 + i)))
        .collect();
    write_files(&dir, &files);
    let me = t.join("me");
    ok(ds(&me).args(["init", "--pack-size", "16777216"]));
    ok(ds(&me).arg("snapshot").arg(&dir).args(["-w", "big"]));
    let child = ds(&me)
        .args(["push", "big", "--hub", &hub.url, "--token", &hub.admin])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill the hub once some packs are committed (with three uploads in
    // flight, pack bytes can be there long before any index object).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while committed_packs(&t.join("bucket")) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.kill();
    let out = child.wait_with_output().unwrap();
    let partial = committed_packs(&t.join("bucket"));
    hub = start_hub_with(&data, Some(&storage), &[], &[]);
    if out.status.success() {
        eprintln!("the push finished before the kill; only the clone is checked");
    }
    let out = ok(ds(&me).args([
        "push", "big", "--json", "--hub", &hub.url, "--token", &hub.admin,
    ]));
    let r = json(&out);
    eprintln!("{partial} packs were committed before the kill; the second push: {r}");
    assert!(
        num(&r, "bytes_sent") < (12 * 24) << 20 || partial == 0,
        "the second push resends only what is missing: {r}"
    );
    clone_matches(t, "big", "big", &hub, &dir);
}

/// A pull keeps chunks as the hub stored them (no second compression),
/// unless the receiving store is set to store them uncompressed.
#[test]
fn a_clone_keeps_stored_chunks_as_sent_unless_the_store_stores_raw() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let hub = start_hub_with(&t.join("hub"), None, &[], &[]);
    let dir = t.join("text");
    // Compressible (2 bits per byte) and without repeats to dedup.
    let text: Vec<u8> = noise(4 << 20, 9)
        .iter()
        .map(|b| b"acgt"[usize::from(b % 4)])
        .collect();
    write_files(&dir, &[("t.txt", text)]);
    let me = t.join("me");
    ok(ds(&me).arg("snapshot").arg(&dir).args(["-w", "t"]));
    push(&me, "t", &hub);
    let packs = |store: &Path| {
        let mut n = 0u64;
        for e in walkdir(&store.join("packs")) {
            n += std::fs::metadata(e).unwrap().len();
        }
        n
    };
    let kept = t.join("kept");
    clone_matches(t, "kept", "t", &hub, &dir);
    std::fs::rename(t.join("clone-kept"), &kept).unwrap();
    let raw = t.join("clone-raw");
    ok(ds(&raw).args(["init", "--compression", "none"]));
    clone_matches(t, "raw", "t", &hub, &dir);
    let (k, r) = (packs(&kept), packs(&raw));
    assert!(k * 2 < r, "compressed as sent {k} B, raw {r} B");
    assert!(r >= 4 << 20, "stored raw: {r} B");
}

fn walkdir(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}
