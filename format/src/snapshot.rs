//! Snapshot objects: the root tree of a workspace at one moment, its parents,
//! and what people want to know about it (time, message, free metadata such as
//! run parameters and metrics). The id of a snapshot is the derive-key BLAKE3
//! of this encoding, so the history is a Merkle DAG like git's.
//!
//! Encoding (`ObjectKind::Snapshot`): `'S' 1 root_height:u8 root:32
//! parents:varint id* time_ns:zigzag workspace:bytes source:bytes host:bytes
//! message:bytes metadata:varint (key:bytes value:bytes)* (keys strictly
//! ascending) files:varint dirs:varint symlinks:varint bytes:varint`.
//!
//! Version 2 appends `runs:varint id*`: the run records
//! ([`crate::run`]) this snapshot is the "after" snapshot of. A snapshot
//! without runs is always encoded as version 1, so every snapshot made
//! before runs existed keeps its bytes and its id.

use std::collections::BTreeMap;

use crate::codec::{Reader, Writer};
use crate::tree::{DirRef, MAX_LEVEL};
use crate::{FormatError, ObjectId, ObjectKind, Result};

const TAG: u8 = b'S';
const VERSION: u8 = 1;
const VERSION_RUNS: u8 = 2;
/// The most runs one snapshot may carry.
pub const MAX_RUNS: u64 = 4096;
pub const MAX_PARENTS: u64 = 64;
pub const MAX_MESSAGE: usize = 1 << 20;
pub const MAX_METADATA: u64 = 4096;
pub const MAX_FIELD: usize = 64 * 1024;

/// Counts recorded when the snapshot was taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub root: DirRef,
    pub parents: Vec<ObjectId>,
    pub time_ns: i64,
    pub workspace: String,
    /// The path that was snapshotted, as bytes.
    pub source: Vec<u8>,
    pub hostname: String,
    pub message: String,
    pub metadata: BTreeMap<String, String>,
    pub stats: SnapshotStats,
    /// Run records this snapshot carries (ids of `ObjectKind::Run`
    /// objects), in the order they were recorded.
    pub runs: Vec<ObjectId>,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(TAG);
        w.u8(if self.runs.is_empty() {
            VERSION
        } else {
            VERSION_RUNS
        });
        w.u8(self.root.height);
        w.id(&self.root.root);
        w.varint(self.parents.len() as u64);
        for p in &self.parents {
            w.id(p);
        }
        w.ivarint(self.time_ns);
        w.bytes(self.workspace.as_bytes());
        w.bytes(&self.source);
        w.bytes(self.hostname.as_bytes());
        w.bytes(self.message.as_bytes());
        w.varint(self.metadata.len() as u64);
        for (k, v) in &self.metadata {
            w.bytes(k.as_bytes());
            w.bytes(v.as_bytes());
        }
        for v in [
            self.stats.files,
            self.stats.dirs,
            self.stats.symlinks,
            self.stats.bytes,
        ] {
            w.varint(v);
        }
        if !self.runs.is_empty() {
            w.varint(self.runs.len() as u64);
            for r in &self.runs {
                w.id(r);
            }
        }
        w.into_bytes()
    }

    pub fn id(&self) -> ObjectId {
        ObjectKind::Snapshot.hash(&self.encode())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "snapshot");
        let with_runs = bytes.get(1) == Some(&VERSION_RUNS);
        r.header(TAG, if with_runs { VERSION_RUNS } else { VERSION })?;
        let height = r.u8()?;
        if height >= MAX_LEVEL {
            return Err(r.corrupt("root tree too deep"));
        }
        let root = DirRef {
            height,
            root: r.id()?,
        };
        let np = r.bounded(MAX_PARENTS, "parent count")?;
        let parents = (0..np).map(|_| r.id()).collect::<Result<Vec<_>>>()?;
        let time_ns = r.ivarint()?;
        let workspace = utf8(&mut r, MAX_FIELD, "workspace")?;
        let source = r.bytes(MAX_FIELD)?.to_vec();
        let hostname = utf8(&mut r, MAX_FIELD, "hostname")?;
        let message = utf8(&mut r, MAX_MESSAGE, "message")?;
        let nm = r.bounded(MAX_METADATA, "metadata count")?;
        let mut metadata = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..nm {
            let k = utf8(&mut r, MAX_FIELD, "metadata key")?;
            let v = utf8(&mut r, MAX_FIELD, "metadata value")?;
            if last.as_ref().is_some_and(|l| *l >= k) {
                return Err(r.corrupt("metadata keys not strictly sorted"));
            }
            last = Some(k.clone());
            metadata.insert(k, v);
        }
        let stats = SnapshotStats {
            files: r.varint()?,
            dirs: r.varint()?,
            symlinks: r.varint()?,
            bytes: r.varint()?,
        };
        let mut runs = Vec::new();
        if with_runs {
            let n = r.bounded(MAX_RUNS, "run count")?;
            if n == 0 {
                return Err(r.corrupt("a version 2 snapshot without runs"));
            }
            runs = (0..n).map(|_| r.id()).collect::<Result<Vec<_>>>()?;
        }
        r.finish()?;
        Ok(Snapshot {
            root,
            parents,
            time_ns,
            workspace,
            source,
            hostname,
            message,
            metadata,
            stats,
            runs,
        })
    }
}

fn utf8(r: &mut Reader<'_>, max: usize, field: &'static str) -> Result<String> {
    let b = r.bytes(max)?;
    String::from_utf8(b.to_vec())
        .map_err(|_| FormatError::corrupt("snapshot", format!("{field} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Snapshot {
            root: DirRef {
                height: 1,
                root: ObjectId([3; 32]),
            },
            parents: vec![ObjectId([1; 32]), ObjectId([2; 32])],
            time_ns: 1_700_000_000_000_000_000,
            workspace: "ws".into(),
            source: b"/home/\xffx".to_vec(),
            hostname: "h".into(),
            message: "msg ✓".into(),
            metadata: [("a".to_string(), "1".to_string()), ("b".into(), "".into())].into(),
            stats: SnapshotStats {
                files: 1,
                dirs: 2,
                symlinks: 3,
                bytes: 4,
            },
            runs: Vec::new(),
        };
        let b = s.encode();
        assert_eq!(b[1], VERSION, "no runs: the original encoding");
        assert_eq!(Snapshot::decode(&b).unwrap(), s);
        for cut in 0..b.len() {
            assert!(Snapshot::decode(&b[..cut]).is_err());
        }
        let with = Snapshot {
            runs: vec![ObjectId([9; 32]), ObjectId([8; 32])],
            ..s.clone()
        };
        let b2 = with.encode();
        assert_eq!(b2[1], VERSION_RUNS);
        assert_eq!(Snapshot::decode(&b2).unwrap(), with);
        for cut in 0..b2.len() {
            assert!(Snapshot::decode(&b2[..cut]).is_err());
        }
        // Version 2 with an empty run list is not canonical.
        let mut empty = b.clone();
        empty[1] = VERSION_RUNS;
        empty.push(0);
        assert!(Snapshot::decode(&empty).is_err());
    }
}
