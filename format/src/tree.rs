//! Directory trees. A directory is the sorted list of its entries, cut into a
//! content-defined tree of [`DirNode`]s (see [`crate::htree`]) so that a
//! directory of 100k entries is not rewritten whole when one file changes.
//! Boundaries are chosen from the hash of entry *names*, so changing a file's
//! content never moves a boundary.
//!
//! Encoding (`ObjectKind::DirNode`):
//! - leaf: `'D' 1 0:u8 count:varint entry*` with names strictly ascending;
//! - index: `'D' 1 level:u8 count:varint (id:32 first_name:bytes entries:varint)*`.
//!
//! Entry: `name:bytes kind:u8 mode:varint mtime_ns:zigzag` then for a file
//! `size:varint height:u8 [root:32 if size > 0]`, for a directory
//! `height:u8 root:32`, for a symlink `target:bytes`.
//!
//! Names are raw bytes (non-UTF-8 names round-trip). The decoder refuses names
//! that could escape a restore target: empty, `.`, `..`, containing `/` or NUL.

use crate::codec::{Reader, Writer};
use crate::htree::{Root, Shape, TreeBuilder, TreeCodec};
use crate::manifest::{self, FileRef};
use crate::{FormatError, ObjectId, ObjectKind, Result};

const TAG: u8 = b'D';
const VERSION: u8 = 1;
pub const LEAF_SHAPE: Shape = Shape {
    avg: 256,
    max: 4096,
};
pub const INNER_SHAPE: Shape = Shape { avg: 64, max: 1024 };
pub const MAX_NAME: usize = 1024;
pub const MAX_SYMLINK_TARGET: usize = 4096;
pub const MAX_LEVEL: u8 = 16;

/// Checks a name may appear in a tree.
pub fn validate_name(name: &[u8]) -> Result<()> {
    let why = if name.is_empty() {
        "empty"
    } else if name == b"." || name == b".." {
        "is a relative path component"
    } else if name.contains(&b'/') {
        "contains '/'"
    } else if name.contains(&0) {
        "contains NUL"
    } else if name.len() > MAX_NAME {
        "too long"
    } else {
        return Ok(());
    };
    Err(FormatError::BadName {
        name: String::from_utf8_lossy(name).into_owned(),
        why,
    })
}

/// A directory's content reference: its root node and that node's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirRef {
    pub height: u8,
    pub root: ObjectId,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryData {
    File(FileRef),
    Dir(DirRef),
    Symlink(Vec<u8>),
}

/// What kind of entry a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryType {
    File,
    Dir,
    Symlink,
}

impl EntryType {
    /// "file", "dir" or "symlink" (as JSON output spells them).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::File => "file",
            EntryType::Dir => "dir",
            EntryType::Symlink => "symlink",
        }
    }
}

