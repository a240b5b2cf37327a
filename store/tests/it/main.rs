//! Library-level tests of the storage engine (one test binary).

mod changing;
mod conformance;
mod locking;
mod model;
mod roundtrip;
mod stream;
mod txn;
mod vfs;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ds_store::format::chunker::ChunkerParams;
use ds_store::format::config::Compression;
use ds_store::{InitOptions, Store};

/// Tiny chunks and packs, so small inputs cross every boundary (the xet-core
/// trick): 256 B / 1 KiB / 4 KiB chunks, 64 KiB packs.
pub fn small_store(dir: &Path, compression: Compression) -> Store {
    Store::init(
        dir,
        &InitOptions {
            chunker: Some(ChunkerParams {
                min: 256,
                avg: 1024,
                max: 4096,
            }),
            compression: Some(compression),
            pack_size: Some(64 * 1024),
        },
    )
    .unwrap()
}

/// A file set: relative path → (content, mode). Directories are implied.
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

pub fn write_files(root: &Path, files: &Files) {
    fs::create_dir_all(root).unwrap();
    for (p, (data, mode)) in files {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
    }
}

pub fn read_files(root: &Path) -> Files {
    fn walk(root: &Path, rel: &str, out: &mut Files) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk(root, &r, out);
            } else {
                out.insert(
                    r,
                    (fs::read(e.path()).unwrap(), m.permissions().mode() & 0o7777),
                );
            }
        }
    }
    let mut out = Files::new();
    walk(root, "", &mut out);
    out
}
