//! File manifests: a file's content as a content-defined tree of
//! [`FileNode`]s over its chunks (see [`crate::htree`]).
//!
//! Encoding of a node (`ObjectKind::FileNode`):
//! `'F' 1 level:u8 count:varint (id:32 len:varint)*count`
//! where a level-0 node's children are chunks and a level-n node's children
//! are level-(n-1) nodes; `len` is the number of file bytes under the child.

use crate::codec::{Reader, Writer};
use crate::htree::{Root, Shape, TreeBuilder, TreeCodec};
use crate::{FormatError, ObjectId, ObjectKind, Result};

const TAG: u8 = b'F';
const VERSION: u8 = 1;
/// Leaf nodes average 64 chunks (4 MiB of file at 64 KiB chunks).
pub const LEAF_SHAPE: Shape = Shape { avg: 64, max: 1024 };
pub const INNER_SHAPE: Shape = Shape { avg: 64, max: 1024 };
/// Decoders accept up to this many children per node.
pub const MAX_CHILDREN: usize = 1024;
/// Files deeper than this cannot exist (64^16 chunks); corrupt input can.
pub const MAX_HEIGHT: u8 = 16;

/// One child of a file node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    pub id: ObjectId,
    pub len: u64,
}

/// A decoded file node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNode {
    pub level: u8,
    pub children: Vec<Child>,
}

impl FileNode {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(TAG);
        w.u8(VERSION);
        w.u8(self.level);
        w.varint(self.children.len() as u64);
        for c in &self.children {
            w.id(&c.id);
            w.varint(c.len);
        }
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "file node");
        r.header(TAG, VERSION)?;
        let level = r.u8()?;
        if level >= MAX_HEIGHT {
            return Err(r.corrupt(format!("level {level} too deep")));
        }
        let n = r.bounded(MAX_CHILDREN as u64, "child count")?;
        if n == 0 {
            return Err(r.corrupt("node without children"));
        }
        let mut children = Vec::with_capacity(n.min(r.remaining() / 33));
        let mut total: u64 = 0;
        for _ in 0..n {
            let id = r.id()?;
            let len = r.varint()?;
            if len == 0 {
                return Err(r.corrupt("zero-length child"));
            }
            total = total
                .checked_add(len)
                .ok_or_else(|| r.corrupt("file size overflows"))?;
            children.push(Child { id, len });
        }
        r.finish()?;
        Ok(FileNode { level, children })
    }

    pub fn total_len(&self) -> u64 {
        self.children.iter().map(|c| c.len).sum()
    }
}

/// How a directory entry refers to a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    pub size: u64,
    /// 0: `root` is the file's only chunk (or, for an empty file, zero).
    /// n ≥ 1: `root` is a file node of level n-1.
    pub height: u8,
    pub root: ObjectId,
}

impl FileRef {
    pub const EMPTY: FileRef = FileRef {
        size: 0,
        height: 0,
        root: ObjectId::ZERO,
    };

    /// The object a reader must fetch first, with its kind; `None` for empty files.
    pub fn root_object(&self) -> Option<(ObjectKind, ObjectId)> {
        match (self.size, self.height) {
            (0, _) => None,
            (_, 0) => Some((ObjectKind::Chunk, self.root)),
            _ => Some((ObjectKind::FileNode, self.root)),
        }
    }
}

#[derive(Debug)]
struct FileCodec;

impl TreeCodec for FileCodec {
    type Leaf = Child;
    type Inner = Child;
    fn leaf_boundary_hash(item: &Child) -> [u8; 32] {
        item.id.0
    }
    fn inner_boundary_hash(item: &Child) -> [u8; 32] {
        item.id.0
    }
    fn seal_leaves(items: Vec<Child>, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) -> Child {
        Self::seal_inner(0, items, emit)
    }
    fn seal_inner(level: u8, items: Vec<Child>, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) -> Child {
        let node = FileNode {
            level,
            children: items,
        };
        let len = node.total_len();
        let bytes = node.encode();
        let id = ObjectKind::FileNode.hash(&bytes);
        emit(id, bytes);
        Child { id, len }
    }
}

/// Builds a file's manifest from its chunks in order. Nodes are handed to
/// `emit` bottom-up, so a node is always emitted after everything it names.
#[derive(Debug)]
pub struct ManifestBuilder {
    inner: TreeBuilder<FileCodec>,
    size: u64,
}

