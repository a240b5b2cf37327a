//! Opening the store: the one way every command does it.
//!
//! A command that must wait for another ds process (a snapshot holding the
//! writer lock, a gc holding everything) says so on stderr once, then
//! waits; it never fails with "locked". A command that writes the first
//! snapshot of a new store creates it ([`open_or_init`]) and says so.

use std::path::Path;

use anyhow::{Context, Result};
use ds_store::{Access, InitOptions, Store, StoreError};

/// Opens the store at `path` for `access`, waiting for other processes.
pub fn open(path: &Path, access: Access) -> Result<Store> {
    let r = match Store::open(path, access, false) {
        Err(StoreError::Locked(_)) => {
            eprintln!(
                "ds: waiting for another ds process using {}",
                path.display()
            );
            Store::open(path, access, true)
        }
        r => r,
    };
    // The store's own message (e.g. "no ds store at ...") says what to do.
    Ok(r?)
}

/// Opens the store at `path` for writing, creating it with the default
/// settings if there is none yet.
pub fn open_or_init(path: &Path) -> Result<Store> {
    if path.join("config").exists() {
        return open(path, Access::Write);
    }
    let s = Store::init(path, &InitOptions::default())
        .with_context(|| format!("creating a store at {}", path.display()))?;
    eprintln!("ds: initialized store at {}", path.display());
    Ok(s)
}
