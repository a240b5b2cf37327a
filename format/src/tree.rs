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
//! Entry (format 2): `name:bytes kind:u8 mode:varint mtime_ns:zigzag flags:u8`,
//! then `uid:varint gid:varint` if flags&1, `count:varint (name:bytes
//! value:bytes)*` extended attributes sorted by name if flags&2,
//! `group:varint nlink:varint` hard-link group if flags&4; then for a file
//! (kind 1) `size:varint height:u8 [root:32 if size > 0]`, for a directory
//! (2) `height:u8 root:32`, for a symlink (3) `target:bytes`, nothing for a
//! FIFO (4) or socket (5), `rdev:varint` for a character (6) or block (7)
//! device. Format 1 (still read) had no flags byte and kinds 1–3 only; its
//! entries decode with no owner, attributes or link.
//!
//! Names are raw bytes (non-UTF-8 names round-trip). The decoder refuses names
//! that could escape a restore target: empty, `.`, `..`, containing `/` or NUL.

use crate::codec::{Reader, Writer};
use crate::htree::{Root, Shape, TreeBuilder, TreeCodec};
use crate::manifest::{self, FileRef};
use crate::{FormatError, ObjectId, ObjectKind, Result};

const TAG: u8 = b'D';
/// 2 added owners, attributes, hard links and special files; 1 is still read.
const VERSION: u8 = 2;
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
    /// A named pipe (no content).
    Fifo,
    /// A unix socket's node: restored as an inert node, as `rsync -a`
    /// and tar do; the listening process is not part of a snapshot.
    Socket,
    /// A character (`block: false`) or block device node, `rdev` as the
    /// kernel encodes it (`makedev(major, minor)`).
    Device {
        block: bool,
        rdev: u64,
    },
}

/// What kind of entry a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl EntryType {
    /// "file", "dir", "symlink", "fifo", "socket", "chardev" or "blockdev"
    /// (as JSON output spells them).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::File => "file",
            EntryType::Dir => "dir",
            EntryType::Symlink => "symlink",
            EntryType::Fifo => "fifo",
            EntryType::Socket => "socket",
            EntryType::CharDevice => "chardev",
            EntryType::BlockDevice => "blockdev",
        }
    }
}

impl EntryData {
    pub fn entry_type(&self) -> EntryType {
        match self {
            EntryData::File(_) => EntryType::File,
            EntryData::Dir(_) => EntryType::Dir,
            EntryData::Symlink(_) => EntryType::Symlink,
            EntryData::Fifo => EntryType::Fifo,
            EntryData::Socket => EntryType::Socket,
            EntryData::Device { block: false, .. } => EntryType::CharDevice,
            EntryData::Device { block: true, .. } => EntryType::BlockDevice,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        self.entry_type().as_str()
    }

    /// A FIFO, socket or device node.
    pub fn is_special(&self) -> bool {
        matches!(
            self,
            EntryData::Fifo | EntryData::Socket | EntryData::Device { .. }
        )
    }
}

/// Who owns an entry, as numbers (names mean nothing on another machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Membership of a hard-link group. Entries of one snapshot with the same
/// `group` are names of one inode: restore makes them links of one file,
/// a mount shows them as one inode. The number is a label, meaningful only
/// within a snapshot (a snapshot derives it from the source's device and
/// inode, as restic does); `nlink` is the link count the source reported,
/// a hint for a mount that has not yet listed every directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Link {
    pub group: u64,
    pub nlink: u32,
}

/// One extended attribute (`user.*`, `trusted.*`, `security.*`, POSIX ACLs
/// as `system.posix_acl_*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// The limits Linux puts on one attribute (XATTR_NAME_MAX, XATTR_SIZE_MAX).
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 65536;
/// Attributes per entry: far above what any filesystem keeps on one inode.
pub const MAX_XATTRS: usize = 1024;

