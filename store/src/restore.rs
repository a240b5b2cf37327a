//! Restoring a snapshot (or a subtree of it) into a directory.
//!
//! Safety rules, because a snapshot may come from somebody else:
//! - the target must be absent or an empty directory, so every path ds
//!   creates is new and no existing symlink is ever followed (files are
//!   created with O_EXCL);
//! - names are validated again here (no `..`, `/`, NUL, empty);
//! - a symlink whose target is absolute or climbs out of the target
//!   directory is refused unless the caller allows it; ds never follows one;
//! - a damaged chunk fails only the file that holds it: the partial file is
//!   removed, the error names the file, and the rest is restored.
//!
//! Every entry is made relative to its directory's handle (named as
//! `/proc/self/fd/N/name`, which stays short), so a tree of any depth is
//! restored; the walk runs on big stacks (`deep.rs`).
//!
//! What is put back (see `meta.rs` for the order of the calls): content,
//! modes, mtimes, extended attributes, special files, and — when run as
//! root — owners and device nodes, as `rsync -aHAX` would. The names of a
//! hard-link group become links of one file: the first name to be reached
//! gets the content, the others are linked to it once the whole tree is
//! written (so no link is made to a file still being written), and their
//! directories' mtimes are set again after.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ds_format::ObjectId;
use ds_format::manifest::FileRef;
use ds_format::tree::{DirRef, Entry, EntryData, validate_name};
use rayon::prelude::*;

use crate::meta;
use crate::progress::Progress;
use crate::{IoContext, Result, Store, StoreError};

#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Restore symlinks pointing outside the target (absolute or `..`-climbing).
    pub allow_escaping_symlinks: bool,
    /// Leave files owned by whoever restores (owners are only ever set
    /// when running as root).
    pub no_owners: bool,
    /// Do not set extended attributes.
    pub no_xattrs: bool,
}

/// What a restore did; `errors` lists entries that were refused or failed.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes.
    pub specials: u64,
    /// Names made as hard links to another restored name.
    pub hardlinks: u64,
    pub bytes: u64,
    pub errors: Vec<String>,
    /// What was restored but not whole (said once, not per entry): e.g.
    /// extended attributes on a filesystem that does not hold them.
    pub warnings: Vec<String>,
}

/// An entry by its directory's handle and its name.
type Named = (Arc<OwnedFd>, Vec<u8>);

/// A name of a hard-link group waiting for the group's first name.
struct PendingLink {
    entry: Entry,
    /// The directory it goes in (its handle keeps the name's path valid).
    dir: Arc<OwnedFd>,
    rel: PathBuf,
    depth: usize,
    /// That directory's mtime, set again after the link is made (none for
    /// the top directory, which no entry describes).
    dir_mtime: Option<i64>,
}

struct Ctx<'a> {
    store: &'a Store,
    opts: RestoreOptions,
    progress: &'a Progress,
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    specials: AtomicU64,
    hardlinks: AtomicU64,
    bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Entries whose extended attributes the target filesystem refused as
    /// unsupported (then no more are tried).
    xattrs_unsupported: AtomicU64,
    /// Owners are set only by root (anyone else may not give files away).
    owners: bool,
    /// Running as root (may set trusted.* and security.* attributes).
    root: bool,
    /// Each hard-link group's first name (its directory and name), once
    /// claimed.
    groups: Mutex<HashMap<u64, Named>>,
    pending: Mutex<Vec<PendingLink>>,
}

/// Does `target`, for a link at depth `depth` (directories below the restore
/// root), resolve lexically inside the root?
pub fn symlink_stays_inside(target: &[u8], depth: usize) -> bool {
    if target.first() == Some(&b'/') {
        return false;
    }
    let mut level = depth as i64;
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                level -= 1;
                if level < 0 {
                    return false;
                }
            }
            _ => level += 1,
        }
    }
    true
}

