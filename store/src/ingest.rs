//! Snapshotting a directory: walk, chunk, hash, deduplicate, write.
//!
//! Why it is shaped this way: the goal is to run at the speed of chunking and
//! hashing, not of any one stage. Directories are walked in parallel (rayon,
//! one task per entry, results kept in name order); a large file is read in
//! big buffers, cut by FastCDC on the reading thread and its chunks hashed
//! and compressed in parallel; the chunks are handed to the pack writer as
//! ranges of the shared read buffer, never copied. Files whose size, mtime,
//! ctime, inode and device match the stat cache are not read at all.
//!
//! What is recorded: regular files, directories, symlinks, FIFOs, sockets
//! and device nodes, with permission bits (set-id and sticky included),
//! mtimes, owners and extended attributes (see `meta.rs`). Every name of a
//! hard-linked inode is recorded with the same link group, and its content
//! is read once. A file that changes while
//! being read is read again (up to three times) and otherwise stored as last
//! read, with a warning, and kept out of the stat cache. Unreadable entries
//! are skipped with a warning; the snapshot still completes. Every entry is
//! opened relative to its directory's handle (`openat` with O_NOFOLLOW),
//! never by path, so a tree deeper than PATH_MAX is walked whole, and the
//! walk runs on big stacks (`deep.rs`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ds_format::manifest::FileRef;
use ds_format::snapshot::{Snapshot, SnapshotStats};
use ds_format::tree::{DirBuilder, DirRef, Entry, EntryData};

use crate::meta;
use ds_format::{ObjectId, ObjectKind};
use rayon::prelude::*;
use rustix::fs::{Dir, OFlags};

use crate::index::StatEntry;
use crate::progress::Progress;
use crate::refs::validate_workspace;
use crate::txn::{NewSnapshot, Target, Transaction, now_ns};
use crate::writer::{PackWriter, Payload, WriteStats};
use crate::{IoContext, Result, Store, StoreError};

/// What to record with a snapshot.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    pub workspace: String,
    pub message: String,
    pub metadata: BTreeMap<String, String>,
    /// Read every file even when the stat cache says it is unchanged.
    pub no_cache: bool,
    /// Runs this snapshot records.
    pub runs: Vec<ds_format::run::Run>,
}

/// What a snapshot did.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    pub id: ObjectId,
    pub snapshot: Snapshot,
    pub parent: Option<ObjectId>,
    pub files_read: u64,
    pub files_cached: u64,
    pub bytes_read: u64,
    pub written: WriteStats,
    pub warnings: Vec<String>,
}

struct Ingest<'a> {
    store: &'a Store,
    writer: PackWriter,
    progress: &'a Progress,
    no_cache: bool,
    /// Files modified after this are not cached (racy-clean protection).
    cache_before_ns: i64,
    buf_size: usize,
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    bytes: AtomicU64,
    files_read: AtomicU64,
    files_cached: AtomicU64,
    bytes_read: AtomicU64,
    warnings: Mutex<Vec<String>>,
    /// Content of hard-linked inodes already read, by (device, inode).
    linked: Mutex<HashMap<(u64, u64), FileRef>>,
}

fn mtime_ns(m: &Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

fn ctime_ns(m: &Metadata) -> i64 {
    m.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.ctime_nsec())
}

/// Snapshots the directory at `path` into workspace `opts.workspace` and moves
/// the workspace's ref to it.
pub fn snapshot(
    store: &Store,
    path: &Path,
    opts: &SnapshotOptions,
    progress: &Progress,
) -> Result<SnapshotReport> {
    store.require_write()?;
    validate_workspace(&opts.workspace)?;
    let root = fs::canonicalize(path).at(path)?;
    let meta = fs::metadata(&root).at(&root)?;
    if !meta.is_dir() {
        return Err(StoreError::BadInput(format!(
            "{} is not a directory (ds snapshots directories)",
            root.display()
        )));
    }
    if root.starts_with(store.root()) || store.root().starts_with(&root) {
        return Err(StoreError::BadInput(format!(
            "{} overlaps the store at {}; snapshot a directory outside the store",
            root.display(),
            store.root().display()
        )));
    }
    let parent = store.refs().get(&opts.workspace)?;
    let txn = Transaction::begin(Target::Borrowed(store))?;
    let started = now_ns();
    let ing = Ingest {
        store,
        writer: txn.writer().clone(),
        progress,
        no_cache: opts.no_cache,
        cache_before_ns: started - 1_000_000_000,
        buf_size: crate::stream::buf_size(store.chunker()),
        files: AtomicU64::new(0),
        dirs: AtomicU64::new(0),
        symlinks: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        files_read: AtomicU64::new(0),
        files_cached: AtomicU64::new(0),
        bytes_read: AtomicU64::new(0),
        warnings: Mutex::new(Vec::new()),
        linked: Mutex::new(HashMap::new()),
    };
    let dir = File::open(&root).at(&root)?;
    let tree = crate::deep::run(|| ing.dir(&root, dir.into()))?;
    let (id, snap) = txn.put_snapshot(NewSnapshot {
        root: tree,
        parent,
        workspace: opts.workspace.clone(),
        source: root.as_os_str().as_bytes().to_vec(),
        message: opts.message.clone(),
        metadata: opts.metadata.clone(),
        stats: SnapshotStats {
            files: ing.files.load(Ordering::Relaxed),
            dirs: ing.dirs.load(Ordering::Relaxed) + 1,
            symlinks: ing.symlinks.load(Ordering::Relaxed),
            bytes: ing.bytes.load(Ordering::Relaxed),
        },
        time_ns: Some(started),
        runs: opts.runs.clone(),
    })?;
    let Ingest {
        writer: w,
        files_read,
        files_cached,
        bytes_read,
        warnings,
        ..
    } = ing;
    drop(w);
    // The durability barriers (packs, index and stat cache, then the ref).
    let written = txn.commit(&opts.workspace, parent, id)?;
    Ok(SnapshotReport {
        id,
        snapshot: snap,
        parent,
        files_read: files_read.into_inner(),
        files_cached: files_cached.into_inner(),
        bytes_read: bytes_read.into_inner(),
        written,
        warnings: warnings.into_inner().expect("poisoned"),
    })
}

