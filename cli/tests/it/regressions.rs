//! Regression tests for bugs found by tests outside the project, each named
//! after the bug. They drive the real `ds` binary over real FUSE mounts.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::*;

fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: scripts/test.sh installs fuse3; these tests need a real mount"
    );
}

fn mounted(p: &Path) -> bool {
    ds_fuse::mount_device(&fs::canonicalize(p).unwrap()).is_some()
}

/// `ds snapshot MOUNTPOINT --json` of a live read-write mount printed an id
/// that `ds ls`, `ds restore` and `ds log` could not resolve ("no snapshot
/// matches") until a later writer folded the mount's journal into the
/// index: the snapshot's objects were only in the journal.
#[test]
fn id_printed_by_a_live_mount_snapshot_resolves_before_any_writer_runs() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    sample_tree(&src);
    ok(ds(&store).args(["snapshot", "--workspace", "w"]).arg(&src));
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    ok(ds(&store)
        .args(["mount", "--rw", "--background", "w"])
        .arg(&mp));
    fs::write(mp.join("fresh.txt"), b"written through the mount\n").unwrap();
    let snap = json(&ok(ds(&store)
        .args(["snapshot", "--workspace", "w", "--json"])
        .arg(&mp)));
    let id = snap["id"].as_str().unwrap().to_string();
    // Nothing has folded the journal yet: every way of naming the snapshot
    // must work, while the mount is still up and after it is gone.
    for phase in ["mounted", "unmounted"] {
        for name in [&id[..], &id[..12], &id[..5]] {
            let ls = String::from_utf8(ok(ds(&store).args(["ls", name])).stdout).unwrap();
            assert!(ls.contains("fresh.txt"), "{phase}: ds ls {name}: {ls}");
            let dest = tmp.path().join(format!("out-{phase}-{}", name.len()));
            ok(ds(&store).arg("restore").arg(name).arg(&dest));
            assert_eq!(
                fs::read(dest.join("fresh.txt")).unwrap(),
                b"written through the mount\n",
                "{phase}: ds restore {name}"
            );
        }
        let cat = ok(ds(&store).args(["cat", &id[..8], "fresh.txt"]));
        assert_eq!(cat.stdout, b"written through the mount\n");
        if phase == "mounted" {
            ok(ds(&store).arg("umount").arg(&mp));
            assert!(!mounted(&mp));
        }
    }
    assert!(
        fs::read_dir(store.join("journal")).unwrap().count() > 0,
        "the test must run while the snapshot is only journaled"
    );
}

/// `--background` mounts wrote their logs to `STORE/mounts/logs/`, which is
/// also the dirty layer of a workspace named `logs`.
#[test]
fn a_workspace_named_logs_mounts_in_background_snapshots_and_unmounts() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    sample_tree(&src);
    for ws in ["logs", "mounts", "journal", "tmp", "index"] {
        ok(ds(&store).args(["snapshot", "--workspace", ws]).arg(&src));
        let mp = tmp.path().join(format!("mnt-{ws}"));
        fs::create_dir(&mp).unwrap();
        ok(ds(&store)
            .args(["mount", "--rw", "--background", ws])
            .arg(&mp));
        assert!(mounted(&mp), "{ws} is not mounted");
        fs::write(mp.join("new.txt"), ws.as_bytes()).unwrap();
        let snap = json(&ok(ds(&store)
            .args(["snapshot", "--workspace", ws, "--json"])
            .arg(&mp)));
        assert_eq!(snap["live_mount"], true, "{ws}: {snap}");
        ok(ds(&store).arg("umount").arg(&mp));
        assert!(!mounted(&mp), "{ws} is still mounted");
        assert!(
            fs::read_dir(store.join("logs")).unwrap().count() > 0,
            "background mount logs are not under STORE/logs"
        );
        let dest = tmp.path().join(format!("out-{ws}"));
        ok(ds(&store).arg("restore").arg(ws).arg(&dest));
        assert_eq!(fs::read(dest.join("new.txt")).unwrap(), ws.as_bytes());
        // A remount finds the workspace as snapshotted; the logs live
        // apart from every dirty layer.
        ok(ds(&store)
            .args(["mount", "--rw", "--background", ws])
            .arg(&mp));
        assert_eq!(fs::read(mp.join("new.txt")).unwrap(), ws.as_bytes());
        ok(ds(&store).arg("umount").arg(&mp));
        let in_layer: Vec<_> = fs::read_dir(store.join("mounts").join(ws))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .collect();
        assert!(
            in_layer.is_empty(),
            "{ws}: logs in its dirty layer: {in_layer:?}"
        );
    }
}

/// Found by a test outside the project: a tree deeper than PATH_MAX was
/// snapshotted with exit 0 and a warning, everything below the limit's
/// depth silently missing. Snapshot and restore now work relative to
/// directory handles: 3,000 levels (15,000 bytes of path) come back whole.
#[test]
fn a_tree_deeper_than_path_max_snapshots_and_restores_whole() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("s");
    let src = t.path().join("deep");
    std::fs::create_dir(&src).unwrap();
    // Relative mkdir + chdir: no absolute path is ever that long.
    let make = "import os\nfor i in range(3000):\n    os.mkdir('abcd')\n    os.chdir('abcd')\n    \
                if i % 500 == 0: open('f', 'w').write(str(i))\nopen('bottom', 'w').write('bottom')";
    let st = Command::new("python3")
        .args(["-c", make])
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let snap = json(&ok(ds(&store)
        .args(["snapshot", "--json", "-w", "w"])
        .arg(&src)));
    assert_eq!(snap["files"], 7, "{snap}");
    assert_eq!(snap["dirs"], 3001, "{snap}");
    assert_eq!(snap["warnings"].as_array().map(Vec::len), Some(0), "{snap}");
    let deep_path = format!("{}bottom", "abcd/".repeat(3000));
    let cat = ok(ds(&store).args(["cat", "w", &deep_path]));
    assert_eq!(cat.stdout, b"bottom");
    let out = t.path().join("out");
    ok(ds(&store).args(["restore", "w"]).arg(&out));
    // Read back the same way it was made.
    let read =
        "import os\nfor i in range(3000):\n    os.chdir('abcd')\nprint(open('bottom').read())";
    let o = Command::new("python3")
        .args(["-c", read])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "bottom");
    // And a second snapshot of the restored tree is the same snapshot.
    let again = json(&ok(ds(&store)
        .args(["snapshot", "--json", "-w", "again"])
        .arg(&out)));
    assert_eq!(again["root"], snap["root"]);
}

/// Found by a test outside the project: with the common soft limit of
/// 1,024 open files, a thousand idle connections locked an honest push
/// out. The hub raises its soft limit to the hard limit at start.
#[test]
fn the_hub_raises_its_open_files_limit_to_the_hard_limit() {
    use std::io::BufRead;
    let t = tempfile::tempdir().unwrap();
    let mut hub = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" hub --listen 127.0.0.1:0 --data \"$1\"")
        .arg(env!("CARGO_BIN_EXE_ds"))
        .arg(t.path().join("hub"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    for line in std::io::BufReader::new(hub.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    let text = fs::read_to_string(format!("/proc/{}/limits", hub.id())).unwrap();
    let _ = hub.kill();
    let _ = hub.wait();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], f[4], "soft limit raised to the hard limit: {line}");
    assert!(
        said.contains("open files limit raised from 256 to"),
        "{said}"
    );
}