/// Restores the tree `root` into `dest`.
pub fn restore(
    store: &Store,
    root: &DirRef,
    dest: &Path,
    opts: RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport> {
    match fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(StoreError::BadInput(format!(
                    "{} is not empty; restore into a new or empty directory",
                    dest.display()
                )));
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => fs::create_dir(dest).at(dest)?,
        Err(e) => return Err(e).at(dest),
    }
    let ctx = Ctx {
        store,
        opts,
        progress,
        files: AtomicU64::new(0),
        dirs: AtomicU64::new(0),
        symlinks: AtomicU64::new(0),
        specials: AtomicU64::new(0),
        hardlinks: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        xattrs_unsupported: AtomicU64::new(0),
        owners: !opts.no_owners && meta::is_root(),
        root: meta::is_root(),
        groups: Mutex::new(HashMap::new()),
        pending: Mutex::new(Vec::new()),
    };
    let top = Arc::new(OwnedFd::from(fs::File::open(dest).at(dest)?));
    crate::deep::run(|| ctx.dir(root, &top, Path::new(""), 0, None))?;
    ctx.link_pending()?;
    Ok(RestoreReport {
        files: ctx.files.into_inner(),
        dirs: ctx.dirs.into_inner(),
        symlinks: ctx.symlinks.into_inner(),
        specials: ctx.specials.into_inner(),
        hardlinks: ctx.hardlinks.into_inner(),
        bytes: ctx.bytes.into_inner(),
        errors: ctx.errors.into_inner().expect("poisoned"),
        warnings: match ctx.xattrs_unsupported.into_inner() {
            0 => Vec::new(),
            n => vec![format!(
                "{} does not support extended attributes: those of {n} entries were not \
                 restored (--no-xattrs says not to try)",
                dest.display()
            )],
        },
    })
}

/// Opens directory `name` in the directory open as `dir`, not following a
/// symlink put there meanwhile.
fn open_dir_at(dir: &OwnedFd, name: &[u8]) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        std::ffi::OsStr::from_bytes(name),
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(Into::into)
}

/// Restores a single file entry's content to `dest` (which must not exist).
///
/// Runs of zeros of at least a page (what a sparse file's holes read as,
/// and any other zero run) are left as holes rather than written, as
/// `cp --sparse=auto` does: a 50 GiB sparse file restores as a sparse file,
/// and a chunk seen to be zeros once is not read again for that file.
pub fn restore_file(store: &Store, file: &FileRef, dest: &Path) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .at(dest)?;
    let r = write_sparse(store, file, &f, dest);
    if r.is_err() {
        let _ = fs::remove_file(dest);
    }
    r
}

fn write_sparse(store: &Store, file: &FileRef, f: &fs::File, dest: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut zeros: HashSet<ObjectId> = HashSet::new();
    let mut pos = 0u64;
    store.for_each_chunk(file, &mut |id, _, len| {
        if !zeros.contains(&id) {
            let data = store.read_chunk(&id, len)?;
            if data.len() >= 4096 && data.iter().all(|b| *b == 0) {
                zeros.insert(id);
            } else {
                f.write_all_at(&data, pos).at(dest)?;
            }
        }
        pos += len;
        Ok(())
    })?;
    // A file that ends in a hole gets its length here.
    f.set_len(pos).at(dest)
}

