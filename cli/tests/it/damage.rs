//! Damaged packs: verify names the damaged object and the files holding it;
//! restore names the file, restores everything else, and exits non-zero.

use std::fs;
use std::path::{Path, PathBuf};

use crate::*;

fn packs(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in fs::read_dir(store.join("packs")).unwrap() {
        for f in fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let work = t.path().join("w");
    sample_tree(&work);
    ok(ds(&store).args(["init", "--compression", "none", "--pack-size", "1048576"]));
    ok(ds(&store).args(["snapshot", "-w", "w"]).arg(&work));
    ok(ds(&store).arg("verify"));
    (t, store, work)
}

#[test]
fn flipped_byte_is_found_and_named() {
    let (t, store, _work) = setup();
    // find the pack holding a known stretch of model.bin and flip one byte in it
    let needle = &noise(3 << 20, 7)[1_500_000..1_500_064];
    let (pack, at) = packs(&store)
        .into_iter()
        .find_map(|p| {
            let b = fs::read(&p).unwrap();
            b.windows(64).position(|w| w == needle).map(|i| (p, i))
        })
        .expect("model bytes are stored raw in some pack");
    let mut b = fs::read(&pack).unwrap();
    b[at + 10] ^= 0x01;
    fs::write(&pack, b).unwrap();

    let out = ds(&store).arg("verify").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("DAMAGED") && report.contains("model.bin"),
        "{report}"
    );

    let dest = t.path().join("r");
    let out = ds(&store)
        .args(["restore", "w"])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("src/nested/deeper/model.bin") && err.contains("damaged"),
        "{err}"
    );
    assert!(
        !dest.join("src/nested/deeper/model.bin").exists(),
        "no wrong bytes on disk"
    );
    assert_eq!(fs::read(dest.join("README.md")).unwrap(), b"# hello\n");

    // cat refuses to print wrong bytes
    let out = ds(&store)
        .args(["cat", "w", "src/nested/deeper/model.bin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // gc will not delete anything it cannot account for, nor copy damage
    let out = ds(&store).arg("gc").output().unwrap();
    assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("damaged"));
}

#[test]
fn truncated_pack_is_found_and_the_rest_survives() {
    let (t, store, _work) = setup();
    let biggest = packs(&store)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let len = fs::metadata(&biggest).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&biggest)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = ds(&store).arg("verify").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("trailer unreadable"), "{report}");
    let dest = t.path().join("r");
    let out = ds(&store)
        .args(["restore", "w"])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(dest.join("README.md")).unwrap(), b"# hello\n");
}
