//! SIGKILL during a snapshot: nothing acknowledged is lost, verify stays
//! clean, gc removes the leftovers and the next snapshot completes.

use std::fs;
use std::time::Duration;

use crate::*;

#[test]
fn sigkill_mid_snapshot_leaves_only_garbage() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let work = t.path().join("w");
    fs::create_dir(&work).unwrap();
    ok(ds(&store).args(["init", "--pack-size", "524288"]));
    // a first snapshot that must survive everything below
    fs::write(work.join("keep"), b"acknowledged").unwrap();
    let first = json(&ok(ds(&store)
        .args(["snapshot", "-w", "w", "--json"])
        .arg(&work)))["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..24 {
        fs::write(work.join(format!("f{i:02}")), noise(2 << 20, 100 + i)).unwrap();
    }
    let mut killed_mid_way = 0;
    for (round, delay_ms) in [5u64, 40, 120, 250, 500].into_iter().enumerate() {
        fs::write(work.join("round"), format!("{round}")).unwrap();
        let mut child = ds(&store)
            .args(["snapshot", "-w", "w", "--no-cache"])
            .arg(&work)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            killed_mid_way += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let v = json(&ok(ds(&store).args(["verify", "--json"])));
        assert_eq!(v["ok"], true, "round {round}: {v}");
        // the first snapshot is still whole
        let c = ok(ds(&store).args(["cat", &first, "keep"]));
        assert_eq!(c.stdout, b"acknowledged");
    }
    assert!(killed_mid_way > 0, "no snapshot was actually interrupted");
    json(&ok(ds(&store).args(["gc", "--json"])));
    assert_eq!(fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    ok(ds(&store).args(["snapshot", "-w", "w"]).arg(&work));
    ok(ds(&store).arg("verify"));
    let r = t.path().join("r");
    ok(ds(&store).args(["restore", "w"]).arg(&r));
    assert_same_tree(&work, &r);
}
