//! The hub's durable state, all of it in object storage, so that any number
//! of hub processes can serve one bucket and a hub's local disk holds only
//! caches.
//!
//! ```text
//! packs/ab/<id>.pack   a pack, byte for byte as ds writes them locally
//! packs/ab/<id>.idx    pack length (u64 le) + the pack's trailer; written
//!                      after the pack, so its presence commits the pack
//! refs/<workspace>     hex snapshot id; moved only by compare-and-swap
//! tokens/<hash>        JSON grant of the token whose BLAKE3 is <hash>
//! tasks/, queue/, …    task records and their indexes (see `docs` and
//!                      `tasks::store`)
//! gc/…                 hub gc's state, lease, revive markers and moves
//!                      (see `gc`); packs are deleted only by hub gc
//! ```
//!
//! Refs move by conditional PUT (`PutMode::Create` / `PutMode::Update` on
//! the ETag) on S3-compatible stores, checked at open by a probe, because a
//! store that ignores the condition silently loses updates. object_store's
//! local filesystem backend has no `PutMode::Update`; there the refs are
//! files swapped under an flock(2) held in the storage directory, which
//! gives the same guarantee to every hub on the machine.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ds_format::pack::{PackEntry, decode_trailer};
use ds_format::{ObjectId, PackId};
use ds_store::refs::{Refs, validate_workspace};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

use crate::error::{HubError, IoContext, Result};

/// Packs at least this big are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 16 << 20;
const PART_SIZE: usize = 8 << 20;

#[derive(Debug)]
pub(crate) enum RefBackend {
    /// Conditional PUT on the object store itself.
    Conditional,
    /// Files under `dir/refs`, swapped while holding `dir/refs.lock`.
    LocalLocked { dir: PathBuf },
}

/// A pack as hub gc lists it: when its index object was written (unix
/// seconds; none for bytes never committed) and its bytes' size and time.
#[derive(Debug, Clone)]
pub struct PackFile {
    pub id: PackId,
    pub committed: Option<i64>,
    pub data: Option<(u64, i64)>,
}

/// The bucket (or directory) a hub serves.
#[derive(Debug, Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) url: String,
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) prefix: Path,
    pub(crate) refs: RefBackend,
}

fn pack_key(prefix: &Path, id: &PackId, ext: &str) -> Path {
    let hex = id.to_hex();
    prefix
        .clone()
        .join("packs")
        .join(&hex[..2])
        .join(format!("{hex}.{ext}"))
}

impl Storage {
    /// Opens `file:///abs/path` or `s3://bucket/prefix` (configured by the
    /// `AWS_*` environment variables as object_store reads them).
    pub async fn open(url: &str) -> Result<Storage> {
        Storage::open_with(url, &[]).await
    }

