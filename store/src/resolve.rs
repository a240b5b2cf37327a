//! Naming snapshots on the command line: a full id, a unique hex prefix of at
//! least 4 digits, a workspace name `W` (its latest snapshot), `W~N` (N
//! first-parent steps back from it) or `model:NAME[@V]` (the snapshot of
//! the run that made that model version). A workspace name wins over a hex prefix
//! that happens to spell it.

use ds_format::ObjectId;
use ds_format::id::parse_hex;

use crate::refs::validate_workspace;
use crate::{Result, Store, StoreError};

pub fn resolve(store: &Store, spec: &str) -> Result<ObjectId> {
    if let Some(m) = spec.strip_prefix("model:") {
        // A model version's files are in the snapshot of its run.
        let all = crate::runs::all(store)?;
        return Ok(crate::runs::find_model(&all, m)?.3.snapshot);
    }
    if let Some((ws, n)) = spec.rsplit_once('~') {
        let steps: usize = n
            .parse()
            .map_err(|_| StoreError::BadInput(format!("{spec:?}: expected W~N with N a number")))?;
        let mut id = head(store, ws)?;
        for i in 0..steps {
            let s = store.load_snapshot(&id)?;
            id = *s.parents.first().ok_or_else(|| {
                StoreError::BadInput(format!(
                    "{spec:?}: workspace {ws:?} has only {} snapshots",
                    i + 1
                ))
            })?;
        }
        return Ok(id);
    }
    if validate_workspace(spec).is_ok()
        && let Some(id) = store.refs().get(spec)?
    {
        return Ok(id);
    }
    let hex = spec.to_ascii_lowercase();
    if hex.len() >= 4 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let (whole, nibble) = if hex.len() % 2 == 1 {
            let n = u8::from_str_radix(&hex[hex.len() - 1..], 16).expect("hex digit");
            (&hex[..hex.len() - 1], Some(n))
        } else {
            (&hex[..], None)
        };
        let prefix = parse_hex(whole).expect("checked hex");
        let found = store.snapshots_with_prefix(&prefix, nibble)?;
        return match found.len() {
            0 => Err(StoreError::UnknownSnapshot(spec.into())),
            1 => Ok(found[0]),
            n => Err(StoreError::Ambiguous {
                prefix: spec.into(),
                count: n,
            }),
        };
    }
    Err(StoreError::UnknownSnapshot(spec.into()))
}

/// The latest snapshot of a workspace.
pub fn head(store: &Store, ws: &str) -> Result<ObjectId> {
    validate_workspace(ws)?;
    store
        .refs()
        .get(ws)?
        .ok_or_else(|| StoreError::UnknownWorkspace(ws.into()))
}
