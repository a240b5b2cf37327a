//! The pack-store conformance suite against the local directory backend.

use ds_store::pack_conformance;
use ds_store::packs::LocalPacks;

#[test]
fn local_directory_backend_conforms() {
    let t = tempfile::tempdir().unwrap();
    pack_conformance::run(&LocalPacks::new(
        t.path().join("packs"),
        t.path().join("tmp"),
    ));
}
