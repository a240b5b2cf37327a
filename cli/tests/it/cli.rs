//! The everyday flow: snapshot, log, ls, cat, diff, restore, gc.

use std::fs;
use std::os::unix::ffi::OsStrExt;

use crate::*;

#[test]
fn snapshot_log_ls_cat_diff_restore() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let work = t.path().join("work");
    sample_tree(&work);
    // Files changed in the last second are never trusted to the stat cache
    // (coarse timestamps could hide a change); let them age.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(ds(&store).arg("init"));
    let s1 = json(&ok(ds(&store)
        .args(["snapshot", "--workspace", "ws", "-m", "first", "--json"])
        .arg(&work)));
    let id1 = s1["id"].as_str().unwrap().to_string();
    assert_eq!(id1.len(), 64);
    assert_eq!(s1["files"], 7);

    // unchanged: the stat cache means nothing is read again
    let s2 = json(&ok(ds(&store)
        .args(["snapshot", "--workspace", "ws", "--json"])
        .arg(&work)));
    assert_eq!(s2["files_read"], 0, "{s2}");
    assert_eq!(s2["parent"], id1.as_str());

    // change things
    fs::write(work.join("README.md"), b"# hello again\n").unwrap();
    fs::remove_file(work.join("empty")).unwrap();
    fs::create_dir(work.join("new-dir")).unwrap();
    fs::write(work.join("new-dir/added.txt"), b"new").unwrap();
    let mut model = fs::read(work.join("src/nested/deeper/model.bin")).unwrap();
    model[1_000_000..1_000_100].fill(0xAA);
    fs::write(work.join("src/nested/deeper/model.bin"), &model).unwrap();
    fs::remove_file(work.join("link-to-train")).unwrap();
    fs::write(work.join("link-to-train"), b"now a file").unwrap();
    let s3 = json(&ok(ds(&store)
        .args(["snapshot", "--workspace", "ws", "-m", "third", "--json"])
        .arg(&work)));
    assert_eq!(s3["files_read"], 4, "{s3}");
    // only the touched chunk(s) of the 3 MiB model are new
    assert!(
        s3["bytes_added_uncompressed"].as_u64().unwrap() < 1 << 20,
        "{s3}"
    );

    let log = json(&ok(ds(&store).args(["log", "ws", "--json"])));
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["message"], "third");
    assert_eq!(log[2]["id"], id1.as_str());

    let d = json(&ok(ds(&store).args(["diff", &id1[..10], "ws", "--json"])));
    let mut got: Vec<(String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let want = [
        ("README.md", "modified"),
        ("empty", "removed"),
        ("link-to-train", "type-changed"),
        ("new-dir", "added"),
        ("new-dir/added.txt", "added"),
        ("src/nested/deeper/model.bin", "modified"),
    ];
    assert_eq!(got, want.map(|(p, k)| (p.to_string(), k.to_string())));
    let human = ok(ds(&store).args(["diff", "ws~2", "ws"]));
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("M src/nested/deeper/model.bin"), "{human}");
    assert!(human.contains("changed"), "{human}");

    let ls = String::from_utf8(ok(ds(&store).args(["ls", "ws", "src"])).stdout).unwrap();
    assert!(ls.contains("train.py") && ls.contains("nested/"), "{ls}");
    let cat = ok(ds(&store).args(["cat", "ws~2", "README.md"]));
    assert_eq!(cat.stdout, b"# hello\n");
    let cat = ok(ds(&store).args(["cat", &id1, "src/nested/deeper/model.bin"]));
    assert_eq!(cat.stdout, noise(3 << 20, 7));

    // restore the latest and the first snapshot; both must match byte for byte
    let r3 = t.path().join("r3");
    ok(ds(&store).args(["restore", "ws"]).arg(&r3));
    assert_same_tree(&work, &r3);
    let r1 = t.path().join("r1");
    ok(ds(&store).args(["restore", &id1]).arg(&r1));
    assert_eq!(fs::read(r1.join("README.md")).unwrap(), b"# hello\n");
    assert_eq!(
        fs::read(r1.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"))).unwrap(),
        b"latin-1 name"
    );
    assert_eq!(
        fs::read_link(r1.join("src/nested/up-link"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"../../README.md"
    );

    // restore refuses a non-empty target
    let out = ds(&store)
        .args(["restore", "ws"])
        .arg(&r3)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    ok(ds(&store).arg("verify"));
}

#[test]
fn usage_errors_exit_2_and_missing_things_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let out = ds(&store).arg("snapshot").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ds(&store).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ds(&store).args(["log", "ws"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ds init"));
    ok(ds(&store).arg("init"));
    ok(ds(&store).arg("init")); // idempotent
    let out = ds(&store)
        .args(["snapshot", "--workspace", "ws", "/nonexistent/path"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/path"));
    let out = ds(&store)
        .args(["snapshot", "--workspace", "../evil"])
        .arg(t.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = ds(&store).args(["log", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshots"));
}

#[test]
fn json_stdout_is_only_json_and_fifos_are_recorded() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let work = t.path().join("w");
    fs::create_dir(&work).unwrap();
    fs::write(work.join("a"), b"a").unwrap();
    let fifo = work.join("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = ok(ds(&store)
        .args(["snapshot", "--workspace", "w", "--json"])
        .arg(&work));
    let v = json(&out);
    // A FIFO is recorded (counted with files), never opened.
    assert_eq!(v["files"], 2);
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(0), "{v}");
    let ls = json(&ok(ds(&store).args(["ls", "w", "--json"])));
    assert_eq!(ls[1]["name"], "pipe");
    assert_eq!(ls[1]["type"], "fifo");
    for args in [
        &["log", "w", "--json"][..],
        &["ls", "w", "--json"],
        &["verify", "--json"],
        &["gc", "--json"],
        &["workspaces", "--json"],
    ] {
        json(&ok(ds(&store).args(args)));
    }
}

#[test]
fn gc_frees_forgotten_workspaces_and_keeps_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(a.join("big"), noise(4 << 20, 1)).unwrap();
    fs::write(b.join("other"), noise(1 << 20, 2)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(ds(&store).args(["init", "--pack-size", "1048576"]));
    ok(ds(&store).args(["snapshot", "-w", "a"]).arg(&a));
    ok(ds(&store).args(["snapshot", "-w", "b"]).arg(&b));
    let dry = json(&ok(ds(&store).args(["gc", "--dry-run", "--json"])));
    assert_eq!(dry["bytes_freed"], 0, "{dry}");
    ok(ds(&store).args(["forget", "a"]));
    let g = json(&ok(ds(&store).args(["gc", "--json"])));
    assert!(g["bytes_freed"].as_u64().unwrap() >= 4 << 20, "{g}");
    ok(ds(&store).arg("verify"));
    let r = t.path().join("rb");
    ok(ds(&store).args(["restore", "b"]).arg(&r));
    assert_eq!(fs::read(r.join("other")).unwrap(), noise(1 << 20, 2));
    // a re-snapshot after gc must not trust stat-cache entries for deleted data
    let s = json(&ok(ds(&store)
        .args(["snapshot", "-w", "a", "--json"])
        .arg(&a)));
    assert_eq!(s["files_read"], 1, "{s}");
    ok(ds(&store).arg("verify"));
}

#[test]
fn the_index_is_only_a_cache() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let work = t.path().join("w");
    sample_tree(&work);
    ok(ds(&store).args(["snapshot", "-w", "w"]).arg(&work));
    fs::remove_dir_all(store.join("index")).unwrap();
    let r = t.path().join("r");
    ok(ds(&store).args(["restore", "w"]).arg(&r));
    assert_same_tree(&work, &r);
    ok(ds(&store).arg("verify"));
}