/// Opens `name` in the directory open as `dir`, never following a symlink.
fn open_at(dir: &OwnedFd, name: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(Into::into)
}

/// An I/O problem with one entry: reported and skipped, not fatal.
type EntryResult<T> = Result<std::result::Result<T, io::Error>>;

impl Ingest<'_> {
    fn warn(&self, path: &Path, what: impl std::fmt::Display) {
        self.warnings
            .lock()
            .expect("poisoned")
            .push(format!("{}: {what}", path.display()));
    }

    fn emit(&self, kind: ObjectKind) -> impl FnMut(ObjectId, Vec<u8>) + '_ {
        move |id, bytes| {
            // A failed writer also fails every later chunk put (which is
            // propagated) and `WriterSession::finish`, so nothing is lost here.
            let _ = self.writer.put(kind, id, Payload::Owned(bytes));
        }
    }

    /// Snapshots the directory open as `dir` (at `path`, which names it in
    /// warnings and keys the stat cache; no system call is given it).
    fn dir(&self, path: &Path, dir: OwnedFd) -> Result<DirRef> {
        let mut names: Vec<(Vec<u8>, PathBuf)> = Vec::new();
        match Dir::read_from(&dir) {
            Ok(list) => {
                for e in list {
                    match e {
                        Ok(e) => {
                            let name = e.file_name().to_bytes();
                            if name != b"." && name != b".." {
                                let p = path.join(OsStr::from_bytes(name));
                                names.push((name.to_vec(), p));
                            }
                        }
                        Err(err) => {
                            self.warn(path, format!("listing failed part-way: {err}"));
                            break;
                        }
                    }
                }
            }
            Err(err) => self.warn(path, format!("not listed: {err}")),
        }
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let entries: Vec<Option<Entry>> = names
            .into_par_iter()
            .map(|(name, p)| self.entry(&dir, name, &p))
            .collect::<Result<_>>()?;
        let mut b = DirBuilder::default();
        let mut emit = self.emit(ObjectKind::DirNode);
        for e in entries.into_iter().flatten() {
            b.push(e, &mut emit)?;
        }
        Ok(b.finish(&mut emit))
    }

    /// One entry `name` of the directory open as `parent`: opened relative
    /// to it, never by path, so a tree of any depth is walked, and a name
    /// swapped for a symlink meanwhile is never followed.
    fn entry(&self, parent: &OwnedFd, name: Vec<u8>, path: &Path) -> Result<Option<Entry>> {
        let meta = match open_at(parent, &name, OFlags::PATH).and_then(|f| File::from(f).metadata())
        {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.warn(path, "vanished while snapshotting; skipped");
                return Ok(None);
            }
            Err(e) => {
                self.warn(path, format!("{e}; skipped"));
                return Ok(None);
            }
        };
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let mtime = mtime_ns(&meta);
        let data = if ft.is_dir() {
            let dir = match open_at(parent, &name, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(d) => d,
                Err(e) => {
                    self.warn(path, format!("{e}; directory skipped"));
                    return Ok(None);
                }
            };
            let d = self.dir(path, dir)?;
            self.dirs.fetch_add(1, Ordering::Relaxed);
            EntryData::Dir(d)
        } else if ft.is_file() {
            match self.file(parent, &name, path, &meta)? {
                Ok(f) => {
                    self.files.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(f.size, Ordering::Relaxed);
                    EntryData::File(f)
                }
                Err(e) => {
                    self.warn(path, format!("{e}; file skipped"));
                    return Ok(None);
                }
            }
        } else if ft.is_symlink() {
            match rustix::fs::readlinkat(parent, OsStr::from_bytes(&name), Vec::new()) {
                Ok(t) => {
                    self.symlinks.fetch_add(1, Ordering::Relaxed);
                    EntryData::Symlink(t.into_bytes())
                }
                Err(e) => {
                    self.warn(path, format!("{e}; symlink skipped"));
                    return Ok(None);
                }
            }
        } else if let Some(special) = meta::special_of(&meta) {
            // Counted with files: they are names with no content.
            self.files.fetch_add(1, Ordering::Relaxed);
            special
        } else {
            self.warn(path, "unknown file type: not recorded");
            return Ok(None);
        };
        let xattrs = match meta::read_xattrs_at(parent, &name) {
            Ok(x) => x,
            Err(e) => {
                self.warn(path, format!("extended attributes not recorded: {e}"));
                Vec::new()
            }
        };
        Ok(Some(Entry {
            name,
            mode,
            mtime_ns: mtime,
            owner: Some(meta::owner_of(&meta)),
            xattrs,
            link: meta::link_of(&meta),
            data,
        }))
    }

    /// A file's content; a hard-linked inode's is read once, whichever of
    /// its names comes first.
    fn file(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        path: &Path,
        meta: &Metadata,
    ) -> EntryResult<FileRef> {
        if meta.nlink() < 2 {
            return self.file_content(parent, name, path, meta);
        }
        let key = (meta.dev(), meta.ino());
        if let Some(f) = self.linked.lock().expect("poisoned").get(&key) {
            self.progress.add(1, 0);
            return Ok(Ok(*f));
        }
        let r = self.file_content(parent, name, path, meta)?;
        if let Ok(f) = &r {
            self.linked.lock().expect("poisoned").insert(key, *f);
        }
        Ok(r)
    }

    fn file_content(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        path: &Path,
        meta: &Metadata,
    ) -> EntryResult<FileRef> {
        let key = path.as_os_str().as_bytes();
        if !self.no_cache
            && let Some(c) = self.store.index().stat_get(key)?
            && c.size == meta.len()
            && c.mtime_ns == mtime_ns(meta)
            && c.ctime_ns == ctime_ns(meta)
            && c.ino == meta.ino()
            && c.dev == meta.dev()
            && self.store.index().has_content(&c.file)?
        {
            self.files_cached.fetch_add(1, Ordering::Relaxed);
            self.progress.add(1, c.size);
            return Ok(Ok(c.file));
        }
        let mut last = None;
        for _ in 0..3 {
            let mut f = match open_at(parent, name, OFlags::RDONLY) {
                Ok(f) => File::from(f),
                Err(e) => return Ok(Err(e)),
            };
            let before = match f.metadata() {
                Ok(m) => m,
                Err(e) => return Ok(Err(e)),
            };
            let fr = match self.read_file(&mut f, before.len())? {
                Ok(fr) => fr,
                Err(e) => return Ok(Err(e)),
            };
            let after = match f.metadata() {
                Ok(m) => m,
                Err(e) => return Ok(Err(e)),
            };
            let stable = after.len() == fr.size
                && before.len() == fr.size
                && mtime_ns(&before) == mtime_ns(&after)
                && ctime_ns(&before) == ctime_ns(&after);
            self.files_read.fetch_add(1, Ordering::Relaxed);
            if stable {
                if mtime_ns(&after).max(ctime_ns(&after)) < self.cache_before_ns {
                    self.store.index().stat_put(
                        key,
                        &StatEntry {
                            size: after.len(),
                            mtime_ns: mtime_ns(&after),
                            ctime_ns: ctime_ns(&after),
                            ino: after.ino(),
                            dev: after.dev(),
                            file: fr,
                        },
                    )?;
                }
                return Ok(Ok(fr));
            }
            last = Some(fr);
        }
        self.warn(
            path,
            "changed while being read (3 attempts); stored as last read",
        );
        Ok(Ok(last.expect("three attempts")))
    }

    /// Reads, chunks, hashes and stores one open file.
    fn read_file(&self, f: &mut File, size_hint: u64) -> EntryResult<FileRef> {
        let r = crate::stream::store_stream(
            &self.writer,
            self.store.chunker(),
            f,
            size_hint,
            self.buf_size,
            &mut |n| {
                self.bytes_read.fetch_add(n, Ordering::Relaxed);
                self.progress.add(0, n);
            },
        )?;
        if r.is_ok() {
            self.progress.add(1, 0);
        }
        Ok(r)
    }
}
