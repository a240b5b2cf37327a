//! Small mutable documents in the bucket (task records, queue markers, log
//! batches, runner presence), with the one primitive that makes several
//! stateless hubs on one bucket correct: compare-and-swap.
//!
//! On S3-compatible stores a document's version is its ETag, and a swap is
//! a conditional PUT (`If-Match`, or `If-None-Match: *` to create), which
//! [`Storage::open`] has probed. object_store's local filesystem backend has
//! neither, so there documents are files under the storage directory whose
//! version is the BLAKE3 of their bytes, swapped while holding
//! `docs.lock` (flock), which every hub on the machine shares.
//!
//! Keys are relative to the storage prefix and made only from checked
//! names (task ids, runner names, workspace names), never from raw input.

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::error::{HubError, IoContext, Result};
use crate::storage::{RefBackend, Storage};

/// What a document was when it was read; a swap succeeds only if it still is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(UpdateVersion);

/// The answer to a conditional write.
#[derive(Debug)]
pub enum Swap {
    Done(Version),
    /// Someone else wrote (or created) it first: read it again.
    Lost,
}

fn local_version(b: &[u8]) -> Version {
    Version(UpdateVersion {
        e_tag: Some(blake3::hash(b).to_hex().to_string()),
        version: None,
    })
}

impl Storage {
    fn doc_key(&self, key: &str) -> Path {
        let mut p = self.inner().prefix.clone();
        for part in key.split('/') {
            p = p.join(part);
        }
        p
    }

    fn local_dir(&self) -> Option<PathBuf> {
        match &self.inner().refs {
            RefBackend::LocalLocked { dir } => Some(dir.clone()),
            RefBackend::Conditional => None,
        }
    }

    /// A document and its version, if it exists.
    pub async fn get_doc(&self, key: &str) -> Result<Option<(Bytes, Version)>> {
        if let Some(dir) = self.local_dir() {
            let path = dir.join(key);
            return blocking(move || match std::fs::read(&path) {
                Ok(b) => {
                    let v = local_version(&b);
                    Ok(Some((Bytes::from(b), v)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).at(&path),
            })
            .await;
        }
        match self.inner().objects.get(&self.doc_key(key)).await {
            Ok(r) => {
                let v = Version(UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                });
                Ok(Some((r.bytes().await?, v)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The document if it is no longer at `seen` (`Ok(None)`: unchanged).
    /// On S3 a conditional GET, so an unchanged document costs no transfer.
    pub async fn get_doc_if_changed(
        &self,
        key: &str,
        seen: Option<&Version>,
    ) -> Result<Option<Option<(Bytes, Version)>>> {
        let Some(seen) = seen else {
            return self.get_doc(key).await.map(Some);
        };
        if self.local_dir().is_some() {
            let got = self.get_doc(key).await?;
            return Ok((got.as_ref().map(|(_, v)| v) != Some(seen)).then_some(got));
        }
        let Some(tag) = seen.0.e_tag.clone() else {
            return self.get_doc(key).await.map(Some);
        };
        let opts = object_store::GetOptions {
            if_none_match: Some(tag),
            ..Default::default()
        };
        match self
            .inner()
            .objects
            .get_opts(&self.doc_key(key), opts)
            .await
        {
            Ok(r) => {
                let v = Version(UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                });
                Ok(Some(Some((r.bytes().await?, v))))
            }
            Err(object_store::Error::NotModified { .. }) => Ok(None),
            Err(object_store::Error::NotFound { .. }) => Ok(Some(None)),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `body` if the document is still at `expected` (`None`: if it
    /// does not exist yet).
    pub async fn swap_doc(
        &self,
        key: &str,
        expected: Option<&Version>,
        body: Bytes,
    ) -> Result<Swap> {
        if let Some(dir) = self.local_dir() {
            let (path, expected) = (dir.join(key), expected.cloned());
            return blocking(move || local_swap(&dir, &path, expected, &body)).await;
        }
        let mode = match expected {
            Some(v) => PutMode::Update(v.0.clone()),
            None => PutMode::Create,
        };
        let r = self
            .inner()
            .objects
            .put_opts(
                &self.doc_key(key),
                PutPayload::from(body),
                PutOptions::from(mode),
            )
            .await;
        match r {
            Ok(put) => Ok(Swap::Done(Version(UpdateVersion {
                e_tag: put.e_tag,
                version: put.version,
            }))),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(Swap::Lost),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a document; false if it exists already.
    pub async fn create_doc(&self, key: &str, body: Bytes) -> Result<bool> {
        Ok(matches!(
            self.swap_doc(key, None, body).await?,
            Swap::Done(_)
        ))
    }

    /// Writes a document whatever it was (last writer wins).
    pub async fn put_doc(&self, key: &str, body: Bytes) -> Result<()> {
        if let Some(dir) = self.local_dir() {
            let path = dir.join(key);
            return blocking(move || write_file(&dir, &path, &body)).await;
        }
        self.inner()
            .objects
            .put(&self.doc_key(key), PutPayload::from(body))
            .await?;
        Ok(())
    }

    pub async fn delete_doc(&self, key: &str) -> Result<()> {
        if let Some(dir) = self.local_dir() {
            let path = dir.join(key);
            return blocking(move || match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).at(&path),
            })
            .await;
        }
        match self.inner().objects.delete(&self.doc_key(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Names of the documents directly under `dir` (`"queue"`,
    /// `"logs/<task>"`), sorted.
    pub async fn list_docs(&self, dir: &str) -> Result<Vec<String>> {
        if let Some(root) = self.local_dir() {
            let path = root.join(dir);
            return blocking(move || {
                let mut out = Vec::new();
                match std::fs::read_dir(&path) {
                    Ok(rd) => {
                        for e in rd {
                            let e = e.at(&path)?;
                            if let Some(n) = e.file_name().to_str()
                                && !n.starts_with(".tmp")
                            {
                                out.push(n.to_string());
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).at(&path),
                }
                out.sort();
                Ok(out)
            })
            .await;
        }
        let prefix = self.doc_key(dir);
        let listed = self
            .inner()
            .objects
            .list_with_delimiter(Some(&prefix))
            .await?;
        let mut out: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HubError::Internal(format!("storage task failed: {e}")))?
}

fn local_swap(
    dir: &std::path::Path,
    path: &std::path::Path,
    expected: Option<Version>,
    body: &[u8],
) -> Result<Swap> {
    let _lock = crate::storage::flock(&dir.join("docs.lock"))?;
    let current = match std::fs::read(path) {
        Ok(b) => Some(local_version(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).at(path),
    };
    if current != expected {
        return Ok(Swap::Lost);
    }
    write_file(dir, path, body)?;
    Ok(Swap::Done(local_version(body)))
}

/// Temp file beside the target, fsync, rename: a reader sees the old or the
/// new document, never a torn one.
fn write_file(dir: &std::path::Path, path: &std::path::Path, body: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).at(parent)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("doc");
    let tmp = parent.join(format!(
        ".tmp-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::File::create(&tmp).at(&tmp)?;
    f.write_all(body).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)?;
    Ok(())
}
