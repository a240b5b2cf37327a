//! A home directory a real workload lives in: hard links (a conda-style
//! farm), FIFOs, unix sockets, device nodes, owners, set-id bits and
//! extended attributes, made by real tools in a real read-write FUSE
//! mount, snapshotted, pushed, cloned and restored elsewhere, then
//! compared with `rsync -aHAXn --itemize-changes` (no output: identical).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::mount::{Mount, fuse_available, sh};
use crate::sync::start_hub;
use crate::*;

/// What `rsync -aHAX` would change to make `to` like `from`; empty when
/// they hold the same names, types, content, modes, owners, times, hard
/// links and attributes.
fn rsync_diff(from: &Path, to: &Path) -> String {
    let out = Command::new("rsync")
        .args(["-aHAXn", "--itemize-changes", "--numeric-ids"])
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .output()
        .expect("rsync (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "rsync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The top directory's own mtime is not part of a snapshot (nothing
    // names it); everything below it is.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l != ".d..t...... ./")
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Run as root (as the test suite runs): chown, device nodes, `trusted.*`.
const MAKE_HOME: &str = r#"
mkdir -p env/pkgs/numpy/lib env/envs/a/lib env/envs/b/lib
for i in $(seq 1 40); do
  echo "module $i" > env/pkgs/numpy/lib/m$i.py
  ln env/pkgs/numpy/lib/m$i.py env/envs/a/lib/m$i.py
  ln env/pkgs/numpy/lib/m$i.py env/envs/b/lib/m$i.py
done
mkfifo -m 600 .pipe
python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('.agent.sock')"
mknod -m 666 null c 1 3
echo model > model.bin
chown 1000:1000 model.bin
chmod 4750 model.bin
chmod 1777 env
python3 -c "
import os
os.setxattr('model.bin', 'user.mime_type', b'application/octet-stream')
os.setxattr('env', 'trusted.overlay', b'\x00\x01')
os.setxattr('model.bin', 'security.capability', bytes([1,0,0,2, 0,4,0,0, 0,0,0,0, 0,0,0,0, 0,0,0,0]))
"
ln -s model.bin latest
chown -h 1000:1001 latest
mkdir pkg && echo src > pkg/setup.py && chown -R 123:456 pkg && tar -cf ../pkg.tar pkg && rm -rf pkg
tar -xpf ../pkg.tar
"#;

#[test]
fn a_home_with_every_file_type_round_trips_through_a_mount_a_hub_and_a_restore() {
    if !fuse_available() {
        return;
    }
    assert!(
        ds_store::meta::is_root(),
        "this test makes device nodes and gives files away: run it as root (scripts/test.sh does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    ok(ds(&store).arg("init"));
    let mp = t.join("home");
    let m = Mount::start(&store, &["--rw", "--allow-other", "home"], &mp);
    sh(&mp, MAKE_HOME);
    let linked = fs::metadata(mp.join("env/envs/a/lib/m7.py")).unwrap();
    assert_eq!(linked.nlink(), 3);
    assert_eq!(
        linked.ino(),
        fs::metadata(mp.join("env/pkgs/numpy/lib/m7.py"))
            .unwrap()
            .ino()
    );
    // As a workload would leave it: snapshot the live mount.
    ok(ds(&store)
        .args(["snapshot", "--workspace", "home"])
        .arg(&mp));

    // Restored from the same store: identical to the mount.
    let local = t.join("restored-local");
    let r = json(&ok(ds(&store)
        .args(["restore", "home", "--json"])
        .arg(&local)));
    assert_eq!(r["hardlinks"], 80, "{r}");
    assert_eq!(r["specials"], 3, "{r}");
    assert_eq!(rsync_diff(&mp, &local), "");

    // Through a hub to another store and restored there: still identical.
    let hub = start_hub(&t.join("hub"), None, &[]);
    ok(ds(&store).args(["push", "home", "--hub", &hub.url, "--token", &hub.admin]));
    let other = t.join("other");
    ok(ds(&other).args(["clone", "home", "--hub", &hub.url, "--token", &hub.admin]));
    ok(ds(&other).arg("verify"));
    let far = t.join("restored-far");
    ok(ds(&other).arg("restore").arg("home").arg(&far));
    assert_eq!(rsync_diff(&mp, &far), "");
    let m7 = fs::metadata(far.join("env/envs/b/lib/m7.py")).unwrap();
    assert_eq!(
        (m7.nlink(), m7.ino()),
        (
            3,
            fs::metadata(far.join("env/pkgs/numpy/lib/m7.py"))
                .unwrap()
                .ino()
        )
    );
    m.umount();

    // A read-only mount of the clone shows the same tree.
    let ro = t.join("ro");
    let m = Mount::start(&other, &["home"], &ro);
    assert_eq!(rsync_diff(&ro, &far), "");
    m.umount();

    // Without owners or attributes when asked (as root, owners are the
    // restorer's then).
    let bare = t.join("bare");
    ok(ds(&other)
        .args(["restore", "home", "--no-owners", "--no-xattrs"])
        .arg(&bare));
    let md = fs::metadata(bare.join("model.bin")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
    let listed = sh(
        &bare,
        "python3 -c \"import os; print(os.listxattr('model.bin'))\"",
    );
    assert_eq!(listed.trim(), "[]");
}

/// A snapshot of a plain directory records the same things: owners,
/// links, specials and attributes survive `ds snapshot` + `ds restore`.
#[test]
fn a_directory_snapshot_and_restore_keep_what_rsync_haxx_keeps() {
    assert!(
        ds_store::meta::is_root(),
        "run as root (scripts/test.sh does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    fs::create_dir_all(&src).unwrap();
    sh(&src, MAKE_HOME);
    let store = t.join("store");
    ok(ds(&store)
        .args(["snapshot", "--workspace", "dir"])
        .arg(&src));
    let out = t.join("out");
    ok(ds(&store).arg("restore").arg("dir").arg(&out));
    assert_eq!(rsync_diff(&src, &out), "");
    // ls --json shows owners and link groups.
    let ls = json(&ok(ds(&store).args(["ls", "dir", "--json"])));
    let model = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "model.bin")
        .unwrap();
    assert_eq!(
        (model["uid"].as_u64(), model["gid"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert!(model["xattrs"].as_array().unwrap().len() == 2, "{model}");
    // Mode, owner and attribute changes are their own kind of change.
    sh(
        &src,
        "chmod 600 pkg/setup.py && chown -h 5:5 latest && \
         python3 -c \"import os; os.setxattr('env', 'user.note', b'n')\"",
    );
    ok(ds(&store)
        .args(["snapshot", "--workspace", "dir"])
        .arg(&src));
    let d = json(&ok(ds(&store).args(["diff", "dir~1", "dir", "--json"])));
    let got: Vec<(String, String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
                c["metadata"].to_string(),
            )
        })
        .collect();
    let want = [
        ("env", "metadata", r#"["xattrs"]"#),
        ("latest", "metadata", r#"["owner"]"#),
        ("pkg/setup.py", "metadata", r#"["mode"]"#),
    ];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())),
        "{d}"
    );
}

/// A filesystem that holds no extended attributes (ramfs): the files are
/// restored, and the attributes left behind are one warning, not an error
/// per file that would fail the restore.
#[test]
fn a_restore_onto_a_filesystem_without_xattrs_warns_once_and_succeeds() {
    let t = tempfile::tempdir().unwrap();
    let (store, work, target) = (t.path().join("s"), t.path().join("w"), t.path().join("ram"));
    fs::create_dir_all(&work).unwrap();
    for i in 0..3 {
        let f = work.join(format!("f{i}"));
        fs::write(&f, format!("file {i}\n")).unwrap();
        sh(
            &work,
            &format!("python3 -c \"import os; os.setxattr('f{i}', 'user.n', b'{i}')\""),
        );
    }
    ok(ds(&store).arg("snapshot").arg(&work).args(["-w", "x"]));
    fs::create_dir_all(&target).unwrap();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("\n*** SKIPPING the ramfs restore test: mounting ramfs needs root ***\n");
        return;
    }
    let m = Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&target)
        .status()
        .unwrap();
    assert!(m.success(), "mount -t ramfs");
    let o = ds(&store)
        .args(["restore", "x", "--json"])
        .arg(target.join("out"))
        .output()
        .unwrap();
    let restored = fs::read(target.join("out/f1"));
    let _ = Command::new("umount").arg(&target).status();
    assert_eq!(restored.unwrap(), b"file 1\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(
        err.contains("does not support extended attributes: those of 3 entries"),
        "{err}"
    );
    let j = json(&o);
    assert_eq!(j["files"], 3);
    assert_eq!(j["errors"].as_array().unwrap().len(), 0, "{j}");
}
