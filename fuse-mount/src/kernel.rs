//! Talking to the kernel about mounts: creating a FUSE session, finding a
//! mount in /proc/self/mountinfo, and tuning its read-ahead.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ds_store::vfs::Vfs;
use fuser::{Config, MountOption, Session, SessionACL};

use crate::fs::{DsFs, MountOptions};

/// Mounts `vfs` at `mountpoint`. Returns once the kernel has accepted the
/// mount; run the returned session (`Session::run`) to serve it until it is
/// unmounted.
pub fn mount(
    vfs: Arc<Mutex<Vfs>>,
    mountpoint: &Path,
    o: &MountOptions,
) -> io::Result<Session<DsFs>> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(o.fsname.clone()),
        MountOption::Subtype("ds".into()),
        if o.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if o.allow_other {
        cfg.acl = SessionACL::All;
        cfg.mount_options.push(MountOption::DefaultPermissions);
    }
    cfg.n_threads = Some(o.threads.max(1));
    Session::new(DsFs::new(vfs, o.read_only, o.direct_io), mountpoint, &cfg)
}

/// The `major:minor` device of the filesystem mounted exactly at `path`
/// (per /proc/self/mountinfo), if one is.
pub fn mount_device(path: &Path) -> Option<String> {
    let want = path.as_os_str().as_bytes();
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    info.split(|c| *c == b'\n').rev().find_map(|line| {
        let mut f = line.split(|c| *c == b' ');
        let dev = f.nth(2)?;
        let mp = f.nth(1)?;
        (unescape(mp) == want).then(|| String::from_utf8_lossy(dev).into_owned())
    })
}

/// The filesystem type and source of the mount at `path` (mountinfo's
/// fields after ` - `), e.g. `("fuse", "ds:w")`. None: not a mountpoint.
pub fn mount_source(path: &Path) -> Option<(String, String)> {
    let want = path.as_os_str().as_bytes();
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    info.split(|c| *c == b'\n').rev().find_map(|line| {
        let mp = line.split(|c| *c == b' ').nth(4)?;
        if unescape(mp) != want {
            return None;
        }
        let sep = line.windows(3).position(|w| w == b" - ")?;
        let mut f = line[sep + 3..].split(|c| *c == b' ');
        let fstype = String::from_utf8_lossy(f.next()?).into_owned();
        let source = String::from_utf8_lossy(&unescape(f.next()?)).into_owned();
        Some((fstype, source))
    })
}

/// Whether the mount at `path` is one ds made: a FUSE mount whose source
/// is `ds:<workspace or snapshot>` (what [`MountOptions::fsname`] sets).
pub fn is_ds_mount(path: &Path) -> bool {
    mount_source(path).is_some_and(|(t, s)| t.starts_with("fuse") && s.starts_with("ds:"))
}

/// Sets the kernel read-ahead of the FUSE mount at `mountpoint` to `kib`
/// KiB. The kernel starts a FUSE mount at 128 KiB and lets the daemon only
/// lower it at init; every read-ahead window is one request through the
/// daemon, so larger windows cost fewer round trips per byte. Writable by
/// root only (as mergerfs's `readahead` option does).
pub fn set_readahead(mountpoint: &Path, kib: u32) -> io::Result<()> {
    let dev = mount_device(mountpoint)
        .ok_or_else(|| io::Error::other(format!("{} is not mounted", mountpoint.display())))?;
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    std::fs::write(&knob, kib.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("writing {knob}: {e}")))
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_names_are_unescaped() {
        assert_eq!(unescape(br"a\040b\134c"), b"a b\\c");
        assert_eq!(unescape(br"tail\04"), br"tail\04");
    }

    #[test]
    fn mount_device_finds_mounts_only() {
        let root = mount_device(Path::new("/")).expect("/ is a mount");
        assert!(root.contains(':'), "{root:?} is not major:minor");
        let dir = std::env::temp_dir().join(format!("ds-not-a-mount-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(mount_device(&dir), None);
        assert_eq!(mount_source(&dir), None);
        assert!(!is_ds_mount(&dir));
        let (fstype, _) = mount_source(Path::new("/")).expect("/ is a mount");
        assert!(!fstype.is_empty());
        assert!(!is_ds_mount(Path::new("/")));
        std::fs::remove_dir(&dir).unwrap();
    }
}
