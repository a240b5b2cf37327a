//! Pack storage behind a trait, so that the same engine can keep packs in a
//! local directory (here) or, on the hub, in object storage.
//!
//! Contract every implementation honours (and the conformance tests check):
//! - a pack being written is invisible to `list` and `read_at` until
//!   [`PackSink::commit`] returns;
//! - `commit` is the durability barrier: when it returns Ok the pack survives
//!   a crash under its final name;
//! - committing a pack whose id already exists is harmless (same id, same
//!   objects);
//! - `read_at` returns exactly the bytes asked for or an error, never fewer.

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ds_format::PackId;

use crate::layout::sync_dir;
use crate::{IoContext, Result, StoreError};

/// A committed pack mapped read-only (see [`PackStore::map`]).
pub type PackMap = memmap2::Mmap;

/// Where packs live.
pub trait PackStore: Send + Sync + Debug {
    /// Starts a new pack under a temporary name.
    fn create(&self) -> Result<Box<dyn PackSink>>;
    /// Fills `buf` with the bytes at `offset` of a committed pack; a range
    /// past its end is [`StoreError::DamagedPack`]. Callers on hot paths pass
    /// a recycled buffer, so no memory is zeroed or faulted in per read.
    fn read_into(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Reads `len` bytes at `offset` of a committed pack.
    fn read_at(&self, id: &PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_into(id, offset, &mut buf)?;
        Ok(buf)
    }
    /// The committed pack mapped read-only into memory, where the backend
    /// keeps packs as local files (`None` elsewhere, the default). A mount
    /// hashes and serves raw chunks straight from the map: a read saves the
    /// copy into a buffer. The caller still verifies every byte it uses.
    fn map(&self, _id: &PackId) -> Result<Option<Arc<PackMap>>> {
        Ok(None)
    }
    /// Size in bytes of a committed pack.
    fn size(&self, id: &PackId) -> Result<u64>;
    /// Every committed pack.
    fn list(&self) -> Result<Vec<PackId>>;
    /// Deletes a committed pack (idempotent).
    fn remove(&self, id: &PackId) -> Result<()>;
    /// Removes packs left half-written by a crash; returns (count, bytes).
    fn clean_temp(&self) -> Result<(u64, u64)>;
}

/// A pack being written.
pub trait PackSink: Send {
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Makes the pack durable and visible as `id`.
    fn commit(self: Box<Self>, id: &PackId) -> Result<()>;
}

/// Packs as files under `STORE/packs/xx/<id>.pack`.
#[derive(Debug)]
pub struct LocalPacks {
    dir: PathBuf,
    tmp: PathBuf,
    open: Mutex<HashMap<PackId, Arc<File>>>,
    maps: Mutex<HashMap<PackId, Arc<PackMap>>>,
}

const MAX_OPEN: usize = 128;
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalPacks {
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        LocalPacks {
            dir,
            tmp,
            open: Mutex::new(HashMap::new()),
            maps: Mutex::new(HashMap::new()),
        }
    }

    pub fn path_of(&self, id: &PackId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.pack"))
    }

    fn file(&self, id: &PackId) -> Result<Arc<File>> {
        let mut open = self.open.lock().expect("pack handle cache poisoned");
        if let Some(f) = open.get(id) {
            return Ok(f.clone());
        }
        let path = self.path_of(id);
        let f = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::DamagedPack {
                    pack: *id,
                    why: format!("pack file {} is missing", path.display()),
                });
            }
            Err(e) => return Err(e).at(&path),
        };
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        open.insert(*id, f.clone());
        Ok(f)
    }

    /// Maps a committed pack file read-only.
    ///
    /// SAFETY: a mapping is sound while nobody changes the file under it.
    /// ds never does: a pack is written under a temporary name, renamed into
    /// place and from then on only read, until `remove` unlinks it (which
    /// leaves existing mappings intact). What ds cannot rule out is someone
    /// else truncating a committed pack, or the disk failing to read a page:
    /// either raises SIGBUS in the process that touches it. Callers only map
    /// for mounts, where that ends the mount (its dirty layer survives as
    /// after SIGKILL) but never hands out wrong bytes, because every chunk
    /// served from a map is rehashed first.
    #[allow(unsafe_code)]
    fn map_file(file: &File) -> std::io::Result<PackMap> {
        // SAFETY: see above.
        unsafe { memmap2::Mmap::map(file) }
    }
}

