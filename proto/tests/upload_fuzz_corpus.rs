//! Replays the `upload` fuzz target's corpus (`fuzz/corpus-proto/upload/`)
//! under plain `cargo test`, with the target's own check
//! (`fuzz/src/upload.rs`, compiled in here). A missing or empty corpus
//! fails, so CI cannot pass by running nothing.

#[path = "../../fuzz/src/upload.rs"]
mod upload;

/// The fuzz checks (they depend on ds-format and std only).
#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

#[test]
fn upload_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus-proto/upload");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "the upload corpus under {} is missing",
        dir.display()
    );
    let mut accepted = 0;
    for f in files {
        let data = std::fs::read(&f).unwrap();
        if std::panic::catch_unwind(|| upload::upload(&data, checks::verified_pack)).is_err() {
            panic!("{} fails the upload check", f.display());
        }
        accepted += usize::from(
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("valid"),
        );
    }
    assert!(accepted > 0, "the corpus holds whole uploads");
}
