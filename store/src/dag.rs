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

use ds_format::check;
use ds_format::{ObjectId, ObjectKind};

use crate::{Result, Store, StoreError};

/// The objects directly below an object, given its verified plaintext
/// (see [`ds_format::check::children`]).
pub fn children(
    id: &ObjectId,
    kind: ObjectKind,
    raw: &[u8],
    out: &mut Vec<(ObjectId, ObjectKind)>,
) -> Result<()> {
    check::children(kind, raw, out).map_err(|e| StoreError::Damaged {
        kind: kind.name(),
        id: *id,
        pack: None,
        why: e.to_string(),
    })
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