impl Ctx<'_> {
    fn fail(&self, rel: &Path, why: impl std::fmt::Display) {
        self.errors
            .lock()
            .expect("poisoned")
            .push(format!("{}: {why}", rel.display()));
    }

    /// Restores directory `d` into `out`; `here` is `out`'s own entry (its
    /// mtime is set again after hard links are made into it).
    fn dir(
        &self,
        d: &DirRef,
        out: &Arc<OwnedFd>,
        rel: &Path,
        depth: usize,
        here: Option<i64>,
    ) -> Result<()> {
        let entries = self.store.dir_entries(d)?;
        let subdirs: Vec<(Entry, PathBuf, PathBuf)> = entries
            .into_par_iter()
            .filter_map(|e| {
                let name = std::ffi::OsStr::from_bytes(&e.name);
                let r = rel.join(name);
                if let Err(err) = validate_name(&e.name) {
                    self.fail(&r, format!("refused: {err}"));
                    return None;
                }
                // Named through the directory's handle: short however deep.
                let path = meta::at(&**out, &e.name);
                match self.entry(&e, (out, here), &path, &r, depth) {
                    Ok(true) => Some(Ok((e, path, r))),
                    Ok(false) => None,
                    Err(err) => Some(Err(err)),
                }
            })
            .collect::<Result<_>>()?;
        // Directories: recurse, then set mode and mtime after their content.
        subdirs
            .into_par_iter()
            .try_for_each(|(e, path, r)| -> Result<()> {
                let EntryData::Dir(sub) = &e.data else {
                    return Ok(());
                };
                let handle = match open_dir_at(out, &e.name) {
                    Ok(h) => Arc::new(h),
                    Err(err) => {
                        self.fail(&r, format!("directory not restored: {err}"));
                        return Ok(());
                    }
                };
                match self.dir(sub, &handle, &r, depth + 1, Some(e.mtime_ns)) {
                    Ok(()) => {}
                    Err(
                        err @ (StoreError::Damaged { .. }
                        | StoreError::Missing { .. }
                        | StoreError::DamagedPack { .. }
                        | StoreError::Format(_)),
                    ) => {
                        self.fail(&r, format!("directory not fully restored: {err}"));
                    }
                    Err(err) => return Err(err),
                }
                self.finish_meta(&e, &path, &r);
                Ok(())
            })
    }

    /// Creates one entry; returns true for directories (content done later).
    /// `dir`: the directory it goes in, and that directory's mtime.
    fn entry(
        &self,
        e: &Entry,
        (dir, dir_mtime): (&Arc<OwnedFd>, Option<i64>),
        path: &Path,
        rel: &Path,
        depth: usize,
    ) -> Result<bool> {
        if let Some(l) = e.link {
            let mut groups = self.groups.lock().expect("poisoned");
            if groups.contains_key(&l.group) {
                self.pending.lock().expect("poisoned").push(PendingLink {
                    entry: e.clone(),
                    dir: dir.clone(),
                    rel: rel.to_path_buf(),
                    depth,
                    dir_mtime,
                });
                return Ok(false);
            }
            groups.insert(l.group, (dir.clone(), e.name.clone()));
        }
        self.create(e, path, rel, depth)
    }

    /// Creates one entry (not as a link).
    fn create(&self, e: &Entry, path: &Path, rel: &Path, depth: usize) -> Result<bool> {
        match &e.data {
            EntryData::Dir(_) => {
                if let Err(err) = fs::create_dir(path) {
                    self.fail(rel, err);
                    return Ok(false);
                }
                self.dirs.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            EntryData::File(f) => {
                match restore_file(self.store, f, path) {
                    Ok(()) => {
                        self.files.fetch_add(1, Ordering::Relaxed);
                        self.bytes.fetch_add(f.size, Ordering::Relaxed);
                        self.progress.add(1, f.size);
                        self.finish_meta(e, path, rel);
                    }
                    Err(
                        err @ (StoreError::Io { .. }
                        | StoreError::Damaged { .. }
                        | StoreError::Missing { .. }
                        | StoreError::DamagedPack { .. }
                        | StoreError::Format(_)),
                    ) => {
                        self.fail(rel, format!("not restored: {err}"));
                    }
                    Err(err) => return Err(err),
                }
                Ok(false)
            }
            EntryData::Symlink(t) => {
                if !self.opts.allow_escaping_symlinks && !symlink_stays_inside(t, depth) {
                    self.fail(
                        rel,
                        format!(
                            "refused: symlink to {:?} points outside the restore target \
                             (use --allow-escaping-symlinks to restore it anyway)",
                            String::from_utf8_lossy(t)
                        ),
                    );
                    return Ok(false);
                }
                if let Err(err) = symlink(std::ffi::OsStr::from_bytes(t), path) {
                    self.fail(rel, err);
                    return Ok(false);
                }
                self.owner_and_xattrs(e, path, rel);
                if let Err(err) = meta::set_mtime(path, e.mtime_ns) {
                    self.fail(rel, format!("mtime: {err}"));
                }
                self.symlinks.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
            data => {
                if let Err(err) = meta::make_special(path, data, e.mode) {
                    let hint = if matches!(data, EntryData::Device { .. }) && !meta::is_root() {
                        " (device nodes need root)"
                    } else {
                        ""
                    };
                    self.fail(
                        rel,
                        format!("{} not restored: {err}{hint}", data.kind_name()),
                    );
                    return Ok(false);
                }
                self.specials.fetch_add(1, Ordering::Relaxed);
                self.finish_meta(e, path, rel);
                Ok(false)
            }
        }
    }

    fn owner_and_xattrs(&self, e: &Entry, path: &Path, rel: &Path) {
        if self.owners
            && let Some(o) = e.owner
            && let Err(err) = meta::chown(path, o)
        {
            self.fail(rel, format!("owner: {err}"));
        }
        if !self.opts.no_xattrs
            && !e.xattrs.is_empty()
            && self.xattrs_unsupported.load(Ordering::Relaxed) > 0
        {
            self.xattrs_unsupported.fetch_add(1, Ordering::Relaxed);
        } else if !self.opts.no_xattrs && !e.xattrs.is_empty() {
            // Only root may set trusted.* and security.* attributes; anyone
            // else restores the user.* ones (as rsync -X does), and the
            // rest are not errors.
            let settable: Vec<_> = e
                .xattrs
                .iter()
                .filter(|x| {
                    self.root
                        || !(x.name.starts_with(b"trusted.") || x.name.starts_with(b"security."))
                })
                .cloned()
                .collect();
            match meta::write_xattrs(path, &settable) {
                Ok(()) => {}
                // The filesystem holds none (tmpfs without user xattrs,
                // some network filesystems): one warning for them all.
                Err(err) if err.kind() == std::io::ErrorKind::Unsupported => {
                    self.xattrs_unsupported.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => self.fail(rel, format!("extended attributes: {err}")),
            }
        }
    }

    /// Links the waiting names of hard-link groups to their group's first
    /// name; a name whose first name failed is restored on its own.
    fn link_pending(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("poisoned"));
        let groups = self.groups.lock().expect("poisoned").clone();
        let mut dirs: HashMap<i32, (Arc<OwnedFd>, i64, PathBuf)> = HashMap::new();
        for p in pending {
            let group = p.entry.link.expect("linked").group;
            let (first_dir, first_name) = &groups[&group];
            let path = meta::at(&*p.dir, &p.entry.name);
            match fs::hard_link(meta::at(&**first_dir, first_name), &path) {
                Ok(()) => {
                    self.hardlinks.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    // The first name was not restored (refused or damaged).
                    self.create(&p.entry, &path, &p.rel, p.depth)?;
                }
                Err(e) => {
                    self.fail(
                        &p.rel,
                        format!(
                            "hard link to another name of it ({}): {e}",
                            String::from_utf8_lossy(first_name)
                        ),
                    );
                    continue;
                }
            }
            if let Some(t) = p.dir_mtime {
                let rel = p.rel.parent().map(Path::to_path_buf).unwrap_or_default();
                dirs.insert(p.dir.as_raw_fd(), (p.dir.clone(), t, rel));
            }
        }
        for (d, t, rel) in dirs.into_values() {
            if let Err(err) = meta::set_mtime_fd(&d, t) {
                self.fail(&rel, format!("mtime: {err}"));
            }
        }
        Ok(())
    }

    fn finish_meta(&self, e: &Entry, path: &Path, rel: &Path) {
        self.owner_and_xattrs(e, path, rel);
        if let Err(err) = fs::set_permissions(path, fs::Permissions::from_mode(e.mode)) {
            self.fail(rel, format!("mode: {err}"));
        }
        if let Err(err) = meta::set_mtime(path, e.mtime_ns) {
            self.fail(rel, format!("mtime: {err}"));
        }
    }
}

/// Writes to an arbitrary writer (used by `ds cat`).
pub fn cat(store: &Store, file: &FileRef, out: &mut dyn Write) -> Result<()> {
    store.read_file(file, out)
}

#[cfg(test)]
mod tests {
    use super::symlink_stays_inside as inside;

    #[test]
    fn symlink_escape_rules() {
        assert!(inside(b"a/b", 0));
        assert!(inside(b"../x", 1));
        assert!(!inside(b"../x", 0));
        assert!(!inside(b"/etc/passwd", 3));
        assert!(!inside(b"a/../../x", 0));
        assert!(inside(b"./a/./b/..", 0));
    }
}
