//! The kernel-facing filesystem: each FUSE request becomes a VFS call,
//! each VFS error an errno. Per-open directory listings live here, so a
//! large directory is listed once per `opendir`, not once per `readdir`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ds_store::vfs::{self, Attr, Fh, Ino, Kind, SetAttr, Vfs, VfsError};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub read_only: bool,
    /// Let other users in (`allow_other`), with the kernel checking
    /// permissions from the attributes (`default_permissions`), so a
    /// container's user can work in the mount.
    pub allow_other: bool,
    /// Kernel request worker threads.
    pub threads: usize,
    /// Shown as the filesystem's source in /proc/mounts.
    pub fsname: String,
    /// Bypass the page cache for file contents (read-only mounts only).
    pub direct_io: bool,
}

/// One open directory's listing: (inode, type, name), `.` and `..` first.
type Listing = Vec<(u64, FileType, Vec<u8>)>;

/// The kernel-facing filesystem.
#[derive(Debug)]
pub struct DsFs {
    vfs: Arc<Mutex<Vfs>>,
    read_only: bool,
    direct_io: bool,
    ttl: Duration,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_dir: AtomicU64,
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.mtime_ns),
        kind: kind(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        // The kernel's 32-bit encoding (what stat's st_rdev holds
        // through FUSE): major in bits 8–19, minor in 0–7 and 20–31.
        rdev: a.rdev as u32,
        blksize: 65536,
        flags: 0,
    }
}

/// Logs what the kernel cannot carry (it only gets the errno).
fn errno(e: VfsError) -> Errno {
    if let Some(d) = &e.detail {
        eprintln!("ds mount: error: {d}");
    }
    Errno::from_i32(e.errno)
}

fn name(n: &OsStr) -> &[u8] {
    n.as_bytes()
}

impl DsFs {
    pub fn new(vfs: Arc<Mutex<Vfs>>, read_only: bool, direct_io: bool) -> DsFs {
        DsFs {
            vfs,
            read_only,
            direct_io: read_only && direct_io,
            ttl: Duration::from_secs(1),
            dirs: Mutex::new(HashMap::new()),
            next_dir: AtomicU64::new(1),
        }
    }

