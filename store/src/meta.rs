//! What ds records of an inode besides its content, read from and applied
//! to a real filesystem: owners, extended attributes, hard-link groups and
//! special files (FIFOs, sockets, device nodes).
//!
//! Why one module: snapshot and restore must agree exactly on what is read
//! and how it is put back (`rsync -aHAX` is the yardstick), and the order
//! of the calls matters: owner before mode (chown clears set-id bits),
//! attributes before mode (a read-only mode would refuse them to a
//! non-root restore), mtime last (every other change touches ctime only,
//! but creating links and attributes can touch a directory's mtime).
//!
//! All calls act on the path itself, never through a symlink (`l*` calls,
//! `AT_SYMLINK_NOFOLLOW`).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use ds_format::tree::{EntryData, Link, MAX_XATTRS, Owner, Xattr, validate_xattr};
use rustix::fs::{AtFlags, CWD, FileType, Mode, XattrFlags};

/// The kernel's limit on one attribute list or value (XATTR_LIST_MAX,
/// XATTR_SIZE_MAX).
const XATTR_MAX: usize = 65536;

/// Is this process root (may chown to anyone, create device nodes)?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The owner `lstat` reported.
pub fn owner_of(m: &std::fs::Metadata) -> Owner {
    Owner {
        uid: m.uid(),
        gid: m.gid(),
    }
}

/// A label for the hard-link group of `m`, if it has more than one name:
/// derived from the device and inode, so the same file gets the same label
/// in every snapshot taken on this machine (unchanged trees stay
/// deduplicated) and two inodes never share one.
pub fn link_of(m: &std::fs::Metadata) -> Option<Link> {
    if m.is_dir() || m.nlink() < 2 {
        return None;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"ds hard-link group");
    h.update(&m.dev().to_le_bytes());
    h.update(&m.ino().to_le_bytes());
    let b = h.finalize();
    let group = u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes")).max(1);
    Some(Link {
        group,
        nlink: m.nlink().min(u64::from(u32::MAX)) as u32,
    })
}

/// The special-file kind of `m`, or `None` for a file, directory or symlink.
pub fn special_of(m: &std::fs::Metadata) -> Option<EntryData> {
    let ft = m.file_type();
    if ft.is_fifo() {
        Some(EntryData::Fifo)
    } else if ft.is_socket() {
        Some(EntryData::Socket)
    } else if ft.is_char_device() || ft.is_block_device() {
        Some(EntryData::Device {
            block: ft.is_block_device(),
            rdev: m.rdev(),
        })
    } else {
        None
    }
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTSUP) || e.raw_os_error() == Some(libc::ENODATA)
}

/// Reads the extended attributes of `path` (not following a symlink),
/// sorted by name. A filesystem without them gives none; an attribute
/// that vanishes between listing and reading is skipped.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let mut list = vec![0u8; XATTR_MAX];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(e) => {
            let e = io::Error::from(e);
            return if unsupported(&e) {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; XATTR_MAX];
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_s = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
        let len = match rustix::fs::lgetxattr(path, name_s, &mut value[..]) {
            Ok(len) => len,
            Err(e) if e == rustix::io::Errno::NODATA => continue,
            Err(e) => return Err(e.into()),
        };
        validate_xattr(name, &value[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        out.push(Xattr {
            name: name.to_vec(),
            value: value[..len].to_vec(),
        });
    }
    if out.len() > MAX_XATTRS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} extended attributes (ds records at most {MAX_XATTRS})",
                out.len()
            ),
        ));
    }
    out.sort();
    out.dedup_by(|a, b| a.name == b.name);
    Ok(out)
}

/// Like [`read_xattrs`], for entry `name` of the directory open as `dir`:
/// through `/proc/self/fd`, so the path handed to the kernel stays short
/// however deep the directory is (there is no `llistxattrat` to call).
pub fn read_xattrs_at(dir: &impl AsRawFd, name: &[u8]) -> io::Result<Vec<Xattr>> {
    read_xattrs(&at(dir, name))
}

/// A short path naming entry `name` of the directory open as `dir`.
pub fn at(dir: &impl AsRawFd, name: &[u8]) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
    p
}

/// Sets `xattrs` on `path` (not following a symlink).
pub fn write_xattrs(path: &Path, xattrs: &[Xattr]) -> io::Result<()> {
    for x in xattrs {
        let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&x.name);
        rustix::fs::lsetxattr(path, name, &x.value, XattrFlags::empty()).map_err(|e| {
            // std files EOPNOTSUPP under no kind of its own: restore tells
            // "this filesystem holds no xattrs" apart from other failures.
            let kind = if e == rustix::io::Errno::OPNOTSUPP {
                io::ErrorKind::Unsupported
            } else {
                io::Error::from(e).kind()
            };
            io::Error::new(
                kind,
                format!("setting {}: {e}", String::from_utf8_lossy(&x.name)),
            )
        })?;
    }
    Ok(())
}

/// Changes the owner of `path` itself (a symlink's own owner).
pub fn chown(path: &Path, o: Owner) -> io::Result<()> {
    rustix::fs::chownat(
        CWD,
        path,
        Some(rustix::fs::Uid::from_raw(o.uid)),
        Some(rustix::fs::Gid::from_raw(o.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(Into::into)
}

/// Creates the special file `data` at `path` with permission bits `mode`
/// (a device node needs root; a FIFO or socket node does not).
pub fn make_special(path: &Path, data: &EntryData, mode: u32) -> io::Result<()> {
    let (ft, dev) = match data {
        EntryData::Fifo => (FileType::Fifo, 0),
        EntryData::Socket => (FileType::Socket, 0),
        EntryData::Device { block: false, rdev } => (FileType::CharacterDevice, *rdev),
        EntryData::Device { block: true, rdev } => (FileType::BlockDevice, *rdev),
        _ => return Err(io::Error::other("not a special file")),
    };
    rustix::fs::mknodat(CWD, path, ft, Mode::from_raw_mode(mode & 0o777), dev).map_err(Into::into)
}

/// Sets the mtime of `path` itself (a symlink's own), leaving atime alone.
/// Never opens it: opening a FIFO would block until a writer came.
pub fn set_mtime(path: &Path, mtime_ns: i64) -> io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
}

/// Sets the mtime of the file or directory open as `fd`, leaving atime.
pub fn set_mtime_fd(fd: &impl std::os::fd::AsFd, mtime_ns: i64) -> io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    };
    rustix::fs::futimens(fd, &times).map_err(Into::into)
}
