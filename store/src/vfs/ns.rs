//! Namespace operations: lookup, listing, creating, removing, renaming and
//! changing attributes. Every change marks the paths it touches dirty.

use ds_format::manifest::FileRef;
use ds_format::tree::validate_name;

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
                let kind = match n.content {
                    Content::Dir(_) => Kind::Dir,
                    Content::File(_) => Kind::File,
                    Content::Symlink(_) => Kind::Symlink,
                };
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
        let ino = self.alloc(Node {
            parent: Some(parent.0),
            name: name.to_vec(),
            content,
            mode: mode & 0o7777,
            uid,
            gid,
            mtime_ns: now,
            ctime_ns: now,
            atime_ns: now,
            dirty: true,
            lookups: 1,
            opens: 0,
        });
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

    /// Takes `name` out of `parent`; the node lives on while referenced.
    fn detach(&mut self, parent: u64, name: &[u8]) -> VResult<u64> {
        let ino = self.children(parent)?.remove(name).ok_or_else(enoent)?;
        let now = now_ns();
        self.touch_dir(parent, now)?;
        let n = self.node_mut(ino)?;
        n.parent = None;
        n.ctime_ns = now;
        Ok(ino)
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
            for (i, p, n) in [(dst, parent.0, name), (src, newparent.0, newname)] {
                let node = self.node_mut(i)?;
                node.parent = Some(p);
                node.name = n.to_vec();
            }
            let now = now_ns();
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
        self.detach(parent.0, name)?;
        self.children(newparent.0)?.insert(newname.to_vec(), src);
        let now = now_ns();
        let n = self.node_mut(src)?;
        n.parent = Some(newparent.0);
        n.name = newname.to_vec();
        n.ctime_ns = now;
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
        let n = self.node_mut(ino.0)?;
        if let Some(m) = s.mode {
            n.mode = m & 0o7777;
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

    /// Hard links are not supported (ds records none): EPERM, after the
    /// checks POSIX puts first (a bad or taken new name, a read-only mount).
    pub fn link(&mut self, _ino: Ino, newparent: Ino, newname: &[u8]) -> VResult<Attr> {
        self.require_rw()?;
        check_name(newname)?;
        if self.child(newparent.0, newname)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        Err(err(libc::EPERM))
    }
}
