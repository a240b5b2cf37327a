//! What an interrupted mirror already stored, so a rerun does not download
//! it again.
//!
//! A mirror stores objects in batches; after each batch's transaction is
//! finished (its packs fsynced and indexed, `txn.rs` barriers 1 and 2) it
//! appends one line per object to `STORE/datasets/<dataset>.journal` and
//! fsyncs it. A line therefore only ever names content that is durable.
//! An object bigger than a batch is stored in pieces, each in a
//! transaction of its own, and a [`Piece`] line names each piece's chunks
//! once they are durable: a rerun reads such an object from where its
//! pieces end (`big.rs`).
//! A rerun takes an object from the journal when the listing still shows
//! the same size and ETag and its content is still in the store (a `ds gc`
//! in between may have removed it); a torn line (SIGKILL mid-write) is
//! ended when the journal is reopened, and skipped. The journal is removed once the mirror's snapshot is
//! committed, and ignored if it was written for another source.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use ds_format::ObjectId;
use ds_format::manifest::FileRef;
use serde::{Deserialize, Serialize};

use crate::{DatasetError, Result};

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    journal: u32,
    source: String,
    dataset: String,
}

/// One object already stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub last_modified_ns: i64,
    pub file_height: u8,
    pub file_root: ObjectId,
}

/// The chunks of one piece of a big object, bytes `from..from + their
/// total` of the version with this size and ETag.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Piece {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub from: u64,
    pub chunks: Vec<(ObjectId, u64)>,
}

/// What an earlier run of the same source left: objects stored whole, and
/// pieces of big ones (by key, in the order written).
#[derive(Debug, Default)]
pub struct Resumable {
    pub done: HashMap<String, Stored>,
    pub pieces: HashMap<String, Vec<Piece>>,
}

/// A journal line (one of two shapes).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Stored(Stored),
    Piece { piece: Piece },
}

impl Stored {
    pub fn file(&self) -> FileRef {
        FileRef {
            size: self.size,
            height: self.file_height,
            root: self.file_root,
        }
    }
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Opens the journal of `dataset`, returning what an earlier run of the
    /// same source stored; a journal of another source is started afresh.
    pub fn open(path: &Path, source: &str, dataset: &str) -> Result<(Journal, Resumable)> {
        let mut found = Resumable::default();
        let mut keep = false;
        if let Ok(f) = File::open(path) {
            let mut lines = BufReader::new(f).lines();
            if let Some(Ok(h)) = lines.next()
                && let Ok(h) = serde_json::from_str::<Header>(&h)
                && h.journal == 1
                && h.source == source
                && h.dataset == dataset
            {
                keep = true;
                for l in lines.map_while(|l| l.ok()) {
                    match serde_json::from_str::<Line>(&l) {
                        Ok(Line::Stored(s)) => {
                            found.done.insert(s.key.clone(), s);
                        }
                        Ok(Line::Piece { piece }) => {
                            found
                                .pieces
                                .entry(piece.key.clone())
                                .or_default()
                                .push(piece);
                        }
                        // Torn by a crash (each reopen ends such a line).
                        Err(_) => continue,
                    }
                }
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        if !keep {
            file.set_len(0).map_err(io_err(path))?;
            let h = Header {
                journal: 1,
                source: source.to_string(),
                dataset: dataset.to_string(),
            };
            let mut line =
                serde_json::to_string(&h).map_err(|e| DatasetError::Internal(e.to_string()))?;
            line.push('\n');
            file.write_all(line.as_bytes()).map_err(io_err(path))?;
        } else {
            // A torn last line must not glue itself to the next one.
            file.write_all(b"\n").map_err(io_err(path))?;
        }
        file.sync_data().map_err(io_err(path))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
            },
            found,
        ))
    }

    /// Appends entries whose content is already durable, and fsyncs.
    pub fn append(&mut self, entries: &[Stored]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let lines: Vec<Line> = entries.iter().cloned().map(Line::Stored).collect();
        self.write(&lines)
    }

    /// Appends a piece whose chunks are already durable, and fsyncs.
    pub fn append_piece(&mut self, piece: Piece) -> Result<()> {
        self.write(&[Line::Piece { piece }])
    }

    fn write(&mut self, lines: &[Line]) -> Result<()> {
        let mut buf = String::new();
        for e in lines {
            buf.push_str(
                &serde_json::to_string(e).map_err(|e| DatasetError::Internal(e.to_string()))?,
            );
            buf.push('\n');
        }
        self.file
            .write_all(buf.as_bytes())
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// The mirror committed: nothing to resume.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_file(&self.path).map_err(io_err(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_entries_of_the_same_source_and_survives_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("datasets/x.journal");
        let e = Stored {
            key: "a//b".into(),
            size: 3,
            etag: Some("\"e\"".into()),
            version_id: None,
            last_modified_ns: 7,
            file_height: 0,
            file_root: ObjectId([9; 32]),
        };
        let (mut j, done) = Journal::open(&p, "s3://b/", "x").unwrap();
        assert!(done.done.is_empty());
        j.append(std::slice::from_ref(&e)).unwrap();
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"key\":\"torn")
            .unwrap();
        let (mut j, done) = Journal::open(&p, "s3://b/", "x").unwrap();
        assert_eq!(done.done.get("a//b"), Some(&e));
        let mut e2 = e.clone();
        e2.key = "c".into();
        j.append(std::slice::from_ref(&e2)).unwrap();
        let piece = Piece {
            key: "big".into(),
            size: 9 << 30,
            etag: Some("\"m-9\"".into()),
            from: 0,
            chunks: vec![(ObjectId([1; 32]), 65_536), (ObjectId([2; 32]), 70_000)],
        };
        j.append_piece(piece.clone()).unwrap();
        drop(j);
        let (_, done) = Journal::open(&p, "s3://b/", "x").unwrap();
        assert_eq!(
            done.done.len(),
            2,
            "a torn line is skipped, not the lines after it"
        );
        assert_eq!(done.pieces["big"], vec![piece]);
        let (_, done) = Journal::open(&p, "s3://other/", "x").unwrap();
        assert!(done.done.is_empty() && done.pieces.is_empty());
    }
}