impl Default for ManifestBuilder {
    fn default() -> Self {
        ManifestBuilder {
            inner: TreeBuilder::new(LEAF_SHAPE, INNER_SHAPE),
            size: 0,
        }
    }
}

impl ManifestBuilder {
    pub fn push(&mut self, chunk: ObjectId, len: u64, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) {
        debug_assert!(len > 0);
        self.size += len;
        self.inner.push(Child { id: chunk, len }, emit);
    }

    pub fn finish(self, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) -> FileRef {
        match self.inner.finish(false, emit) {
            Root::Empty => FileRef::EMPTY,
            Root::Single(c) => FileRef {
                size: c.len,
                height: 0,
                root: c.id,
            },
            Root::Node(c, level) => FileRef {
                size: c.len,
                height: level + 1,
                root: c.id,
            },
        }
    }
}

/// Checks that a decoded node is consistent with what its parent said of it.
pub fn check_child(node: &FileNode, expected_level: u8, expected_len: u64) -> Result<()> {
    if node.level != expected_level {
        return Err(FormatError::corrupt(
            "file node",
            format!("level {} where {expected_level} expected", node.level),
        ));
    }
    if node.total_len() != expected_len {
        return Err(FormatError::corrupt(
            "file node",
            format!(
                "holds {} bytes where parent says {expected_len}",
                node.total_len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn chunk(i: u64) -> ObjectId {
        ObjectKind::Chunk.hash(&i.to_le_bytes())
    }

    fn build(ids: &[ObjectId]) -> (FileRef, HashMap<ObjectId, Vec<u8>>) {
        let mut nodes = HashMap::new();
        let mut b = ManifestBuilder::default();
        for id in ids {
            b.push(*id, 100, &mut |i, n| {
                nodes.insert(i, n);
            });
        }
        let r = b.finish(&mut |i, n| {
            nodes.insert(i, n);
        });
        (r, nodes)
    }

    fn flatten(r: &FileRef, nodes: &HashMap<ObjectId, Vec<u8>>) -> Vec<ObjectId> {
        fn walk(
            id: ObjectId,
            level: u8,
            len: u64,
            nodes: &HashMap<ObjectId, Vec<u8>>,
            out: &mut Vec<ObjectId>,
        ) {
            let n = FileNode::decode(&nodes[&id]).unwrap();
            check_child(&n, level, len).unwrap();
            for c in n.children {
                if level == 0 {
                    out.push(c.id);
                } else {
                    walk(c.id, level - 1, c.len, nodes, out);
                }
            }
        }
        let mut out = Vec::new();
        match r.height {
            0 if r.size == 0 => {}
            0 => out.push(r.root),
            h => walk(r.root, h - 1, r.size, nodes, &mut out),
        }
        out
    }

    #[test]
    fn shapes_round_trip() {
        for n in [0usize, 1, 2, 63, 64, 65, 1000, 5000, 70_000] {
            let ids: Vec<_> = (0..n as u64).map(chunk).collect();
            let (r, nodes) = build(&ids);
            assert_eq!(r.size, 100 * n as u64);
            assert_eq!(flatten(&r, &nodes), ids, "n={n}");
            if n == 1 {
                assert_eq!(r.height, 0);
                assert!(nodes.is_empty());
            }
        }
    }

    #[test]
    fn small_edit_rewrites_few_nodes() {
        let ids: Vec<_> = (0..50_000u64).map(chunk).collect();
        let (_, a) = build(&ids);
        let mut edited = ids.clone();
        edited[25_000] = chunk(1 << 40);
        let (_, b) = build(&edited);
        let new = b.keys().filter(|k| !a.contains_key(k)).count();
        assert!(new <= 4, "{new} nodes rewritten for one chunk");
        // an insertion too
        let mut ins = ids.clone();
        ins.insert(10_000, chunk(1 << 41));
        let (_, c) = build(&ins);
        let new = c.keys().filter(|k| !a.contains_key(k)).count();
        assert!(new <= 6, "{new} nodes rewritten for one insertion");
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(FileNode::decode(b"").is_err());
        assert!(FileNode::decode(b"F\x01\x00\x00").is_err());
        assert!(FileNode::decode(b"F\x02\x00\x01").is_err());
        let good = FileNode {
            level: 0,
            children: vec![Child {
                id: chunk(1),
                len: 5,
            }],
        }
        .encode();
        assert!(FileNode::decode(&good).is_ok());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(FileNode::decode(&trailing).is_err());
        assert!(FileNode::decode(&good[..good.len() - 1]).is_err());
    }
}
