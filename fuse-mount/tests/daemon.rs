//! The mount library in-process, as a runner uses it: mount a workspace
//! read-write, write through the kernel, snapshot through the handle and
//! through the control socket (as `ds snapshot MOUNTPOINT` does), unmount,
//! and find everything in the store.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ds_fuse::{Config, MountOptions, Mounted, Source, control};
use ds_store::vfs::{CommitOptions, VfsOptions};
use ds_store::{Access, InitOptions, Store};

fn config(ws: &str) -> Config {
    Config {
        source: Source::Workspace {
            name: ws.into(),
            discard_dirty: false,
        },
        vfs: VfsOptions::default(),
        fuse: MountOptions {
            read_only: false,
            allow_other: false,
            threads: 2,
            direct_io: false,
            fsname: format!("ds:{ws}"),
        },
        readahead_kib: 0,
        checkpoint_every: Duration::from_secs(1),
    }
}

fn reader(root: &Path) -> Arc<Store> {
    Arc::new(Store::open(root, Access::Read, true).unwrap())
}

#[test]
fn a_workspace_mounts_snapshots_and_unmounts_in_process() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is absent: this test mounts for real (scripts/test.sh installs fuse3)"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root, &InitOptions::default()).unwrap();
    let mp = dir.path().join("home");
    fs::create_dir(&mp).unwrap();

    let mut m = Mounted::start(reader(&root), &mp, config("logs")).unwrap();
    let mp = m.mountpoint().to_path_buf();
    assert_eq!(m.what(), "workspace logs (read-write)");
    let unmount = m.unmounter();
    let handle = m.handle();
    let served = std::thread::spawn(move || m.serve());

    fs::write(mp.join("a.txt"), b"first").unwrap();
    let first = handle
        .snapshot(CommitOptions {
            message: "from the handle".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(first.workspace, "logs");
    assert_eq!(first.parent, None);
    assert_eq!(first.files, 1);

    // Another process's view: the registration, and the control socket.
    let reg = control::find(&root, &mp).expect("the mount is registered");
    assert_eq!(reg.workspace, "logs");
    assert_eq!(reg.pid, Some(std::process::id()));
    fs::create_dir(mp.join("sub")).unwrap();
    fs::write(mp.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
    let second = control::request_snapshot(
        &reg,
        "over the socket",
        BTreeMap::from([("k".to_string(), "v".to_string())]),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(second.parent, Some(first.id));
    assert_eq!((second.files, second.dirs), (2, 2));
    assert!(second.bytes_added > 0);

    let mut unmount = unmount;
    unmount.unmount().unwrap();
    served.join().unwrap().unwrap();
    assert!(ds_fuse::mount_device(&mp).is_none(), "still mounted");
    assert!(
        control::find(&root, &mp).is_none(),
        "registration left behind"
    );

    // The store has both snapshots, with what each recorded.
    let st = reader(&root);
    let head = st.refs().get("logs").unwrap().unwrap();
    assert_eq!(head, second.id);
    let s = st.load_snapshot(&head).unwrap();
    assert_eq!(s.message, "over the socket");
    assert_eq!(s.metadata.get("k").map(String::as_str), Some("v"));
    assert_eq!(s.source, mp.as_os_str().as_encoded_bytes());

    // A handle that outlives its mount fails clearly, and does not keep the
    // workspace locked: a remount in the same process (as a runner's next
    // task does) starts from the last snapshot.
    let e = handle.snapshot(CommitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no longer mounted"), "{e}");
    let mut m = Mounted::start(st.clone(), &mp, config("logs")).unwrap();
    let mut unmount = m.unmounter();
    let served = std::thread::spawn(move || m.serve());
    assert_eq!(fs::read(mp.join("a.txt")).unwrap(), b"first");
    assert_eq!(fs::read(mp.join("sub/b.bin")).unwrap().len(), 300_000);
    unmount.unmount().unwrap();
    served.join().unwrap().unwrap();
}

#[test]
fn a_mount_refuses_a_file_and_a_busy_mountpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root, &InitOptions::default()).unwrap();
    let file = dir.path().join("f");
    fs::write(&file, b"").unwrap();
    let e = Mounted::start(reader(&root), &file, config("w")).unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    let e = Mounted::start(reader(&root), Path::new("/"), config("w")).unwrap_err();
    assert!(e.to_string().contains("already a mountpoint"), "{e}");
}