    /// Like [`Storage::open`], with S3 settings (`aws_endpoint`,
    /// `aws_allow_http`, …) given explicitly on top of the environment.
    pub async fn open_with(url: &str, s3_config: &[(&str, &str)]) -> Result<Storage> {
        let bad = |why: &str| HubError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let inner = if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file:// URL needs an absolute path (file:///srv/ds)"));
            }
            let dir = PathBuf::from(path);
            std::fs::create_dir_all(&dir).at(&dir)?;
            // fsync: a pack the hub acknowledged must survive a power cut.
            let fs = LocalFileSystem::new_with_prefix(&dir)?.with_fsync(true);
            Inner {
                url: url.to_string(),
                objects: Arc::new(fs),
                prefix: Path::default(),
                refs: RefBackend::LocalLocked { dir },
            }
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name (s3://BUCKET/PREFIX)"));
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (k, v) in s3_config {
                let key: AmazonS3ConfigKey = k.parse()?;
                b = b.with_config(key, *v);
            }
            let s3 = b.build()?;
            let s = Inner {
                url: url.to_string(),
                objects: Arc::new(s3),
                prefix: Path::from(prefix.trim_matches('/')),
                refs: RefBackend::Conditional,
            };
            probe_conditional(&s).await?;
            s
        } else {
            return Err(bad("expected file:///PATH or s3://BUCKET/PREFIX"));
        };
        Ok(Storage {
            inner: Arc::new(inner),
        })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Whether pack `id` is committed (its index object exists).
    pub async fn has_pack(&self, id: &PackId) -> Result<bool> {
        let s = &self.inner;
        match s.objects.head(&pack_key(&s.prefix, id, "idx")).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a verified pack's bytes. Invisible until [`Self::commit_pack`].
    pub async fn put_pack_data(&self, id: &PackId, pack: Bytes) -> Result<()> {
        let s = &self.inner;
        let key = pack_key(&s.prefix, id, "pack");
        // Parts only where they help: over HTTP. A local file is one write.
        let local = matches!(s.refs, RefBackend::LocalLocked { .. });
        if pack.len() >= MULTIPART_THRESHOLD && !local {
            let upload = s.objects.put_multipart(&key).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            w.put(pack);
            w.finish().await?;
        } else {
            s.objects.put(&key, PutPayload::from(pack)).await?;
        }
        Ok(())
    }

    /// Writes the index object of a stored pack of `len` bytes: what makes
    /// the pack visible.
    pub async fn commit_pack(&self, id: &PackId, len: u64, trailer: &[u8]) -> Result<()> {
        let s = &self.inner;
        let mut ix = Vec::with_capacity(8 + trailer.len());
        ix.extend_from_slice(&len.to_le_bytes());
        ix.extend_from_slice(trailer);
        s.objects
            .put(&pack_key(&s.prefix, id, "idx"), PutPayload::from(ix))
            .await?;
        Ok(())
    }

    /// Stores a verified pack; returns false when it was already there.
    pub async fn put_pack(&self, id: &PackId, pack: Bytes, trailer: &[u8]) -> Result<bool> {
        if self.has_pack(id).await? {
            return Ok(false);
        }
        let len = pack.len() as u64;
        self.put_pack_data(id, pack).await?;
        self.commit_pack(id, len, trailer).await?;
        Ok(true)
    }

    /// Every pack file and index object in the bucket (hub gc's listing).
    pub async fn list_pack_files(&self) -> Result<Vec<PackFile>> {
        let s = &self.inner;
        let prefix = s.prefix.clone().join("packs");
        let metas: Vec<_> = s.objects.list(Some(&prefix)).try_collect().await?;
        let mut by_id: std::collections::BTreeMap<PackId, PackFile> = Default::default();
        for m in metas {
            let Some(name) = m.location.filename() else {
                continue;
            };
            let (stem, idx) = match (name.strip_suffix(".idx"), name.strip_suffix(".pack")) {
                (Some(s), _) => (s, true),
                (_, Some(s)) => (s, false),
                _ => continue,
            };
            let Ok(id) = stem.parse::<PackId>() else {
                continue;
            };
            let f = by_id.entry(id).or_insert(PackFile {
                id,
                committed: None,
                data: None,
            });
            let when = m.last_modified.timestamp();
            if idx {
                f.committed = Some(when);
            } else {
                f.data = Some((m.size, when));
            }
        }
        Ok(by_id.into_values().collect())
    }

    /// Deletes a pack: its index object first (the pack leaves every
    /// listing at once), then its bytes. Missing parts are no error.
    pub async fn delete_pack(&self, id: &PackId) -> Result<()> {
        let s = &self.inner;
        for ext in ["idx", "pack"] {
            match s.objects.delete(&pack_key(&s.prefix, id, ext)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Every committed pack (those whose index object exists), sorted.
    pub async fn list_packs(&self) -> Result<Vec<PackId>> {
        let s = &self.inner;
        let prefix = s.prefix.clone().join("packs");
        let metas: Vec<_> = s.objects.list(Some(&prefix)).try_collect().await?;
        let mut out: Vec<PackId> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".idx")?.parse().ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Like [`Self::pack_entries`], but `None` for a pack that is gone
    /// (hub gc deleted it after a listing named it).
    pub async fn pack_entries_if_present(&self, id: &PackId) -> Result<Option<Vec<PackEntry>>> {
        match self.pack_entries(id).await {
            Ok(e) => Ok(Some(e)),
            Err(HubError::Storage(object_store::Error::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A committed pack's entries, checked against its id.
    pub async fn pack_entries(&self, id: &PackId) -> Result<Vec<PackEntry>> {
        let s = &self.inner;
        let b = s
            .objects
            .get(&pack_key(&s.prefix, id, "idx"))
            .await?
            .bytes()
            .await?;
        if b.len() < 8 {
            return Err(HubError::Corrupt(format!("pack index {id} is truncated")));
        }
        let len = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let (got, entries) = decode_trailer(&b[8..], len)?;
        if got != *id {
            return Err(HubError::Corrupt(format!(
                "pack index {id} describes pack {got}"
            )));
        }
        Ok(entries)
    }

    /// Byte ranges of one pack, in one request where the store allows.
    pub async fn read_ranges(
        &self,
        id: &PackId,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>> {
        let s = &self.inner;
        Ok(s.objects
            .get_ranges(&pack_key(&s.prefix, id, "pack"), ranges)
            .await?)
    }

    /// A workspace's head.
    pub async fn get_ref(&self, workspace: &str) -> Result<Option<ObjectId>> {
        validate_workspace(workspace)?;
        Ok(match self.ref_state(workspace).await? {
            RefState::Present(id, _) => Some(id),
            RefState::Absent | RefState::Forgotten(_) => None,
        })
    }

    /// A ref object as it is in the bucket: a forgotten workspace keeps a
    /// tombstone, so that forgetting is a conditional write like every
    /// other ref change (object stores have no conditional delete).
    async fn ref_state(&self, ws: &str) -> Result<RefState> {
        let s = &self.inner;
        match &s.refs {
            RefBackend::LocalLocked { dir } => {
                let refs = Refs::new(dir.join("refs"));
                Ok(match refs.get(ws)? {
                    Some(id) => RefState::Present(
                        id,
                        UpdateVersion {
                            e_tag: None,
                            version: None,
                        },
                    ),
                    None => RefState::Absent,
                })
            }
            RefBackend::Conditional => {
                let key = s.prefix.clone().join("refs").join(ws);
                match s.objects.get(&key).await {
                    Ok(r) => {
                        let v = UpdateVersion {
                            e_tag: r.meta.e_tag.clone(),
                            version: r.meta.version.clone(),
                        };
                        let b = r.bytes().await?;
                        let text = std::str::from_utf8(&b).map(str::trim);
                        if text == Ok(TOMBSTONE) {
                            return Ok(RefState::Forgotten(v));
                        }
                        let id = text.ok().and_then(|t| t.parse().ok()).ok_or_else(|| {
                            HubError::Corrupt(format!("ref object {key} is corrupt"))
                        })?;
                        Ok(RefState::Present(id, v))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(RefState::Absent),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Removes `workspace`'s ref if it is still at `expected`.
    pub async fn delete_ref(&self, workspace: &str, expected: ObjectId) -> Result<()> {
        validate_workspace(workspace)?;
        let s = &self.inner;
        match &s.refs {
            RefBackend::LocalLocked { dir } => {
                let dir = dir.clone();
                let ws = workspace.to_string();
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let _lock = flock(&dir.join("refs.lock"))?;
                    let refs = Refs::new(dir.join("refs"));
                    let actual = refs.get(&ws)?;
                    if actual != Some(expected) {
                        return Err(HubError::RefConflict {
                            workspace: ws,
                            expected: Some(expected),
                            actual,
                        });
                    }
                    Ok(refs.delete(&ws, expected)?)
                })
                .await
                .map_err(|e| HubError::Internal(format!("ref delete task failed: {e}")))?
            }
            RefBackend::Conditional => loop {
                let (actual, v) = match self.ref_state(workspace).await? {
                    RefState::Present(id, v) => (Some(id), Some(v)),
                    _ => (None, None),
                };
                let Some(v) = v.filter(|_| actual == Some(expected)) else {
                    return Err(HubError::RefConflict {
                        workspace: workspace.to_string(),
                        expected: Some(expected),
                        actual,
                    });
                };
                let key = s.prefix.clone().join("refs").join(workspace);
                let body = PutPayload::from(format!("{TOMBSTONE}\n").into_bytes());
                match s
                    .objects
                    .put_opts(&key, body, PutOptions::from(PutMode::Update(v)))
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(object_store::Error::Precondition { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }

    /// Moves `workspace` from `expected` to `new` (from whatever it is, with
    /// `force`). Returns the head it replaced. Never loses a concurrent
    /// update: the loser gets [`HubError::RefConflict`].
    pub async fn swap_ref(
        &self,
        workspace: &str,
        expected: Option<ObjectId>,
        new: ObjectId,
        force: bool,
    ) -> Result<Option<ObjectId>> {
        validate_workspace(workspace)?;
        let s = &self.inner;
        match &s.refs {
            RefBackend::LocalLocked { dir } => {
                let dir = dir.clone();
                let ws = workspace.to_string();
                tokio::task::spawn_blocking(move || local_swap(&dir, &ws, expected, new, force))
                    .await
                    .map_err(|e| HubError::Internal(format!("ref update task failed: {e}")))?
            }
            RefBackend::Conditional => loop {
                let (actual, mode) = match self.ref_state(workspace).await? {
                    RefState::Present(id, v) => (Some(id), PutMode::Update(v)),
                    // A forgotten workspace is created again over its tombstone.
                    RefState::Forgotten(v) => (None, PutMode::Update(v)),
                    RefState::Absent => (None, PutMode::Create),
                };
                if !force && actual != expected {
                    return Err(HubError::RefConflict {
                        workspace: workspace.to_string(),
                        expected,
                        actual,
                    });
                }
                let key = s.prefix.clone().join("refs").join(workspace);
                let body = PutPayload::from(format!("{new}\n").into_bytes());
                match s.objects.put_opts(&key, body, PutOptions::from(mode)).await {
                    Ok(_) => return Ok(actual),
                    // Someone moved it between our read and our write: look again.
                    Err(object_store::Error::Precondition { .. })
                    | Err(object_store::Error::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }

    /// Every workspace and its head.
    pub async fn list_refs(&self) -> Result<Vec<(String, ObjectId)>> {
        let s = &self.inner;
        match &s.refs {
            RefBackend::LocalLocked { dir } => Ok(Refs::new(dir.join("refs")).list()?),
            RefBackend::Conditional => {
                let metas: Vec<_> = s
                    .objects
                    .list(Some(&s.prefix.clone().join("refs")))
                    .try_collect()
                    .await?;
                let mut out = Vec::new();
                for m in metas {
                    let Some(name) = m.location.filename() else {
                        continue;
                    };
                    if let Some(id) = self.get_ref(name).await? {
                        out.push((name.to_string(), id));
                    }
                }
                out.sort();
                Ok(out)
            }
        }
    }

    /// Stores a token grant under the hash of the token.
    pub async fn put_token(&self, hash: &str, grant: &[u8]) -> Result<()> {
        let s = &self.inner;
        let key = s.prefix.clone().join("tokens").join(hash);
        s.objects
            .put(&key, PutPayload::from(grant.to_vec()))
            .await?;
        Ok(())
    }

    pub async fn delete_token(&self, hash: &str) -> Result<()> {
        let s = &self.inner;
        let key = s.prefix.clone().join("tokens").join(hash);
        match s.objects.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The grant stored for a token hash.
    pub async fn get_token(&self, hash: &str) -> Result<Option<Bytes>> {
        let s = &self.inner;
        let key = s.prefix.clone().join("tokens").join(hash);
        match s.objects.get(&key).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Takes an exclusive flock(2) on `path` (created when missing), held
/// until the returned file is dropped: what stands in for conditional
/// writes on `file://` storage, shared by every hub on the machine.
pub(crate) fn flock(path: &std::path::Path) -> Result<std::fs::File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at(path)?;
    f.lock().at(path)?;
    Ok(f)
}

fn local_swap(
    dir: &std::path::Path,
    ws: &str,
    expected: Option<ObjectId>,
    new: ObjectId,
    force: bool,
) -> Result<Option<ObjectId>> {
    let _lock = flock(&dir.join("refs.lock"))?;
    let refs = Refs::new(dir.join("refs"));
    let actual = refs.get(ws)?;
    if !force && actual != expected {
        return Err(HubError::RefConflict {
            workspace: ws.to_string(),
            expected,
            actual,
        });
    }
    refs.swap(ws, actual, new)?;
    Ok(actual)
}

/// What a forgotten workspace's ref object holds.
const TOMBSTONE: &str = "forgotten";

/// A ref in the bucket.
enum RefState {
    Absent,
    Forgotten(UpdateVersion),
    Present(ObjectId, UpdateVersion),
}

/// Checks that the store refuses a second create and an update against a
/// stale ETag; a store that accepts either would silently lose ref updates.
async fn probe_conditional(s: &Inner) -> Result<()> {
    let fail = |why: String| HubError::NoConditionalWrites {
        url: s.url.clone(),
        why,
    };
    let nonce = blake3::hash(
        format!("{}-{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes(),
    )
    .to_hex();
    let key = s
        .prefix
        .clone()
        .join("hub")
        .join(format!("probe-{}", &nonce[..16]));
    let create = || PutOptions::from(PutMode::Create);
    let first = s
        .objects
        .put_opts(&key, PutPayload::from_static(b"1"), create())
        .await
        .map_err(|e| match e {
            object_store::Error::NotImplemented { .. } => {
                fail(format!("create-only PUT is not supported: {e}"))
            }
            e => HubError::Storage(e),
        })?;
    let second = s
        .objects
        .put_opts(&key, PutPayload::from_static(b"2"), create())
        .await;
    let stale = UpdateVersion {
        e_tag: Some("\"0000000000000000\"".into()),
        version: None,
    };
    let update = s
        .objects
        .put_opts(
            &key,
            PutPayload::from_static(b"3"),
            PutOptions::from(PutMode::Update(stale)),
        )
        .await;
    let good = PutMode::Update(UpdateVersion {
        e_tag: first.e_tag.clone(),
        version: first.version.clone(),
    });
    let matching = s
        .objects
        .put_opts(&key, PutPayload::from_static(b"4"), PutOptions::from(good))
        .await;
    let _ = s.objects.delete(&key).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Ok(_) => {
            return Err(fail(
                "a create-only PUT overwrote an existing object".into(),
            ));
        }
        Err(e) => return Err(fail(format!("create-only PUT failed: {e}"))),
    }
    match update {
        Err(object_store::Error::Precondition { .. }) => {}
        Ok(_) => return Err(fail("a PUT with a stale If-Match succeeded".into())),
        Err(e) => return Err(fail(format!("conditional PUT failed: {e}"))),
    }
    if let Err(e) = matching {
        return Err(fail(format!("a PUT with the current ETag failed: {e}")));
    }
    Ok(())
}
