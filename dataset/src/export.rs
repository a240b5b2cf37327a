//! `ds dataset export`: a snapshot written back to a bucket, one object per
//! file, keyed by path (mapped paths decoded back to their keys).
//!
//! Objects already at the destination with the size and ETag the snapshot
//! recorded for them (exporting back to where a mirror read them) are not
//! written again. Files up to 4 parts are one PUT; bigger ones are
//! multipart uploads, read from the store part by part (never whole in
//! memory). Symlinks and special files have no object form and are
//! reported, not written.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use ds_format::manifest::FileRef;
use ds_format::tree::{DirRef, EntryData};
use ds_store::Store;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::s3::Client;
use crate::source::{self, SourceUrl};
use crate::tree::{XATTR_ETAG, XATTR_KEY};
use crate::{DatasetError, Result, keymap};

/// What an export did.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    pub objects: u64,
    pub bytes: u64,
    pub objects_written: u64,
    pub bytes_written: u64,
    pub objects_unchanged: u64,
    pub warnings: Vec<String>,
}

struct File {
    key: String,
    file: FileRef,
    etag: Option<String>,
}

fn collect(
    store: &Store,
    dir: &DirRef,
    path: &mut Vec<String>,
    out: &mut Vec<File>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    for e in store.dir_entries(dir)? {
        let Ok(name) = String::from_utf8(e.name.clone()) else {
            warnings.push(format!(
                "{}/{:?}: not UTF-8, not exported",
                path.join("/"),
                String::from_utf8_lossy(&e.name)
            ));
            continue;
        };
        path.push(name);
        let attr = |n: &[u8]| {
            e.xattrs
                .iter()
                .find(|x| x.name == n)
                .and_then(|x| String::from_utf8(x.value.clone()).ok())
        };
        match &e.data {
            EntryData::Dir(d) => collect(store, d, path, out, warnings)?,
            EntryData::File(f) => {
                let key = match attr(XATTR_KEY) {
                    Some(k) => k,
                    None => keymap::path_to_key(path).unwrap_or_else(|_| path.join("/")),
                };
                out.push(File {
                    key,
                    file: *f,
                    etag: attr(XATTR_ETAG),
                });
            }
            other => warnings.push(format!(
                "{}: a {}, not exported",
                path.join("/"),
                other.kind_name()
            )),
        }
        path.pop();
    }
    Ok(())
}

/// Writes the tree `root` of `store` under `dest`.
pub async fn export(
    store: Arc<Store>,
    root: DirRef,
    client: &Client,
    dest: &SourceUrl,
    jobs: usize,
    part_size: u64,
) -> Result<ExportReport> {
    let mut report = ExportReport::default();
    let s = store.clone();
    let (files, warnings) = tokio::task::spawn_blocking(move || {
        let (mut out, mut w) = (Vec::new(), Vec::new());
        collect(&s, &root, &mut Vec::new(), &mut out, &mut w).map(|_| (out, w))
    })
    .await
    .map_err(|e| DatasetError::Internal(e.to_string()))??;
    report.warnings = warnings;
    let there: HashMap<String, (u64, Option<String>)> = source::list(client, dest, 16)
        .await?
        .into_iter()
        .map(|o| (o.key, (o.size, o.etag)))
        .collect();
    report.objects = files.len() as u64;
    report.bytes = files.iter().map(|f| f.file.size).sum();
    let todo: Vec<&File> = files
        .iter()
        .filter(|f| {
            let same = f.etag.is_some()
                && there.get(&dest.key(&f.key)) == Some(&(f.file.size, f.etag.clone()));
            !same
        })
        .collect();
    report.objects_unchanged = report.objects - todo.len() as u64;
    let results: Vec<Result<u64>> = futures::stream::iter(todo)
        .map(|f| {
            let store = store.clone();
            async move {
                upload(
                    store,
                    client,
                    &dest.bucket,
                    &dest.key(&f.key),
                    f.file,
                    part_size,
                )
                .await
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    for r in results {
        report.bytes_written += r?;
        report.objects_written += 1;
    }
    Ok(report)
}

/// Sends parts of `part_size` bytes of a file, read on a blocking thread.
struct PartWriter {
    buf: Vec<u8>,
    part: usize,
    tx: mpsc::Sender<Bytes>,
}

impl Write for PartWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        while self.buf.len() >= self.part {
            let rest = self.buf.split_off(self.part);
            let full = std::mem::replace(&mut self.buf, rest);
            self.tx
                .blocking_send(Bytes::from(full))
                .map_err(|_| std::io::Error::other("upload stopped"))?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn upload(
    store: Arc<Store>,
    client: &Client,
    bucket: &str,
    key: &str,
    file: FileRef,
    part_size: u64,
) -> Result<u64> {
    if file.size <= 4 * part_size {
        let body = tokio::task::spawn_blocking(move || {
            let mut v = Vec::with_capacity(file.size as usize);
            store.read_file(&file, &mut v).map(|_| v)
        })
        .await
        .map_err(|e| DatasetError::Internal(e.to_string()))??;
        source::retry("put", || client.put(bucket, key, Bytes::from(body.clone()))).await?;
        return Ok(file.size);
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let mut w = PartWriter {
            buf: Vec::new(),
            part: part_size as usize,
            tx,
        };
        store.read_file(&file, &mut w)?;
        if !w.buf.is_empty() {
            let last = std::mem::take(&mut w.buf);
            w.tx.blocking_send(Bytes::from(last))
                .map_err(|_| DatasetError::Internal("upload stopped".into()))?;
        }
        Ok::<(), DatasetError>(())
    });
    let upload = source::retry("multipart start", || client.multipart_start(bucket, key)).await?;
    let mut etags = Vec::new();
    let mut n = 0u32;
    while let Some(part) = rx.recv().await {
        n += 1;
        let e = source::retry("multipart part", || {
            client.multipart_part(bucket, key, &upload, n, part.clone())
        })
        .await?;
        etags.push(e);
    }
    reader
        .await
        .map_err(|e| DatasetError::Internal(e.to_string()))??;
    source::retry("multipart finish", || {
        client.multipart_finish(bucket, key, &upload, &etags)
    })
    .await?;
    Ok(file.size)
}
