//! Refs: the only mutable names, workspace → latest snapshot id.
//!
//! Each ref is a small file `STORE/refs/<workspace>` holding a hex id. It is
//! replaced atomically (temp file, fsync, rename, fsync of the directory) and
//! moves by compare-and-swap against the value the caller started from. Refs
//! are plain files rather than RocksDB rows so that losing the index never
//! loses a ref. Callers hold the store's exclusive lock while they swap.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use ds_format::ObjectId;

use crate::layout::sync_dir;
use crate::{IoContext, Result, StoreError};

/// Checks a workspace name: letters, digits, `.`, `_`, `-`; not starting with
/// `.` or `-`; at most 128 bytes.
pub fn validate_workspace(name: &str) -> Result<()> {
    let why = if name.len() > 128 {
        "longer than 128 bytes"
    } else if let Some(why) = ds_format::name::fault(name) {
        why
    } else {
        return Ok(());
    };
    Err(StoreError::BadWorkspace {
        name: name.to_string(),
        why,
    })
}

/// A workspace name, checked once ([`validate_workspace`]) where it enters
/// the program (a CLI argument, a gRPC field), so that everything past that
/// edge holds a name that is safe as a file name under `refs/` and
/// `mounts/`. Derefs to `str`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct WorkspaceName(String);

impl WorkspaceName {
    pub fn new(name: impl Into<String>) -> Result<WorkspaceName> {
        let name = name.into();
        validate_workspace(&name)?;
        Ok(WorkspaceName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for WorkspaceName {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        WorkspaceName::new(s)
    }
}

impl std::ops::Deref for WorkspaceName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for WorkspaceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WorkspaceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The refs directory of a store.
#[derive(Debug)]
pub struct Refs {
    dir: PathBuf,
}

impl Refs {
    pub fn new(dir: PathBuf) -> Self {
        Refs { dir }
    }

    pub fn get(&self, name: &str) -> Result<Option<ObjectId>> {
        validate_workspace(name)?;
        let path = self.dir.join(name);
        match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map(Some).map_err(|_| {
                StoreError::Corrupt(format!("ref file {} is corrupt", path.display()))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&path),
        }
    }

    /// All refs, sorted by name.
    pub fn list(&self) -> Result<Vec<(String, ObjectId)>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&self.dir),
        };
        for f in rd {
            let f = f.at(&self.dir)?;
            let Some(name) = f.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_workspace(&name).is_err() {
                continue; // temp files and strays
            }
            if let Some(id) = self.get(&name)? {
                out.push((name, id));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Moves `name` from `expected` to `new` atomically and durably.
    pub fn swap(&self, name: &str, expected: Option<ObjectId>, new: ObjectId) -> Result<()> {
        let current = self.get(name)?;
        if current != expected {
            let show = |o: Option<ObjectId>| o.map_or("nothing".to_string(), |i| i.to_hex());
            return Err(StoreError::RefConflict {
                name: name.to_string(),
                expected: show(expected),
                found: show(current),
            });
        }
        fs::create_dir_all(&self.dir).at(&self.dir)?;
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .at(&tmp)?;
        f.write_all(format!("{new}\n").as_bytes()).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        let path = self.dir.join(name);
        fs::rename(&tmp, &path).at(&path)?;
        sync_dir(&self.dir).at(&self.dir)
    }

    /// Deletes a ref (used by `ds workspace rm`); CAS like [`Refs::swap`].
    pub fn delete(&self, name: &str, expected: ObjectId) -> Result<()> {
        let current = self.get(name)?;
        if current != Some(expected) {
            return Err(StoreError::RefConflict {
                name: name.to_string(),
                expected: expected.to_hex(),
                found: current.map_or("nothing".into(), |i| i.to_hex()),
            });
        }
        let path = self.dir.join(name);
        fs::remove_file(&path).at(&path)?;
        sync_dir(&self.dir).at(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names_are_checked_once_and_read_as_str() {
        let w: WorkspaceName = "logs".parse().unwrap();
        assert_eq!(&*w, "logs");
        assert_eq!(serde_json::to_string(&w).unwrap(), "\"logs\"");
        for bad in ["", "../etc", "a/b", ".hidden", "-x", "sp ace", "nul\0"] {
            let e = bad.parse::<WorkspaceName>().unwrap_err();
            assert!(matches!(e, StoreError::BadWorkspace { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cas_and_names() {
        let d = tempfile::tempdir().unwrap();
        let r = Refs::new(d.path().join("refs"));
        let a = ObjectId([1; 32]);
        let b = ObjectId([2; 32]);
        assert_eq!(r.get("ws").unwrap(), None);
        r.swap("ws", None, a).unwrap();
        assert!(matches!(
            r.swap("ws", None, b),
            Err(StoreError::RefConflict { .. })
        ));
        r.swap("ws", Some(a), b).unwrap();
        assert_eq!(r.list().unwrap(), vec![("ws".to_string(), b)]);
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a~1", "a b"] {
            assert!(validate_workspace(bad).is_err(), "{bad}");
        }
    }
}
