//! ds benchmarks. The code lives in `benches/micro.rs` (divan
//! micro-benchmarks: `cargo bench -p ds-benches --profile dev`), `harness.py`
//! (end-to-end against restic, borg, casync and rsync) and
//! `million_files.py` (memory over a million small files); see README.md.