/// Checks one attribute may be recorded.
pub fn validate_xattr(name: &[u8], value: &[u8]) -> Result<()> {
    let why = if name.is_empty() {
        "empty attribute name"
    } else if name.contains(&0) {
        "attribute name contains NUL"
    } else if name.len() > MAX_XATTR_NAME {
        "attribute name too long"
    } else if value.len() > MAX_XATTR_VALUE {
        "attribute value too long"
    } else {
        return Ok(());
    };
    Err(FormatError::BadName {
        name: String::from_utf8_lossy(name).into_owned(),
        why,
    })
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub mtime_ns: i64,
    /// `None` in trees written before format 2, which recorded no owners.
    pub owner: Option<Owner>,
    /// Sorted by name, names unique.
    pub xattrs: Vec<Xattr>,
    /// Set when the source inode had more than one name (never on a
    /// directory).
    pub link: Option<Link>,
    pub data: EntryData,
}

const FLAG_OWNER: u8 = 1;
const FLAG_XATTRS: u8 = 2;
const FLAG_LINK: u8 = 4;

impl Entry {
    /// An entry with no owner, attributes or links recorded.
    pub fn new(name: Vec<u8>, mode: u32, mtime_ns: i64, data: EntryData) -> Entry {
        Entry {
            name,
            mode,
            mtime_ns,
            owner: None,
            xattrs: Vec::new(),
            link: None,
            data,
        }
    }

    pub fn size(&self) -> u64 {
        match &self.data {
            EntryData::File(f) => f.size,
            EntryData::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }

    /// What differs between two versions of one entry besides its content,
    /// type and mtime: any of "mode", "owner", "xattrs". Owners are compared
    /// only when both record one (trees of format 1 record none), and
    /// hard-link labels not at all (they are only labels).
    pub fn metadata_changes(&self, new: &Entry) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.mode != new.mode {
            out.push("mode");
        }
        if let (Some(a), Some(b)) = (self.owner, new.owner)
            && a != b
        {
            out.push("owner");
        }
        if self.xattrs != new.xattrs {
            out.push("xattrs");
        }
        out
    }

    fn kind_code(&self) -> u8 {
        match &self.data {
            EntryData::File(_) => 1,
            EntryData::Dir(_) => 2,
            EntryData::Symlink(_) => 3,
            EntryData::Fifo => 4,
            EntryData::Socket => 5,
            EntryData::Device { block: false, .. } => 6,
            EntryData::Device { block: true, .. } => 7,
        }
    }

    fn encode(&self, w: &mut Writer) {
        w.bytes(&self.name);
        w.u8(self.kind_code());
        w.varint(u64::from(self.mode));
        w.ivarint(self.mtime_ns);
        let mut flags = 0;
        if self.owner.is_some() {
            flags |= FLAG_OWNER;
        }
        if !self.xattrs.is_empty() {
            flags |= FLAG_XATTRS;
        }
        if self.link.is_some() {
            flags |= FLAG_LINK;
        }
        w.u8(flags);
        if let Some(o) = self.owner {
            w.varint(u64::from(o.uid));
            w.varint(u64::from(o.gid));
        }
        if !self.xattrs.is_empty() {
            w.varint(self.xattrs.len() as u64);
            for x in &self.xattrs {
                w.bytes(&x.name);
                w.bytes(&x.value);
            }
        }
        if let Some(l) = self.link {
            w.varint(l.group);
            w.varint(u64::from(l.nlink));
        }
        match &self.data {
            EntryData::File(f) => {
                w.varint(f.size);
                w.u8(f.height);
                if f.size > 0 {
                    w.id(&f.root);
                }
            }
            EntryData::Dir(d) => {
                w.u8(d.height);
                w.id(&d.root);
            }
            EntryData::Symlink(t) => w.bytes(t),
            EntryData::Fifo | EntryData::Socket => {}
            EntryData::Device { rdev, .. } => w.varint(*rdev),
        }
    }