    fn v(&self) -> MutexGuard<'_, Vfs> {
        self.vfs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, r: vfs::VResult<Attr>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Answers a getxattr/listxattr: the size when asked for it (`size` 0),
    /// the bytes if they fit, else ERANGE.
    fn xattr(r: vfs::VResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(Errno::from_i32(libc::ERANGE)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn empty(r: vfs::VResult<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl Filesystem for DsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Larger kernel read-ahead and writes mean fewer round trips; the
        // kernel answers with the nearest value it accepts.
        let _ = config
            .set_max_readahead(1 << 20)
            .or_else(|n| config.set_max_readahead(n));
        let _ = config
            .set_max_write(1 << 20)
            .or_else(|n| config.set_max_write(n));
        if self.direct_io
            && config
                .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_err()
        {
            eprintln!(
                "ds mount: warning: this kernel cannot mmap direct-I/O files (needs Linux >= 6.6); \
                 mmap on this mount will fail"
            );
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.v().checkpoint() {
            eprintln!("ds mount: error: saving the dirty layer at unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let r = self.v().lookup(Ino(parent.0), name(n));
        self.entry(r, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.v().forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.v().getattr(Ino(ino.0)) {
            Ok(a) => reply.attr(&self.ttl, &attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime_ns: atime.map(ns),
            mtime_ns: mtime.map(ns),
        };
        match self.v().setattr(Ino(ino.0), s) {
            Ok(a) => reply.attr(&self.ttl, &attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.v().readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (p, n, uid, gid) = (Ino(parent.0), name(n), req.uid(), req.gid());
        let r = match mode & libc::S_IFMT {
            libc::S_IFREG => self.v().mknod_file(p, n, mode, uid, gid),
            _ => self
                .v()
                .mknod_special(p, n, mode, u64::from(rdev), uid, gid),
        };
        self.entry(r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .v()
            .mkdir(Ino(parent.0), name(n), mode, req.uid(), req.gid());
        self.entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.v().unlink(Ino(parent.0), name(n)), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.v().rmdir(Ino(parent.0), name(n)), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.v().symlink(
            Ino(parent.0),
            name(link_name),
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        );
        self.entry(r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let f = vfs::RenameFlags {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let r = self
            .v()
            .rename(Ino(parent.0), name(n), Ino(newparent.0), name(newname), f);
        Self::empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.v().link(Ino(ino.0), Ino(newparent.0), name(newname));
        self.entry(r, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let trunc = flags.0 & libc::O_TRUNC != 0;
        match self.v().open(Ino(ino.0), write, trunc) {
            Ok(fh) => {
                let f = if self.direct_io {
                    FopenFlags::FOPEN_DIRECT_IO
                } else if self.read_only {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh.0), f)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        thread_local! {
            // One reply buffer per worker thread, reused: a fresh 1 MiB
            // vector per read would fault in its pages every time.
            static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let plan = self.v().read_plan(Fh(fh.0), offset, size);
        OUT.with(|out| {
            let mut out = out.borrow_mut();
            // Bytes lying back to back in a mapped pack go to the kernel
            // straight from the map; only others are gathered into `out`.
            let mut reply = Some(reply);
            let sent = plan.and_then(|p| {
                p.execute_with(&mut out, |bytes| {
                    if let Some(r) = reply.take() {
                        r.data(bytes);
                    }
                })
            });
            if let (Err(e), Some(r)) = (sent, reply) {
                r.error(errno(e));
            }
        })
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.v().write(Fh(fh.0), offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.v().release(Fh(fh.0));
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(self.v().fsync(Ino(ino.0)), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut v = self.v();
        let listed = v.readdir(Ino(ino.0));
        let parent = v.parent_of(Ino(ino.0));
        drop(v);
        match listed {
            Ok(es) => {
                let mut all = vec![
                    (ino.0, FileType::Directory, b".".to_vec()),
                    (parent.0, FileType::Directory, b"..".to_vec()),
                ];
                all.extend(es.into_iter().map(|e| (e.ino.0, kind(e.kind), e.name)));
                let h = self.next_dir.fetch_add(1, Ordering::Relaxed);
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(h, all);
                reply.opened(FileHandle(h), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(es) = dirs.get(&fh.0) else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        for (i, (ino, k, n)) in es.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *k, OsStr::from_bytes(n)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(self.v().fsync(Ino(ino.0)), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.v().base_stats();
        // Space is whatever the store's disk has; report plenty, and the
        // snapshot's size as used.
        let bsize = 4096u64;
        let used = s.bytes.div_ceil(bsize);
        let total = used + (1 << 30);
        reply.statfs(
            total,
            1 << 30,
            1 << 30,
            s.files + s.dirs + s.symlinks + (1 << 20),
            1 << 20,
            bsize as u32,
            ds_store::vfs::NAME_MAX as u32,
            bsize as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (create, replace) = (
            flags & libc::XATTR_CREATE != 0,
            flags & libc::XATTR_REPLACE != 0,
        );
        let r = self
            .v()
            .setxattr(Ino(ino.0), name(n), value, create, replace);
        Self::empty(r, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.v().getxattr(Ino(ino.0), name(n));
        Self::xattr(r, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self.v().listxattr(Ino(ino.0));
        Self::xattr(r, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.v().removexattr(Ino(ino.0), name(n)), reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions) when other
        // users are let in; the owner may do anything.
        Self::empty(self.v().getattr(Ino(ino.0)).map(|_| ()), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self
            .v()
            .create(Ino(parent.0), name(n), mode, req.uid(), req.gid());
        match r {
            Ok((a, fh)) => reply.created(
                &self.ttl,
                &attr(&a),
                Generation(0),
                FileHandle(fh.0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }
}
