//! The level-by-level walk of a snapshot's object graph that both push and
//! pull make, written once.
//!
//! Why level by level: a round trip per level of the Merkle tree (a
//! snapshot, its directory nodes, their children, ...) asks the other side
//! only about children of objects it lacks, so an unchanged subtree costs
//! one id however large it is, and a sync of a small change costs a few
//! round trips of a few ids each.
//!
//! The walk does not know who holds what: each level, the caller decides
//! which of [`Descent::next_level`]'s objects the receiving side lacks and
//! hands back the bytes of the lacking tree nodes ([`Descent::expand`]);
//! their children form the next level. [`Descent::post_order`] then gives
//! the children-first order in which objects must be written.

use std::collections::{HashMap, HashSet};

use ds_format::{ObjectId, ObjectKind};
use ds_store::dag;

use crate::Result;

/// A walk from one root.
#[derive(Debug)]
pub struct Descent {
    root: ObjectId,
    seen: HashSet<ObjectId>,
    edges: HashMap<ObjectId, Vec<ObjectId>>,
    next: Vec<(ObjectId, ObjectKind)>,
    level: usize,
    kids: Vec<(ObjectId, ObjectKind)>,
}

impl Descent {
    /// A walk from snapshot `root`.
    pub fn new(root: ObjectId) -> Descent {
        Descent {
            root,
            seen: HashSet::from([root]),
            edges: HashMap::new(),
            next: vec![(root, ObjectKind::Snapshot)],
            level: 0,
            kids: Vec::new(),
        }
    }

    /// The objects of the next level (never seen before), and its depth;
    /// `None` when the walk is over.
    pub fn next_level(&mut self) -> Option<(usize, Vec<(ObjectId, ObjectKind)>)> {
        if self.next.is_empty() {
            return None;
        }
        let level = self.level;
        self.level += 1;
        Some((level, std::mem::take(&mut self.next)))
    }

    /// Records a lacking tree node's children (from its plaintext `raw`)
    /// for the next level. Chunks have none and need not be expanded.
    pub fn expand(&mut self, id: ObjectId, kind: ObjectKind, raw: &[u8]) -> Result<()> {
        if kind == ObjectKind::Chunk {
            return Ok(());
        }
        self.kids.clear();
        dag::children(&id, kind, raw, &mut self.kids)?;
        self.edges
            .insert(id, self.kids.iter().map(|(c, _)| *c).collect());
        for (c, k) in &self.kids {
            if self.seen.insert(*c) {
                self.next.push((*c, *k));
            }
        }
        Ok(())
    }

    /// Every expanded object and chunk reached, children before parents.
    /// Objects the receiving side held were never expanded, so the caller
    /// filters this by what it transferred.
    pub fn post_order(&self) -> Vec<ObjectId> {
        dag::post_order(&[self.root], &self.edges)
    }
}