    /// Decodes one entry of a leaf of format `version` (1: no flags, kinds
    /// 1–3; 2: flags, owners, attributes, links, special files).
    fn decode(r: &mut Reader<'_>, version: u8) -> Result<Self> {
        let name = r.bytes(MAX_NAME)?.to_vec();
        validate_name(&name)?;
        let kind = r.u8()?;
        let mode = r.bounded(0o7777, "mode")? as u32;
        let mtime_ns = r.ivarint()?;
        let mut e = Entry::new(name, mode, mtime_ns, EntryData::Fifo);
        if version >= 2 {
            let flags = r.u8()?;
            if flags & !(FLAG_OWNER | FLAG_XATTRS | FLAG_LINK) != 0 {
                return Err(r.corrupt(format!("unknown entry flags {flags:#x}")));
            }
            if flags & FLAG_OWNER != 0 {
                let uid = r.bounded(u64::from(u32::MAX), "uid")? as u32;
                let gid = r.bounded(u64::from(u32::MAX), "gid")? as u32;
                e.owner = Some(Owner { uid, gid });
            }
            if flags & FLAG_XATTRS != 0 {
                let n = r.bounded(MAX_XATTRS as u64, "attribute count")?;
                if n == 0 {
                    return Err(r.corrupt("attribute flag without attributes"));
                }
                for _ in 0..n {
                    let name = r.bytes(MAX_XATTR_NAME)?.to_vec();
                    let value = r.bytes(MAX_XATTR_VALUE)?.to_vec();
                    validate_xattr(&name, &value)?;
                    if e.xattrs.last().is_some_and(|p| p.name >= name) {
                        return Err(r.corrupt("attributes not strictly sorted"));
                    }
                    e.xattrs.push(Xattr { name, value });
                }
            }
            if flags & FLAG_LINK != 0 {
                let group = r.varint()?;
                let nlink = r.bounded(u64::from(u32::MAX), "link count")? as u32;
                if group == 0 || nlink < 1 {
                    return Err(r.corrupt("hard-link group 0 or link count 0"));
                }
                e.link = Some(Link { group, nlink });
            }
        } else if kind > 3 {
            return Err(r.corrupt(format!("unknown entry kind {kind}")));
        }
        e.data = match kind {
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
                if e.link.is_some() {
                    return Err(r.corrupt("a directory in a hard-link group"));
                }
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
            4 => EntryData::Fifo,
            5 => EntryData::Socket,
            6 | 7 => EntryData::Device {
                block: kind == 7,
                rdev: r.varint()?,
            },
            k => return Err(r.corrupt(format!("unknown entry kind {k}"))),
        };
        Ok(e)
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
        let version = r.header_in(TAG, 1..=VERSION)?;
        let level = r.u8()?;
        if level >= MAX_LEVEL {
            return Err(r.corrupt(format!("level {level} too deep")));
        }
        let node = if level == 0 {
            let n = r.bounded(LEAF_SHAPE.max as u64, "entry count")?;
            let mut entries: Vec<Entry> = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                let e = Entry::decode(&mut r, version)?;
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
        Entry::new(
            name.as_bytes().to_vec(),
            0o644,
            -5 + n as i64,
            EntryData::File(FileRef {
                size: n + 1,
                height: 0,
                root: ObjectKind::Chunk.hash(&n.to_le_bytes()),
            }),
        )
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
        let dir = DirRef {
            height: 2,
            root: ObjectId([7; 32]),
        };
        let owner = Some(Owner {
            uid: 1000,
            gid: u32::MAX,
        });
        let xattrs = vec![
            Xattr {
                name: b"security.capability".to_vec(),
                value: vec![1, 0, 0, 2],
            },
            Xattr {
                name: b"user.empty".to_vec(),
                value: Vec::new(),
            },
        ];
        let link = Some(Link {
            group: u64::MAX,
            nlink: 3,
        });
        let entries = vec![
            Entry::new(
                b"a\xffnon-utf8".to_vec(),
                0o755,
                i64::MIN,
                EntryData::Dir(dir),
            ),
            Entry {
                owner,
                xattrs: xattrs.clone(),
                link,
                ..Entry::new(
                    b"b-linked".to_vec(),
                    0o4755,
                    7,
                    EntryData::File(FileRef::EMPTY),
                )
            },
            Entry {
                owner,
                ..Entry::new(b"c-fifo".to_vec(), 0o600, 1, EntryData::Fifo)
            },
            Entry::new(b"d-sock".to_vec(), 0o755, 1, EntryData::Socket),
            Entry {
                link,
                ..Entry::new(
                    b"e-chr".to_vec(),
                    0o666,
                    1,
                    EntryData::Device {
                        block: false,
                        rdev: (1 << 8) | 3,
                    },
                )
            },
            Entry::new(
                b"f-blk".to_vec(),
                0o660,
                1,
                EntryData::Device {
                    block: true,
                    rdev: u64::MAX,
                },
            ),
            Entry {
                xattrs,
                ..Entry::new(
                    b"z-link".to_vec(),
                    0o777,
                    i64::MAX,
                    EntryData::Symlink(b"../x".to_vec()),
                )
            },
            Entry::new(b"zz-empty".to_vec(), 0, 0, EntryData::File(FileRef::EMPTY)),
        ];
        let node = DirNode::Leaf(entries);
        assert_eq!(DirNode::decode(&node.encode()).unwrap(), node);
    }

    /// A leaf as format 1 wrote it (no flags byte): still read, with no
    /// owner, attributes or link.
    #[test]
    fn reads_format_1() {
        let mut w = Writer::new();
        w.u8(b'D');
        w.u8(1);
        w.u8(0);
        w.varint(2);
        w.bytes(b"f");
        w.u8(1);
        w.varint(0o644);
        w.ivarint(42);
        w.varint(3);
        w.u8(0);
        w.id(&ObjectId([9; 32]));
        w.bytes(b"l");
        w.u8(3);
        w.varint(0o777);
        w.ivarint(-1);
        w.bytes(b"t");
        let node = DirNode::decode(&w.into_bytes()).unwrap();
        let want = DirNode::Leaf(vec![
            Entry::new(
                b"f".to_vec(),
                0o644,
                42,
                EntryData::File(FileRef {
                    size: 3,
                    height: 0,
                    root: ObjectId([9; 32]),
                }),
            ),
            Entry::new(b"l".to_vec(), 0o777, -1, EntryData::Symlink(b"t".to_vec())),
        ]);
        assert_eq!(node, want);
        // Format 1 had no special files.
        let mut w = Writer::new();
        for b in [b'D', 1, 0, 1] {
            w.u8(b);
        }
        w.bytes(b"p");
        w.u8(4);
        w.varint(0o644);
        w.ivarint(0);
        assert!(DirNode::decode(&w.into_bytes()).is_err());
    }

    #[test]
    fn refuses_bad_metadata() {
        let bad = [
            Entry {
                link: Some(Link { group: 5, nlink: 2 }),
                ..Entry::new(
                    b"d".to_vec(),
                    0o755,
                    0,
                    EntryData::Dir(DirRef {
                        height: 0,
                        root: ObjectId([1; 32]),
                    }),
                )
            },
            Entry {
                link: Some(Link { group: 0, nlink: 2 }),
                ..file("x", 1)
            },
            Entry {
                xattrs: vec![Xattr {
                    name: b"a\0b".to_vec(),
                    value: vec![],
                }],
                ..file("x", 1)
            },
            Entry {
                xattrs: vec![
                    Xattr {
                        name: b"user.b".to_vec(),
                        value: vec![],
                    },
                    Xattr {
                        name: b"user.a".to_vec(),
                        value: vec![],
                    },
                ],
                ..file("x", 1)
            },
        ];
        for e in bad {
            let node = DirNode::Leaf(vec![e.clone()]);
            assert!(DirNode::decode(&node.encode()).is_err(), "{e:?}");
        }
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
