//! Content-defined hash trees, used for both file manifests and directories.
//!
//! A file is a list of (chunk id, length); a big directory is a list of
//! entries. Storing either as one flat object would rewrite the whole list on
//! every small edit. Instead the list is cut into nodes at *content-defined*
//! boundaries — an item ends a node when its hash satisfies a mask, or when the
//! node reaches a hard cap — and the node ids form the next level up, cut the
//! same way, until one node remains. Because boundaries depend only on nearby
//! items, changing one item rewrites one node per level: O(log n).
//!
//! A boundary is applied lazily (the node is closed when the *next* item
//! arrives), so a list of one item is never wrapped in a node of its own: a
//! single-chunk file points straight at its chunk.

use crate::ObjectId;

/// Geometry of one kind of tree.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// An item whose boundary hash is 0 modulo this ends a node (a power of two).
    pub avg: u32,
    /// No node holds more items than this.
    pub max: usize,
}

impl Shape {
    pub fn is_boundary(&self, hash: &[u8; 32]) -> bool {
        u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]) & (self.avg - 1) == 0
    }
}

/// One level of an in-progress tree.
#[derive(Debug)]
struct Level<T> {
    items: Vec<T>,
    boundary_pending: bool,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            items: Vec::new(),
            boundary_pending: false,
        }
    }
}

/// What a tree needs from its items: the hash used for boundaries, and how to
/// seal a run of items into a node (returning the item that stands for that
/// node one level up).
pub trait TreeCodec {
    type Leaf;
    type Inner;
    fn leaf_boundary_hash(item: &Self::Leaf) -> [u8; 32];
    fn inner_boundary_hash(item: &Self::Inner) -> [u8; 32];
    /// Seals leaves into a level-0 node; `emit` receives its id and bytes.
    fn seal_leaves(items: Vec<Self::Leaf>, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) -> Self::Inner;
    /// Seals inner items into a node of `level` (≥ 1).
    fn seal_inner(
        level: u8,
        items: Vec<Self::Inner>,
        emit: &mut dyn FnMut(ObjectId, Vec<u8>),
    ) -> Self::Inner;
}

/// Streaming builder of a content-defined tree. Push items in order, then
/// [`TreeBuilder::finish`].
#[derive(Debug)]
pub struct TreeBuilder<C: TreeCodec> {
    leaf_shape: Shape,
    inner_shape: Shape,
    leaves: Level<C::Leaf>,
    inner: Vec<Level<C::Inner>>,
}

/// The result of building a tree.
#[derive(Debug)]
pub enum Root<C: TreeCodec> {
    /// No items at all.
    Empty,
    /// Exactly one leaf item and nothing else: no node was written.
    Single(C::Leaf),
    /// The root node, as the item that stands for it, and its level (0 = leaf node).
    Node(C::Inner, u8),
}

impl<C: TreeCodec> TreeBuilder<C> {
    pub fn new(leaf_shape: Shape, inner_shape: Shape) -> Self {
        TreeBuilder {
            leaf_shape,
            inner_shape,
            leaves: Level::default(),
            inner: Vec::new(),
        }
    }

    pub fn push(&mut self, item: C::Leaf, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) {
        if self.leaves.boundary_pending || self.leaves.items.len() >= self.leaf_shape.max {
            self.flush_leaves(emit);
        }
        self.leaves.boundary_pending = self.leaf_shape.is_boundary(&C::leaf_boundary_hash(&item));
        self.leaves.items.push(item);
    }

    fn flush_leaves(&mut self, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) {
        let items = std::mem::take(&mut self.leaves.items);
        self.leaves.boundary_pending = false;
        let up = C::seal_leaves(items, emit);
        self.push_inner(0, up, emit);
    }

    /// Pushes into `self.inner[idx]`, which holds items of level idx+1 nodes'
    /// children (i.e. each item stands for a level-idx node).
    fn push_inner(&mut self, idx: usize, item: C::Inner, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) {
        if self.inner.len() <= idx {
            self.inner.push(Level::default());
        }
        let lvl = &mut self.inner[idx];
        if lvl.boundary_pending || lvl.items.len() >= self.inner_shape.max {
            self.flush_inner(idx, emit);
        }
        let lvl = &mut self.inner[idx];
        lvl.boundary_pending = self.inner_shape.is_boundary(&C::inner_boundary_hash(&item));
        lvl.items.push(item);
    }

    fn flush_inner(&mut self, idx: usize, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) {
        let items = std::mem::take(&mut self.inner[idx].items);
        self.inner[idx].boundary_pending = false;
        let up = C::seal_inner((idx + 1) as u8, items, emit);
        self.push_inner(idx + 1, up, emit);
    }

    /// Closes every level. `always_node` forces a node even for zero or one
    /// leaf (directories always have a root node, even when empty).
    pub fn finish(mut self, always_node: bool, emit: &mut dyn FnMut(ObjectId, Vec<u8>)) -> Root<C> {
        if self.inner.is_empty() {
            match (self.leaves.items.len(), always_node) {
                (0, false) => return Root::Empty,
                (1, false) => return Root::Single(self.leaves.items.pop().expect("one item")),
                _ => {
                    let items = std::mem::take(&mut self.leaves.items);
                    return Root::Node(C::seal_leaves(items, emit), 0);
                }
            }
        }
        if !self.leaves.items.is_empty() {
            self.flush_leaves(emit);
        }
        let mut idx = 0;
        loop {
            let top = idx + 1 == self.inner.len();
            if top && self.inner[idx].items.len() == 1 {
                let item = self.inner[idx].items.pop().expect("one item");
                return Root::Node(item, idx as u8);
            }
            if !self.inner[idx].items.is_empty() {
                self.flush_inner(idx, emit);
            }
            idx += 1;
        }
    }
}
