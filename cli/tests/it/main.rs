//! Integration tests that drive the real `ds` binary. One test binary (see
//! ripgrep's layout); helpers live here, scenarios in modules.

mod cli;
mod compat;
mod crash;
mod damage;
mod dataset;
mod hubgc;
mod malicious;
mod mount;
mod posix;
mod regressions;
mod runs;
mod sync;
mod taskdata;
mod tasks;
mod web;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn ds(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ds"));
    c.env("DS_STORE", store);
    c
}

/// Runs and insists on success, showing stderr otherwise.
pub fn ok(c: &mut Command) -> Output {
    let out = c.output().expect("run ds");
    assert!(
        out.status.success(),
        "{c:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A small workspace with every kind of entry ds records.
pub fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("src/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("README.md"), b"# hello\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("src/train.py"), b"print('hi')\n".repeat(100)).unwrap();
    fs::write(root.join("src/nested/deeper/model.bin"), noise(3 << 20, 7)).unwrap();
    let csv: String = (0..20_000)
        .map(|i| format!("{i},{},{}\n", i * 7 % 13, i * 31 % 101))
        .collect();
    fs::write(root.join("data.csv"), csv).unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("src/train.py", root.join("link-to-train")).unwrap();
    symlink("../../README.md", root.join("src/nested/up-link")).unwrap();
    // a non-UTF-8 name
    use std::os::unix::ffi::OsStrExt;
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        b"latin-1 name",
    )
    .unwrap();
}

/// Asserts two trees hold the same names, types, bytes, modes, mtimes and
/// symlink targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap();
            let desc = if m.file_type().is_symlink() {
                format!("link {:?} mtime {}", fs::read_link(&p).unwrap(), m.mtime())
            } else if m.is_dir() {
                walk(root, &r, out);
                format!("dir mode {:o} mtime {}", m.mode() & 0o7777, m.mtime())
            } else {
                let h = blake3::hash(&fs::read(&p).unwrap());
                format!(
                    "file {} mode {:o} mtime {}.{}",
                    h,
                    m.mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec()
                )
            };
            out.push((r, desc));
        }
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    walk(a, Path::new(""), &mut x);
    walk(b, Path::new(""), &mut y);
    assert_eq!(x, y);
}

/// The S3 endpoint of the test server, or a loud skip.
pub fn s3_endpoint() -> Option<String> {
    ds_hub::conformance::s3_test_endpoint()
}

/// Creates bucket `name` on the test S3 server at `ep`; returns its name.
pub fn s3_bucket(ep: &str, name: &str) -> String {
    assert!(
        Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{ep}/{name}")])
            .status()
            .unwrap()
            .success(),
        "creating bucket {name} on {ep}"
    );
    name.to_string()
}

/// The environment a `ds hub` needs to use the test S3 server at `ep`.
pub fn s3_env(ep: &str) -> [(&'static str, &str); 5] {
    [
        ("AWS_ENDPOINT", ep),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
}
