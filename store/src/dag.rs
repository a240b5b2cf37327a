//! The object graph as sync sees it: which objects sit directly below an
//! object, children-first orderings, and ancestry between snapshots.
//!
//! Sync keeps one invariant on both ends: *holding an object means holding
//! everything below it*. Then "do you have X?" answers for X's whole
//! subtree, so a descent stops at the first object the other side holds, and
//! round trips grow with tree depth, not tree size. Writers keep the
//! invariant by storing objects children-first ([`post_order`]) and
//! committing packs in order.

use std::collections::{HashMap, HashSet};

use ds_format::manifest::FileNode;
use ds_format::snapshot::Snapshot;
use ds_format::tree::{DirNode, EntryData};
use ds_format::{ObjectId, ObjectKind};

use crate::{Result, Store, StoreError};

/// The objects directly below an object, given its verified plaintext.
pub fn children(
    id: &ObjectId,
    kind: ObjectKind,
    raw: &[u8],
    out: &mut Vec<(ObjectId, ObjectKind)>,
) -> Result<()> {
    let damaged = |why: String| StoreError::Damaged {
        kind: kind.name(),
        id: *id,
        pack: None,
        why,
    };
    match kind {
        ObjectKind::Chunk => {}
        ObjectKind::FileNode => {
            let n = FileNode::decode(raw).map_err(|e| damaged(e.to_string()))?;
            let k = if n.level == 0 {
                ObjectKind::Chunk
            } else {
                ObjectKind::FileNode
            };
            out.extend(n.children.iter().map(|c| (c.id, k)));
        }
        ObjectKind::DirNode => match DirNode::decode(raw).map_err(|e| damaged(e.to_string()))? {
            DirNode::Leaf(entries) => {
                for e in entries {
                    match e.data {
                        EntryData::File(f) if f.size == 0 => {}
                        EntryData::File(f) if f.height == 0 => {
                            out.push((f.root, ObjectKind::Chunk))
                        }
                        EntryData::File(f) => out.push((f.root, ObjectKind::FileNode)),
                        EntryData::Dir(d) => out.push((d.root, ObjectKind::DirNode)),
                        EntryData::Symlink(_) => {}
                    }
                }
            }
            DirNode::Index { children, .. } => {
                out.extend(children.iter().map(|c| (c.id, ObjectKind::DirNode)));
            }
        },
        ObjectKind::Snapshot => {
            let s = Snapshot::decode(raw).map_err(|e| damaged(e.to_string()))?;
            out.push((s.root.root, ObjectKind::DirNode));
            out.extend(s.parents.iter().map(|p| (*p, ObjectKind::Snapshot)));
        }
    }
    Ok(())
}

/// Orders the objects reachable from `roots` through `edges` so that every
/// object comes after all of its children (objects without an entry in
/// `edges` are leaves). Each object appears once.
pub fn post_order(roots: &[ObjectId], edges: &HashMap<ObjectId, Vec<ObjectId>>) -> Vec<ObjectId> {
    let mut out = Vec::new();
    let mut done: HashSet<ObjectId> = HashSet::new();
    // Iterative DFS: (node, index of the next child to visit).
    let mut stack: Vec<(ObjectId, usize)> = Vec::new();
    for r in roots {
        if done.contains(r) {
            continue;
        }
        stack.push((*r, 0));
        while let Some((node, next)) = stack.pop() {
            let kids = edges.get(&node).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(child) = kids.get(next) {
                stack.push((node, next + 1));
                if !done.contains(child) && !stack.iter().any(|(n, _)| n == child) {
                    stack.push((*child, 0));
                }
            } else if done.insert(node) {
                out.push(node);
            }
        }
    }
    out
}

/// Whether snapshot `ancestor` is `of` or one of its ancestors, following
/// parents through the objects `store` holds.
pub fn is_ancestor(store: &Store, ancestor: &ObjectId, of: &ObjectId) -> Result<bool> {
    let mut seen = HashSet::new();
    let mut todo = vec![*of];
    while let Some(s) = todo.pop() {
        if s == *ancestor {
            return Ok(true);
        }
        if !seen.insert(s) {
            continue;
        }
        match store.load_snapshot(&s) {
            Ok(snap) => todo.extend(snap.parents),
            // History the store does not hold cannot prove ancestry.
            Err(StoreError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId([n; 32])
    }

    #[test]
    fn post_order_puts_children_first_even_when_shared_at_several_depths() {
        // 1 -> 2 -> 3 -> 4, and 1 -> 4 directly: 4 must still precede 3.
        let mut e = HashMap::new();
        e.insert(id(1), vec![id(4), id(2)]);
        e.insert(id(2), vec![id(3)]);
        e.insert(id(3), vec![id(4)]);
        let order = post_order(&[id(1)], &e);
        assert_eq!(order, vec![id(4), id(3), id(2), id(1)]);
        let pos = |x| order.iter().position(|o| *o == x).unwrap();
        for (p, kids) in &e {
            for k in kids {
                assert!(pos(*k) < pos(*p));
            }
        }
    }
}
