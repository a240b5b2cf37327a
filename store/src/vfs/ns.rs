//! Namespace operations: lookup, listing, creating, removing, renaming and
//! changing attributes. Every change marks the paths it touches dirty.

use ds_format::manifest::FileRef;
use ds_format::tree::{self, EntryData, validate_name};

use super::node::{Content, DirState, FileState, Node};
use super::{
    Attr, DirEntry, Ino, Kind, RenameFlags, SetAttr, VResult, Vfs, VfsError, enoent, now_ns,
};

fn err(e: i32) -> VfsError {
    VfsError::errno(e)
}

fn check_name(name: &[u8]) -> VResult<()> {
    if name.len() > super::NAME_MAX {
        return Err(err(libc::ENAMETOOLONG));
    }
    validate_name(name).map_err(|_| err(libc::EINVAL))
}

impl Vfs {
    /// Looks `name` up in `parent` and counts one kernel reference to it.
    pub fn lookup(&mut self, parent: Ino, name: &[u8]) -> VResult<Attr> {
        let ino = self.child(parent.0, name)?.ok_or_else(enoent)?;
        self.node_mut(ino)?.lookups += 1;
        self.getattr(Ino(ino))
    }

    /// The kernel dropped `n` references. An unlinked node with none left
    /// (and no open handle) is freed with its overlay.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino.0) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.maybe_free(ino.0);
    }

    pub(super) fn maybe_free(&mut self, ino: u64) {
        let free = self.nodes.get(&ino).is_some_and(|n| {
            n.parent.is_none() && ino != Ino::ROOT.0 && n.lookups == 0 && n.opens == 0
        });
        if free && let Some(n) = self.nodes.remove(&ino) {
            if n.group != 0 && self.groups.get(&n.group) == Some(&ino) {
                self.groups.remove(&n.group);
            }
            self.discard_overlay(&n);
            // An unlinked directory is empty; nothing below it to free.
        }
    }

    /// Entries of a directory, without `.` and `..`.
    pub fn readdir(&mut self, ino: Ino) -> VResult<Vec<DirEntry>> {
        let children: Vec<(Vec<u8>, u64)> = self
            .children(ino.0)?
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Ok(children
            .into_iter()
            .filter_map(|(name, i)| {
                let n = self.nodes.get(&i)?;
                let kind = Kind::of(&n.content);
                Some(DirEntry {
                    ino: Ino(i),
                    kind,
                    name,
                })
            })
            .collect())
    }

    /// The parent directory's inode (for `..`).
    pub fn parent_of(&self, ino: Ino) -> Ino {
        self.nodes
            .get(&ino.0)
            .and_then(|n| n.parent)
            .map(Ino)
            .unwrap_or(Ino::ROOT)
    }

    pub fn readlink(&mut self, ino: Ino) -> VResult<Vec<u8>> {
        match &self.node(ino.0)?.content {
            Content::Symlink(t) => Ok(t.clone()),
            _ => Err(err(libc::EINVAL)),
        }
    }

    fn new_entry(
        &mut self,
        parent: Ino,
        name: &[u8],
        content: Content,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VResult<Attr> {
        self.require_rw()?;
        check_name(name)?;
        if !self.node(parent.0)?.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        if self.child(parent.0, name)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        let now = now_ns();
        let mut node = Node::fresh(
            Some(parent.0),
            name.to_vec(),
            content,
            mode,
            (uid, gid),
            now,
        );
        node.dirty = true;
        node.lookups = 1;
        let ino = self.alloc(node);
        self.children(parent.0)?.insert(name.to_vec(), ino);
        self.touch_dir(parent.0, now)?;
        self.attr_of(ino)
    }

    fn touch_dir(&mut self, ino: u64, now: i64) -> VResult<()> {
        let n = self.node_mut(ino)?;
        n.mtime_ns = now;
        n.ctime_ns = now;
        self.mark_dirty(ino);
        Ok(())
    }

    pub fn mkdir(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VResult<Attr> {
        let content = Content::Dir(DirState {
            base: None,
            children: Some(Default::default()),
        });
        self.new_entry(parent, name, content, mode, uid, gid)
    }

    pub fn symlink(
        &mut self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> VResult<Attr> {
        if target.is_empty() || target.len() > ds_format::tree::MAX_SYMLINK_TARGET {
            return Err(err(libc::ENAMETOOLONG));
        }
        self.new_entry(
            parent,
            name,
            Content::Symlink(target.to_vec()),
            0o777,
            uid,
            gid,
        )
    }

    /// Creates an empty regular file (counted as looked up once).
    pub fn mknod_file(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VResult<Attr> {
        let content = Content::File(FileState::clean(FileRef::EMPTY));
        self.new_entry(parent, name, content, mode, uid, gid)
    }

    /// Creates a FIFO, socket or device node: `mode` as mknod(2) takes it
    /// (S_IFIFO, S_IFSOCK, S_IFCHR or S_IFBLK with the permission bits);
    /// the kernel has checked who may make devices.
    pub fn mknod_special(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> VResult<Attr> {
        let data = match mode & libc::S_IFMT {
            libc::S_IFIFO => EntryData::Fifo,
            libc::S_IFSOCK => EntryData::Socket,
            libc::S_IFCHR => EntryData::Device { block: false, rdev },
            libc::S_IFBLK => EntryData::Device { block: true, rdev },
            _ => return Err(err(libc::EINVAL)),
        };
        self.new_entry(parent, name, Content::Special(data), mode, uid, gid)
    }

    /// Takes `name` out of `parent`; the node lives on while referenced.
    fn detach(&mut self, parent: u64, name: &[u8]) -> VResult<u64> {
        let ino = self.children(parent)?.remove(name).ok_or_else(enoent)?;
        let now = now_ns();
        self.touch_dir(parent, now)?;
        let n = self.node_mut(ino)?;
        n.remove_name(parent, name);
        n.nlink = n.nlink.saturating_sub(1).max(1);
        n.ctime_ns = now;
        if n.parent.is_some() {
            // Its other names' entries carry the new link count and ctime.
            self.mark_dirty(ino);
        }
        Ok(ino)
    }

    /// Gives node `ino` the name `name` in `parent` (after `detach` or for
    /// a new link).
    fn attach(&mut self, ino: u64, parent: u64, name: &[u8]) -> VResult<()> {
        self.children(parent)?.insert(name.to_vec(), ino);
        let n = self.node_mut(ino)?;
        let was_named = n.parent.is_some();
        n.add_name(parent, name);
        if was_named {
            n.nlink = n.nlink.saturating_add(1);
        }
        Ok(())
    }

    pub fn unlink(&mut self, parent: Ino, name: &[u8]) -> VResult<()> {
        self.require_rw()?;
        let ino = self.child(parent.0, name)?.ok_or_else(enoent)?;
        if self.node(ino)?.is_dir() {
            return Err(err(libc::EISDIR));
        }
        self.detach(parent.0, name)?;
        self.maybe_free(ino);
        Ok(())
    }

    fn is_empty_dir(&mut self, ino: u64) -> VResult<bool> {
        Ok(self.children(ino)?.is_empty())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &[u8]) -> VResult<()> {
        self.require_rw()?;
        let ino = self.child(parent.0, name)?.ok_or_else(enoent)?;
        if !self.node(ino)?.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        if !self.is_empty_dir(ino)? {
            return Err(err(libc::ENOTEMPTY));
        }
        self.detach(parent.0, name)?;
        self.maybe_free(ino);
        Ok(())
    }

    /// Is `anc` `ino` or one of its ancestors?
    fn is_ancestor(&self, anc: u64, ino: u64) -> bool {
        let mut cur = Some(ino);
        while let Some(i) = cur {
            if i == anc {
                return true;
            }
            cur = self.nodes.get(&i).and_then(|n| n.parent);
        }
        false
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> VResult<()> {
        self.require_rw()?;
        check_name(newname)?;
        if !self.node(newparent.0)?.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        let src = self.child(parent.0, name)?.ok_or_else(enoent)?;
        let dst = self.child(newparent.0, newname)?;
        if self.node(src)?.is_dir() && self.is_ancestor(src, newparent.0) {
            return Err(err(libc::EINVAL));
        }
        if flags.exchange {
            let dst = dst.ok_or_else(enoent)?;
            if self.node(dst)?.is_dir() && self.is_ancestor(dst, parent.0) {
                return Err(err(libc::EINVAL));
            }
            self.children(parent.0)?.insert(name.to_vec(), dst);
            self.children(newparent.0)?.insert(newname.to_vec(), src);
            let now = now_ns();
            for (i, from, to) in [
                (dst, (newparent.0, newname), (parent.0, name)),
                (src, (parent.0, name), (newparent.0, newname)),
            ] {
                let node = self.node_mut(i)?;
                node.remove_name(from.0, from.1);
                node.add_name(to.0, to.1);
                node.ctime_ns = now;
                self.mark_dirty(i);
            }
            self.touch_dir(parent.0, now)?;
            self.touch_dir(newparent.0, now)?;
            return Ok(());
        }
        if let Some(d) = dst {
            if d == src {
                return Ok(());
            }
            if flags.noreplace {
                return Err(err(libc::EEXIST));
            }
            let (sd, dd) = (self.node(src)?.is_dir(), self.node(d)?.is_dir());
            match (sd, dd) {
                (true, false) => return Err(err(libc::ENOTDIR)),
                (false, true) => return Err(err(libc::EISDIR)),
                (true, true) if !self.is_empty_dir(d)? => return Err(err(libc::ENOTEMPTY)),
                _ => {}
            }
            self.detach(newparent.0, newname)?;
            self.maybe_free(d);
        }
        // A move, not an unlink: the link count stays.
        let nlink = self.node(src)?.nlink;
        self.detach(parent.0, name)?;
        self.children(newparent.0)?.insert(newname.to_vec(), src);
        let now = now_ns();
        let n = self.node_mut(src)?;
        n.add_name(newparent.0, newname);
        n.nlink = nlink;
        n.ctime_ns = now;
        self.mark_dirty(src);
        self.touch_dir(newparent.0, now)?;
        Ok(())
    }

    /// `chmod`, `chown`, `truncate`, `utimens`.
    pub fn setattr(&mut self, ino: Ino, s: SetAttr) -> VResult<Attr> {
        let changes = s.mode.is_some()
            || s.uid.is_some()
            || s.gid.is_some()
            || s.size.is_some()
            || s.mtime_ns.is_some();
        if changes {
            self.require_rw()?;
        }
        if let Some(size) = s.size {
            self.truncate(ino.0, size)?;
        }
        let now = now_ns();
        let forced = self.opts.force_owner;
        let n = self.node_mut(ino.0)?;
        if let Some(m) = s.mode {
            n.mode = m & 0o7777;
        }
        if (s.uid.is_some() || s.gid.is_some())
            && n.owner_forced
            && let Some((u, g)) = forced
        {
            // What the caller saw is what a partial chown keeps.
            (n.uid, n.gid, n.owner_forced) = (u, g, false);
        }
        if let Some(u) = s.uid {
            n.uid = u;
        }
        if let Some(g) = s.gid {
            n.gid = g;
        }
        if let Some(t) = s.mtime_ns {
            n.mtime_ns = t;
        }
        if let Some(t) = s.atime_ns {
            n.atime_ns = t;
        }
        if changes {
            n.ctime_ns = now;
            self.mark_dirty(ino.0);
        }
        self.attr_of(ino.0)
    }

    /// A new name for a non-directory: a hard link. The node joins (or
    /// starts) a hard-link group, which snapshots record, so every name
    /// is restored as a link of one file.
    pub fn link(&mut self, ino: Ino, newparent: Ino, newname: &[u8]) -> VResult<Attr> {
        self.require_rw()?;
        check_name(newname)?;
        if !self.node(newparent.0)?.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        let n = self.node(ino.0)?;
        if n.is_dir() {
            return Err(err(libc::EPERM));
        }
        if n.parent.is_none() {
            return Err(enoent());
        }
        if n.nlink == u32::MAX {
            return Err(err(libc::EMLINK));
        }
        if self.child(newparent.0, newname)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        if self.node(ino.0)?.group == 0 {
            let g = self.new_group(ino.0);
            self.node_mut(ino.0)?.group = g;
            self.groups.insert(g, ino.0);
        }
        self.attach(ino.0, newparent.0, newname)?;
        let now = now_ns();
        let n = self.node_mut(ino.0)?;
        n.ctime_ns = now;
        n.lookups += 1;
        self.touch_dir(newparent.0, now)?;
        self.mark_dirty(ino.0);
        self.attr_of(ino.0)
    }

    /// A label for a new hard-link group, unique in practice (64 bits from
    /// the base snapshot, the inode and the time).
    fn new_group(&self, ino: u64) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(b"ds mount hard-link group");
        h.update(&self.base.0);
        h.update(&ino.to_le_bytes());
        h.update(&now_ns().to_le_bytes());
        u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes")).max(1)
    }

    /// `getxattr`: the value, or ENODATA.
    pub fn getxattr(&mut self, ino: Ino, name: &[u8]) -> VResult<Vec<u8>> {
        let n = self.node(ino.0)?;
        n.xattrs
            .binary_search_by(|x| x.name.as_slice().cmp(name))
            .map(|i| n.xattrs[i].value.clone())
            .map_err(|_| err(libc::ENODATA))
    }

    /// `listxattr`: names, each followed by NUL.
    pub fn listxattr(&mut self, ino: Ino) -> VResult<Vec<u8>> {
        let mut out = Vec::new();
        for x in &self.node(ino.0)?.xattrs {
            out.extend_from_slice(&x.name);
            out.push(0);
        }
        Ok(out)
    }

    /// `setxattr` with XATTR_CREATE (`create`) or XATTR_REPLACE (`replace`)
    /// semantics. The kernel has already checked the namespace rules
    /// (`trusted.*` for CAP_SYS_ADMIN, `user.*` on files and directories).
    pub fn setxattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> VResult<()> {
        self.require_rw()?;
        if name.is_empty() || name.contains(&0) || name.len() > tree::MAX_XATTR_NAME {
            return Err(err(libc::ERANGE));
        }
        if value.len() > tree::MAX_XATTR_VALUE {
            return Err(err(libc::E2BIG));
        }
        let n = self.node_mut(ino.0)?;
        match n.xattrs.binary_search_by(|x| x.name.as_slice().cmp(name)) {
            Ok(_) if create => return Err(err(libc::EEXIST)),
            Ok(i) => n.xattrs[i].value = value.to_vec(),
            Err(_) if replace => return Err(err(libc::ENODATA)),
            Err(_) if n.xattrs.len() >= tree::MAX_XATTRS => return Err(err(libc::ENOSPC)),
            Err(i) => n.xattrs.insert(
                i,
                tree::Xattr {
                    name: name.to_vec(),
                    value: value.to_vec(),
                },
            ),
        }
        n.ctime_ns = now_ns();
        self.mark_dirty(ino.0);
        Ok(())
    }

    pub fn removexattr(&mut self, ino: Ino, name: &[u8]) -> VResult<()> {
        self.require_rw()?;
        let n = self.node_mut(ino.0)?;
        let i = n
            .xattrs
            .binary_search_by(|x| x.name.as_slice().cmp(name))
            .map_err(|_| err(libc::ENODATA))?;
        n.xattrs.remove(i);
        n.ctime_ns = now_ns();
        self.mark_dirty(ino.0);
        Ok(())
    }
}
