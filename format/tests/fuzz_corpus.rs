//! Replays the fuzz corpora (`fuzz/corpus/<target>/*`) and saved findings
//! (`fuzz/regressions/<target>/*`, if any) through the decoders under plain
//! `cargo test`, with the same checks as the fuzz targets in `fuzz/src/lib.rs`:
//! no decoder panics, and whenever a decode succeeds the value re-encodes to
//! exactly the input bytes (for the JSON store config: `decode(encode(c)) == c`).
//!
//! The checks are `fuzz/src/lib.rs` itself, compiled into this test (it
//! depends only on `ds-format` and std), so the fuzzers and CI can never
//! drift apart, and this still builds without libFuzzer. A missing or empty
//! corpus fails the test, so CI cannot pass by running nothing.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use checks::{
    codec, dir_node, file_node, hex, pack_trailer, pack_verify, run, snapshot, store_config, stored,
};

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 9] = [
    ("dir_node", dir_node),
    ("file_node", file_node),
    ("snapshot", snapshot),
    ("pack_trailer", pack_trailer),
    ("store_config", store_config),
    ("codec", codec),
    ("pack_verify", pack_verify),
    ("stored", stored),
    ("run", run),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn check_for(target: &str) -> Check {
    match TARGETS.iter().find(|(t, _)| *t == target) {
        Some((_, c)) => *c,
        None => panic!(
            "unknown fuzz target directory {target:?}; known: {:?}",
            TARGETS.map(|(t, _)| t)
        ),
    }
}

/// Input files of `dir` (hidden files, which libFuzzer leaves, are skipped).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

/// Subdirectories of `root`, each named after a target.
fn target_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    dirs.sort();
    dirs
}

/// Runs every file through its target's check; returns how many ran and
/// the failures (file and panic message).
fn replay(target: &str, dir: &Path) -> (usize, Vec<String>) {
    let check = check_for(target);
    let files = inputs(dir);
    let mut failures = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            failures.push(format!("{}: {msg}\n  input: {}", f.display(), hex(&data)));
        }
    }
    (files.len(), failures)
}

fn report(what: &str, ran: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {ran} {what} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_replays_cleanly() {
    let root = fuzz_dir().join("corpus");
    assert!(
        root.is_dir(),
        "fuzz corpus {} is missing: the seeds are committed with the repo",
        root.display()
    );
    let dirs = target_dirs(&root);
    for (target, _) in TARGETS {
        assert!(
            dirs.iter().any(|(d, _)| d == target),
            "no corpus for fuzz target {target} under {}",
            root.display()
        );
    }
    let (mut ran, mut failures) = (0, Vec::new());
    for (target, dir) in &dirs {
        let (n, f) = replay(target, dir);
        assert!(n > 0, "corpus {} is empty", dir.display());
        ran += n;
        failures.extend(f);
    }
    report("corpus", ran, &failures);
}

#[test]
fn regressions_replay_cleanly() {
    let root = fuzz_dir().join("regressions");
    if !root.exists() {
        return;
    }
    let (mut ran, mut failures) = (0, Vec::new());
    for (target, dir) in target_dirs(&root) {
        let (n, f) = replay(&target, &dir);
        ran += n;
        failures.extend(f);
    }
    report("regression", ran, &failures);
}

// ---- the checks (mirror fuzz/src/lib.rs) ----