impl EntryData {
    pub fn entry_type(&self) -> EntryType {
        match self {
            EntryData::File(_) => EntryType::File,
            EntryData::Dir(_) => EntryType::Dir,
            EntryData::Symlink(_) => EntryType::Symlink,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        self.entry_type().as_str()
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub mtime_ns: i64,
    pub data: EntryData,
}

impl Entry {
    pub fn size(&self) -> u64 {
        match &self.data {
            EntryData::File(f) => f.size,
            EntryData::Symlink(t) => t.len() as u64,
            EntryData::Dir(_) => 0,
        }
    }

    fn encode(&self, w: &mut Writer) {
        w.bytes(&self.name);
        match &self.data {
            EntryData::File(f) => {
                w.u8(1);
                w.varint(u64::from(self.mode));
                w.ivarint(self.mtime_ns);
                w.varint(f.size);
                w.u8(f.height);
                if f.size > 0 {
                    w.id(&f.root);
                }
            }
            EntryData::Dir(d) => {
                w.u8(2);
                w.varint(u64::from(self.mode));
                w.ivarint(self.mtime_ns);
                w.u8(d.height);
                w.id(&d.root);
            }
            EntryData::Symlink(t) => {
                w.u8(3);
                w.varint(u64::from(self.mode));
                w.ivarint(self.mtime_ns);
                w.bytes(t);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let name = r.bytes(MAX_NAME)?.to_vec();
        validate_name(&name)?;
        let kind = r.u8()?;
        let mode = r.bounded(0o7777, "mode")? as u32;
        let mtime_ns = r.ivarint()?;
        let data = match kind {
            1 => {
                let size = r.varint()?;
                let height = r.u8()?;
                if height > manifest::MAX_HEIGHT {
                    return Err(r.corrupt("file tree too deep"));
                }
                let root = if size > 0 {
                    r.id()?
                } else if height != 0 {
                    return Err(r.corrupt("empty file with a tree"));
                } else {
                    ObjectId::ZERO
                };
                EntryData::File(FileRef { size, height, root })
            }
            2 => {
                let height = r.u8()?;
                if height >= MAX_LEVEL {
                    return Err(r.corrupt("directory tree too deep"));
                }
                EntryData::Dir(DirRef {
                    height,
                    root: r.id()?,
                })
            }
            3 => {
                let t = r.bytes(MAX_SYMLINK_TARGET)?;
                if t.is_empty() || t.contains(&0) {
                    return Err(r.corrupt("symlink target empty or contains NUL"));
                }
                EntryData::Symlink(t.to_vec())
            }
            k => return Err(r.corrupt(format!("unknown entry kind {k}"))),
        };
        Ok(Entry {
            name,
            mode,
            mtime_ns,
            data,
        })
    }
}

/// A child of an index node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexChild {
    pub id: ObjectId,
    pub first_name: Vec<u8>,
    /// Entries in the subtree (for sizing, progress and sanity checks).
    pub entries: u64,
}

/// A decoded directory node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirNode {
    Leaf(Vec<Entry>),
    Index {
        level: u8,
        children: Vec<IndexChild>,
    },
}

impl DirNode {
    pub fn level(&self) -> u8 {
        match self {
            DirNode::Leaf(_) => 0,
            DirNode::Index { level, .. } => *level,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(TAG);
        w.u8(VERSION);
        match self {
            DirNode::Leaf(entries) => {
                w.u8(0);
                w.varint(entries.len() as u64);
                for e in entries {
                    e.encode(&mut w);
                }
            }
            DirNode::Index { level, children } => {
                w.u8(*level);
                w.varint(children.len() as u64);
                for c in children {
                    w.id(&c.id);
                    w.bytes(&c.first_name);
                    w.varint(c.entries);
                }
            }
        }
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "dir node");
        r.header(TAG, VERSION)?;
        let level = r.u8()?;
        if level >= MAX_LEVEL {
            return Err(r.corrupt(format!("level {level} too deep")));
        }
        let node = if level == 0 {
            let n = r.bounded(LEAF_SHAPE.max as u64, "entry count")?;
            let mut entries: Vec<Entry> = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                let e = Entry::decode(&mut r)?;
                if let Some(prev) = entries.last()
                    && prev.name >= e.name
                {
                    return Err(
                        r.corrupt("entries not strictly sorted (duplicate or out of order)")
                    );
                }
                entries.push(e);
            }
            DirNode::Leaf(entries)
        } else {
            let n = r.bounded(INNER_SHAPE.max as u64, "child count")?;
            if n == 0 {
                return Err(r.corrupt("index node without children"));
            }
            let mut children: Vec<IndexChild> = Vec::with_capacity(n.min(r.remaining() / 34));
            for _ in 0..n {
                let id = r.id()?;
                let first_name = r.bytes(MAX_NAME)?.to_vec();
                validate_name(&first_name)?;
                let entries = r.varint()?;
                if entries == 0 {
                    return Err(r.corrupt("empty subtree"));
                }
                if let Some(prev) = children.last()
                    && prev.first_name >= first_name
                {
                    return Err(r.corrupt("children not strictly sorted"));
                }
                children.push(IndexChild {
                    id,
                    first_name,
                    entries,
                });
            }
            DirNode::Index { level, children }
        };
        r.finish()?;
        Ok(node)
    }
}

#[derive(Debug)]
struct DirCodec;

fn seal(
    node: DirNode,
    first_name: Vec<u8>,
    entries: u64,
    emit: &mut dyn FnMut(ObjectId, Vec<u8>),
) -> IndexChild {
    let bytes = node.encode();
    let id = ObjectKind::DirNode.hash(&bytes);
    emit(id, bytes);
    IndexChild {
        id,
        first_name,
        entries,
    }
}

impl TreeCodec for DirCodec {
    type Leaf = Entry;
    type Inner = IndexChild;
    fn leaf_boundary_hash(item: &Entry) -> [u8; 32] {
        *blake3::hash(&item.name).as_bytes()
    }
    fn inner_boundary_hash(item: &IndexChild) -> [u8; 32] {
        item.id.0
    }
    fn seal_leaves(items: Vec<Entry>, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) -> IndexChild {
        let first = items.first().map(|e| e.name.clone()).unwrap_or_default();
        let n = items.len() as u64;
        seal(DirNode::Leaf(items), first, n, emit)
    }
    fn seal_inner(
        level: u8,
        items: Vec<IndexChild>,
        emit: &mut dyn FnMut(ObjectId, Vec<u8>),
    ) -> IndexChild {
        let first = items[0].first_name.clone();
        let n = items.iter().map(|c| c.entries).sum();
        seal(
            DirNode::Index {
                level,
                children: items,
            },
            first,
            n,
            emit,
        )
    }
}

/// Builds one directory's tree from its entries, which must be pushed in
/// strictly ascending name order. Nodes reach `emit` bottom-up.
#[derive(Debug)]
pub struct DirBuilder {
    inner: TreeBuilder<DirCodec>,
    last: Option<Vec<u8>>,
    count: u64,
}

impl Default for DirBuilder {
    fn default() -> Self {
        DirBuilder {
            inner: TreeBuilder::new(LEAF_SHAPE, INNER_SHAPE),
            last: None,
            count: 0,
        }
    }
}

impl DirBuilder {
    pub fn push(&mut self, e: Entry, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) -> Result<()> {
        validate_name(&e.name)?;
        if let Some(prev) = &self.last
            && *prev >= e.name
        {
            return Err(FormatError::corrupt(
                "dir builder",
                "entries pushed out of order",
            ));
        }
        self.last = Some(e.name.clone());
        self.count += 1;
        self.inner.push(e, emit);
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(self, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) -> DirRef {
        match self.inner.finish(true, emit) {
            Root::Node(c, level) => DirRef {
                height: level,
                root: c.id,
            },
            Root::Empty | Root::Single(_) => unreachable!("finish(true) always returns a node"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn file(name: &str, n: u64) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            mode: 0o644,
            mtime_ns: -5 + n as i64,
            data: EntryData::File(FileRef {
                size: n + 1,
                height: 0,
                root: ObjectKind::Chunk.hash(&n.to_le_bytes()),
            }),
        }
    }

    fn build(entries: &[Entry]) -> (DirRef, HashMap<ObjectId, Vec<u8>>) {
        let mut nodes = HashMap::new();
        let mut b = DirBuilder::default();
        for e in entries {
            b.push(e.clone(), &mut |i, n| {
                nodes.insert(i, n);
            })
            .unwrap();
        }
        let r = b.finish(&mut |i, n| {
            nodes.insert(i, n);
        });
        (r, nodes)
    }

    fn list(r: DirRef, nodes: &HashMap<ObjectId, Vec<u8>>) -> Vec<Entry> {
        fn walk(id: ObjectId, nodes: &HashMap<ObjectId, Vec<u8>>, out: &mut Vec<Entry>) {
            match DirNode::decode(&nodes[&id]).unwrap() {
                DirNode::Leaf(es) => out.extend(es),
                DirNode::Index { children, .. } => {
                    children.iter().for_each(|c| walk(c.id, nodes, out))
                }
            }
        }
        let mut out = Vec::new();
        walk(r.root, nodes, &mut out);
        out
    }

    #[test]
    fn round_trips_small_and_huge() {
        for n in [0usize, 1, 5, 300, 20_000] {
            let mut entries: Vec<_> = (0..n)
                .map(|i| file(&format!("f{i:07}"), i as u64))
                .collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let (r, nodes) = build(&entries);
            assert_eq!(list(r, &nodes), entries);
            if n == 20_000 {
                assert!(r.height >= 1);
                let mut e2 = entries.clone();
                e2[7000] = file("f0007000", 99);
                let (_, n2) = build(&e2);
                let new = n2.keys().filter(|k| !nodes.contains_key(k)).count();
                assert!(new <= 3, "{new}");
            }
        }
    }

    #[test]
    fn all_kinds_round_trip() {
        let entries = vec![
            Entry {
                name: b"a\xffnon-utf8".to_vec(),
                mode: 0o755,
                mtime_ns: i64::MIN,
                data: EntryData::Dir(DirRef {
                    height: 2,
                    root: ObjectId([7; 32]),
                }),
            },
            Entry {
                name: b"z-link".to_vec(),
                mode: 0o777,
                mtime_ns: i64::MAX,
                data: EntryData::Symlink(b"../x".to_vec()),
            },
            Entry {
                name: b"zz-empty".to_vec(),
                mode: 0,
                mtime_ns: 0,
                data: EntryData::File(FileRef::EMPTY),
            },
        ];
        let node = DirNode::Leaf(entries);
        assert_eq!(DirNode::decode(&node.encode()).unwrap(), node);
    }

    #[test]
    fn refuses_malicious_names_and_order() {
        for bad in [&b".."[..], b".", b"a/b", b"/", b"a\0b", b""] {
            let node = DirNode::Leaf(vec![Entry {
                name: bad.to_vec(),
                ..file("x", 1)
            }]);
            let err = DirNode::decode(&node.encode()).unwrap_err();
            assert!(matches!(err, FormatError::BadName { .. }), "{err}");
        }
        let node = DirNode::Leaf(vec![file("b", 1), file("a", 2)]);
        assert!(DirNode::decode(&node.encode()).is_err());
        let node = DirNode::Leaf(vec![file("a", 1), file("a", 2)]);
        assert!(DirNode::decode(&node.encode()).is_err());
    }
}