impl PackStore for LocalPacks {
    fn create(&self) -> Result<Box<dyn PackSink>> {
        fs::create_dir_all(&self.tmp).at(&self.tmp)?;
        let name = format!(
            "pack-{}-{}.tmp",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.tmp.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        Ok(Box::new(LocalSink {
            file,
            path,
            written: 0,
            dir: self.dir.clone(),
        }))
    }

    fn read_into(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let f = self.file(id)?;
        match f.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(StoreError::DamagedPack {
                pack: *id,
                why: format!(
                    "truncated: {} bytes at offset {offset} are past its end",
                    buf.len()
                ),
            }),
            Err(e) => Err(e).at(&self.path_of(id)),
        }
    }

    fn map(&self, id: &PackId) -> Result<Option<Arc<PackMap>>> {
        if let Some(m) = self.maps.lock().expect("pack map cache poisoned").get(id) {
            return Ok(Some(m.clone()));
        }
        let file = self.file(id)?;
        let map = Arc::new(Self::map_file(&file).at(&self.path_of(id))?);
        let mut maps = self.maps.lock().expect("pack map cache poisoned");
        if maps.len() >= MAX_OPEN {
            maps.clear();
        }
        Ok(Some(maps.entry(*id).or_insert(map).clone()))
    }

    fn size(&self, id: &PackId) -> Result<u64> {
        Ok(self.file(id)?.metadata().at(&self.path_of(id))?.len())
    }

    fn list(&self) -> Result<Vec<PackId>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&self.dir),
        };
        for sub in rd {
            let sub = sub.at(&self.dir)?;
            if !sub.file_type().at(&sub.path())?.is_dir() {
                continue;
            }
            for f in fs::read_dir(sub.path()).at(&sub.path())? {
                let f = f.at(&sub.path())?;
                let name = f.file_name();
                let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".pack")) else {
                    continue;
                };
                if let Ok(id) = hex.parse::<PackId>() {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn remove(&self, id: &PackId) -> Result<()> {
        self.open
            .lock()
            .expect("pack handle cache poisoned")
            .remove(id);
        self.maps
            .lock()
            .expect("pack map cache poisoned")
            .remove(id);
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(&path),
        }
    }

    fn clean_temp(&self) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        let rd = match fs::read_dir(&self.tmp) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(e).at(&self.tmp),
        };
        for f in rd {
            let f = f.at(&self.tmp)?;
            bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(f.path()).at(&f.path())?;
            n += 1;
        }
        Ok((n, bytes))
    }
}

#[derive(Debug)]
struct LocalSink {
    file: File,
    path: PathBuf,
    written: u64,
    dir: PathBuf,
}

impl PackSink for LocalSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).at(&self.path)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn commit(self: Box<Self>, id: &PackId) -> Result<()> {
        // Durability barrier, in order: data, then the name, then the names' dirs.
        self.file.sync_all().at(&self.path)?;
        let hex = id.to_hex();
        let sub = self.dir.join(&hex[..2]);
        let created = !sub.exists();
        if created {
            fs::create_dir_all(&sub).at(&sub)?;
        }
        let dest = sub.join(format!("{hex}.pack"));
        fs::rename(&self.path, &dest).at(&dest)?;
        sync_dir(&sub).at(&sub)?;
        if created {
            sync_dir(&self.dir).at(&self.dir)?;
        }
        Ok(())
    }
}

/// Reads a pack's trailer: returns its entries after checking the trailer hash
/// and that the id matches the name.
pub fn read_trailer(packs: &dyn PackStore, id: &PackId) -> Result<Vec<ds_format::pack::PackEntry>> {
    use ds_format::pack::{FOOTER_SIZE, decode_footer, decode_trailer};
    let damaged = |why: String| StoreError::DamagedPack { pack: *id, why };
    let len = packs.size(id)?;
    if len < (FOOTER_SIZE + 8) as u64 {
        return Err(damaged(format!("only {len} bytes long")));
    }
    let footer = packs.read_at(id, len - FOOTER_SIZE as u64, FOOTER_SIZE)?;
    let tlen = decode_footer(&footer, len).map_err(|e| damaged(e.to_string()))?;
    let trailer = packs.read_at(id, len - tlen, tlen as usize)?;
    let (got, entries) = decode_trailer(&trailer, len).map_err(|e| damaged(e.to_string()))?;
    if got != *id {
        return Err(damaged(format!("trailer hashes to {got}, not its name")));
    }
    Ok(entries)
}

/// Convenience for callers that only have a path.
pub fn local(root: &Path) -> LocalPacks {
    let l = crate::layout::Layout::new(root);
    LocalPacks::new(l.packs(), l.tmp())
}
