//! Verification: rehash every object of every pack, check every index entry
//! points at a pack that exists, and walk every snapshot (with its ancestors)
//! to check that everything it reaches is present and intact. Problems are
//! collected, not fatal, and name the pack, the object and the paths of the
//! files that hold it.

use std::collections::{HashMap, HashSet};

use ds_format::pack::{FOOTER_SIZE, HEADER, decode_footer, decode_trailer};
use ds_format::tree::{DirNode, EntryData};
use ds_format::{ObjectId, ObjectKind, PackId};
use rayon::prelude::*;

use crate::progress::Progress;
use crate::store::decode_stored;
use crate::{Result, Store, StoreError};

/// One thing that is wrong.
#[derive(Debug, Clone)]
pub struct Problem {
    pub pack: Option<PackId>,
    pub object: Option<ObjectId>,
    pub message: String,
    /// `workspace:path` of files or directories affected.
    pub paths: Vec<String>,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub packs: u64,
    pub objects: u64,
    pub bytes: u64,
    pub snapshots: u64,
    pub unindexed_packs: u64,
    pub problems: Vec<Problem>,
}

pub fn verify(store: &Store, progress: &Progress) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let packs = store.packs();
    let list = packs.list()?;
    let total: u64 = list.iter().map(|p| packs.size(p).unwrap_or(0)).sum();
    progress
        .total_bytes
        .store(total, std::sync::atomic::Ordering::Relaxed);
    report.packs = list.len() as u64;
    // 1. every pack, every object, rehashed
    let per_pack: Vec<(u64, u64, Vec<Problem>)> = list
        .par_iter()
        .map(|id| check_pack(store, id, progress))
        .collect::<Result<_>>()?;
    let mut bad: HashMap<ObjectId, usize> = HashMap::new();
    for (n, bytes, probs) in per_pack {
        report.objects += n;
        report.bytes += bytes;
        for p in probs {
            if let Some(o) = p.object {
                bad.insert(o, report.problems.len());
            }
            report.problems.push(p);
        }
    }
    // 2. the index points only at packs that exist
    let on_disk: HashSet<PackId> = list.iter().copied().collect();
    for p in &list {
        if !store.index().has_pack(p)? && !store.journal().holds(p) {
            report.unindexed_packs += 1;
        }
    }
    let mut missing_packs: HashMap<PackId, u64> = HashMap::new();
    store.index().for_each_object(|_, loc| {
        if !on_disk.contains(&loc.pack) {
            *missing_packs.entry(loc.pack).or_default() += 1;
        }
        Ok(())
    })?;
    for (p, n) in missing_packs {
        report.problems.push(Problem {
            pack: Some(p),
            object: None,
            message: format!("pack {p} is missing but the index lists {n} objects in it"),
            paths: Vec::new(),
        });
    }
    // 3. every snapshot reaches only present, intact objects
    let mut w = Walker {
        store,
        bad,
        seen: HashSet::new(),
        report: &mut report,
    };
    for (ws, head) in store.refs().list()? {
        let mut next = Some(head);
        while let Some(id) = next.take() {
            if !w.seen.insert(id) {
                break;
            }
            w.report.snapshots += 1;
            let label = format!("{ws}@{}", id.short());
            match store.load_snapshot(&id) {
                Ok(s) => {
                    next = s.parents.first().copied();
                    for r in &s.runs {
                        if let Err(e) = store.load_run(r) {
                            w.problem(r, e, &format!("{label} (run)"));
                        }
                    }
                    w.dir(&s.root.root, s.root.height, &label, "")?;
                }
                Err(e) => w.problem(&id, e, &label),
            }
        }
    }
    Ok(report)
}

fn check_pack(store: &Store, id: &PackId, progress: &Progress) -> Result<(u64, u64, Vec<Problem>)> {
    let packs = store.packs();
    let pack_problem = |why: String| Problem {
        pack: Some(*id),
        object: None,
        message: format!("pack {id} is damaged: {why}"),
        paths: Vec::new(),
    };
    let size = packs.size(id)?;
    let data = packs.read_at(id, 0, size as usize)?;
    progress.add(0, size);
    let mut probs = Vec::new();
    if data.len() < HEADER.len() + FOOTER_SIZE || data[..HEADER.len()] != HEADER {
        probs.push(pack_problem("bad header or too short".into()));
    }
    let entries = (|| {
        let tlen = decode_footer(&data[data.len().saturating_sub(FOOTER_SIZE)..], size).ok()?;
        let (got, entries) = decode_trailer(&data[(size - tlen) as usize..], size).ok()?;
        (got == *id).then_some(entries)
    })();
    let entries = match entries {
        Some(e) => e,
        None => {
            probs.push(pack_problem(
                "trailer unreadable; checking objects the index places in it".into(),
            ));
            // Fall back to the index's view of this pack.
            let mut from_index = Vec::new();
            store.index().for_each_object(|oid, loc| {
                if loc.pack == *id {
                    from_index.push(ds_format::pack::PackEntry {
                        id: oid,
                        kind: loc.kind,
                        stored: loc.stored,
                        offset: loc.offset,
                        stored_len: loc.stored_len,
                        raw_len: loc.raw_len,
                    });
                }
                Ok(())
            })?;
            from_index
        }
    };
    let mut n = 0;
    for e in &entries {
        n += 1;
        let start = e.offset as usize;
        let end = start + e.stored_len as usize;
        let why = match data.get(start..end) {
            None => Some("lies past the end of the pack".to_string()),
            Some(b) => match decode_stored(e.stored, b.to_vec(), e.raw_len) {
                Err(w) => Some(w),
                Ok(raw) if e.kind.hash(&raw) != e.id => {
                    Some("content does not match its hash".into())
                }
                Ok(_) => None,
            },
        };
        if let Some(why) = why {
            probs.push(Problem {
                pack: Some(*id),
                object: Some(e.id),
                message: format!("{} {} in pack {id} is damaged: {why}", e.kind.name(), e.id),
                paths: Vec::new(),
            });
        }
    }
    Ok((n, size, probs))
}

