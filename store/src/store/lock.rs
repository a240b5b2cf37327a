//! The two flock(2) locks that arbitrate access (see [`super::Access`]).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::layout::Layout;
use crate::{IoContext, Result, StoreError};

pub(super) enum LockKind {
    Shared,
    Exclusive,
}

pub(super) fn take_lock(path: &Path, kind: LockKind, wait: bool, root: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at(path)?;
    let tried = match kind {
        LockKind::Shared => f.try_lock_shared(),
        LockKind::Exclusive => f.try_lock(),
    };
    match tried {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) if wait => match kind {
            LockKind::Shared => f.lock_shared().at(path)?,
            LockKind::Exclusive => f.lock().at(path)?,
        },
        Err(TryLockError::WouldBlock) => return Err(StoreError::Locked(root.to_path_buf())),
        Err(TryLockError::Error(e)) => return Err(e).at(path),
    }
    Ok(f)
}

/// The writer lock and the gc lock, both exclusive. Waits for readers (the
/// gc lock) without holding the writer lock, retrying until both are free
/// at once.
pub(super) fn exclusive_locks(layout: &Layout, wait: bool, root: &Path) -> Result<Vec<File>> {
    loop {
        let w = take_lock(&layout.lock(), LockKind::Exclusive, wait, root)?;
        match take_lock(&layout.gc_lock(), LockKind::Exclusive, false, root) {
            Ok(g) => return Ok(vec![w, g]),
            Err(StoreError::Locked(_)) if wait => {
                drop(w);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}