struct Walker<'a> {
    store: &'a Store,
    bad: HashMap<ObjectId, usize>,
    seen: HashSet<ObjectId>,
    report: &'a mut VerifyReport,
}

impl Walker<'_> {
    /// Records that `id` (reached at `path`) is unusable.
    fn problem(&mut self, id: &ObjectId, e: StoreError, path: &str) {
        if let Some(&i) = self.bad.get(id) {
            if self.report.problems[i].paths.len() < 20 {
                self.report.problems[i].paths.push(path.to_string());
            }
            return;
        }
        self.bad.insert(*id, self.report.problems.len());
        self.report.problems.push(Problem {
            pack: None,
            object: Some(*id),
            message: e.to_string(),
            paths: vec![path.to_string()],
        });
    }

    /// Checks an object without reading it (chunks were rehashed in step 1).
    fn present(&mut self, id: &ObjectId, kind: ObjectKind, path: &str) -> Result<bool> {
        if self.bad.contains_key(id) {
            self.problem(id, StoreError::Internal(String::new()), path);
            return Ok(false);
        }
        if self.store.locate(id)?.is_none() {
            self.problem(
                id,
                StoreError::Missing {
                    kind: kind.name(),
                    id: *id,
                },
                path,
            );
            return Ok(false);
        }
        Ok(true)
    }

    fn dir(&mut self, id: &ObjectId, level: u8, label: &str, path: &str) -> Result<()> {
        if !self.seen.insert(*id) {
            return Ok(());
        }
        let shown = format!("{label}:/{path}");
        let node = match self.store.load_dir_node(id) {
            Ok(n) if n.level() == level => n,
            Ok(n) => {
                let e = StoreError::Damaged {
                    kind: "dir-node",
                    id: *id,
                    pack: None,
                    why: format!("level {} where {level} expected", n.level()),
                };
                self.problem(id, e, &shown);
                return Ok(());
            }
            Err(e) => {
                self.problem(id, e, &shown);
                return Ok(());
            }
        };
        match node {
            DirNode::Index { children, .. } => {
                for c in children {
                    self.dir(&c.id, level - 1, label, path)?;
                }
            }
            DirNode::Leaf(entries) => {
                for e in entries {
                    let child = if path.is_empty() {
                        String::from_utf8_lossy(&e.name).into_owned()
                    } else {
                        format!("{path}/{}", String::from_utf8_lossy(&e.name))
                    };
                    match e.data {
                        EntryData::Dir(d) => self.dir(&d.root, d.height, label, &child)?,
                        EntryData::File(f) => {
                            let shown = format!("{label}:/{child}");
                            match f.root_object() {
                                None => {}
                                Some((ObjectKind::Chunk, c)) => {
                                    self.present(&c, ObjectKind::Chunk, &shown)?;
                                }
                                Some((_, n)) => self.file(&n, f.height - 1, &shown)?,
                            }
                        }
                        EntryData::Symlink(_)
                        | EntryData::Fifo
                        | EntryData::Socket
                        | EntryData::Device { .. } => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn file(&mut self, id: &ObjectId, level: u8, shown: &str) -> Result<()> {
        let node = match self.store.load_file_node(id) {
            Ok(n) if n.level == level => n,
            Ok(_) => {
                let e = StoreError::Damaged {
                    kind: "file-node",
                    id: *id,
                    pack: None,
                    why: "wrong level".into(),
                };
                self.problem(id, e, shown);
                return Ok(());
            }
            Err(e) => {
                self.problem(id, e, shown);
                return Ok(());
            }
        };
        for c in node.children {
            if level == 0 {
                self.present(&c.id, ObjectKind::Chunk, shown)?;
            } else {
                self.file(&c.id, level - 1, shown)?;
            }
        }
        Ok(())
    }
}
