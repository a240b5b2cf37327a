//! Garbage collection: delete what no snapshot reaches, and what a crash left.
//!
//! Reachability starts at every ref and follows snapshot parents, directory
//! trees and file manifests down to chunk ids (chunks themselves are not
//! read; run records are kept with the snapshots that carry them). If any
//! reachable node cannot be read, gc stops before deleting
//! anything: it cannot know what that node would have kept alive.
//!
//! Order of operations keeps every step crash-safe: live objects of mostly
//! dead packs are first copied into new packs (committed and indexed), the
//! index is synced, and only then are old packs deleted.

use std::collections::HashSet;

use ds_format::pack::{Framing, HEADER, PackEntry};
use ds_format::tree::{DirRef, EntryData};
use ds_format::{ObjectId, ObjectKind, PackId};

use crate::index::Location;
use crate::packs::read_trailer;
use crate::{Result, Store, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Repack a pack when more than this fraction of its bytes is garbage.
    pub max_unused: f64,
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            max_unused: 0.05,
            dry_run: false,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub reachable_objects: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub objects_removed: u64,
    pub bytes_freed: u64,
    pub temp_files_removed: u64,
    pub stat_entries_pruned: u64,
    pub damaged_packs_kept: Vec<String>,
}

/// Every object reachable from the refs. Fails if a reachable node is
/// missing or damaged.
pub fn reachable(store: &Store) -> Result<HashSet<ObjectId>> {
    let mut seen = HashSet::new();
    let mut snaps: Vec<ObjectId> = store.refs().list()?.into_iter().map(|(_, id)| id).collect();
    while let Some(id) = snaps.pop() {
        if !seen.insert(id) {
            continue;
        }
        let s = store.load_snapshot(&id)?;
        snaps.extend(s.parents.iter().copied());
        seen.extend(s.runs.iter().copied());
        mark_dir(store, &s.root, &mut seen)?;
    }
    Ok(seen)
}

fn mark_dir(store: &Store, d: &DirRef, seen: &mut HashSet<ObjectId>) -> Result<()> {
    if seen.contains(&d.root) {
        return Ok(());
    }
    mark_dir_node(store, &d.root, seen)
}

fn mark_dir_node(store: &Store, id: &ObjectId, seen: &mut HashSet<ObjectId>) -> Result<()> {
    if !seen.insert(*id) {
        return Ok(());
    }
    match store.load_dir_node(id)? {
        ds_format::tree::DirNode::Index { children, .. } => {
            for c in children {
                mark_dir_node(store, &c.id, seen)?;
            }
        }
        ds_format::tree::DirNode::Leaf(entries) => {
            for e in entries {
                match e.data {
                    EntryData::Dir(d) => mark_dir(store, &d, seen)?,
                    EntryData::File(f) => match f.root_object() {
                        None => {}
                        Some((ObjectKind::Chunk, c)) => {
                            seen.insert(c);
                        }
                        Some((_, n)) => mark_file_node(store, &n, seen)?,
                    },
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

fn mark_file_node(store: &Store, id: &ObjectId, seen: &mut HashSet<ObjectId>) -> Result<()> {
    if !seen.insert(*id) {
        return Ok(());
    }
    let node = store.load_file_node(id)?;
    for c in node.children {
        if node.level == 0 {
            seen.insert(c.id);
        } else {
            mark_file_node(store, &c.id, seen)?;
        }
    }
    Ok(())
}

/// Runs a collection.
pub fn gc(store: &Store, opts: GcOptions) -> Result<GcReport> {
    store.require_exclusive()?;
    let mut report = GcReport::default();
    let live = reachable(store).map_err(|e| {
        StoreError::Corrupt(format!(
            "gc stopped before deleting anything: a reachable object could not be read ({e}); run `ds verify`"
        ))
    })?;
    report.reachable_objects = live.len() as u64;
    if !opts.dry_run {
        report.temp_files_removed = store.packs().clean_temp()?.0;
    }
    let index = store.index();
    let packs = store.packs();
    let on_disk: HashSet<PackId> = packs.list()?.into_iter().collect();
    let mut to_delete: Vec<(PackId, Vec<ObjectId>, u64)> = Vec::new();
    let mut to_copy: Vec<(PackId, Vec<PackEntry>)> = Vec::new();
    for id in &on_disk {
        let entries = match read_trailer(packs.as_ref(), id) {
            Ok(e) => e,
            Err(e @ StoreError::DamagedPack { .. }) => {
                report.damaged_packs_kept.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        let size = packs.size(id)?;
        let (mut live_here, mut live_bytes) = (Vec::new(), 0u64);
        for e in &entries {
            if !live.contains(&e.id) {
                continue;
            }
            match index.get(&e.id)? {
                Some(l) if l.pack == *id => {}
                Some(l) if on_disk.contains(&l.pack) => continue, // a copy lives elsewhere
                _ if opts.dry_run => {}
                _ => index.add_pack(id, std::slice::from_ref(e))?, // heal a lost index entry
            }
            live_bytes += u64::from(e.stored_len);
            live_here.push(*e);
        }
        let ids: Vec<ObjectId> = entries.iter().map(|e| e.id).collect();
        if live_here.is_empty() {
            to_delete.push((*id, ids, size));
        } else if (size - live_bytes) as f64 > opts.max_unused * size as f64
            && live_here.len() < entries.len()
        {
            to_copy.push((*id, live_here));
            to_delete.push((*id, ids, size - live_bytes));
        }
    }
    report.packs_repacked = to_copy.len() as u64;
    if opts.dry_run {
        report.packs_deleted = to_delete.len() as u64 - report.packs_repacked;
        report.bytes_freed = to_delete.iter().map(|d| d.2).sum();
        return Ok(report);
    }
    // 1. forget index entries of packs that vanished from disk (before
    //    repacking: `on_disk` does not list the packs repack writes)
    let mut stale: Vec<(PackId, Vec<ObjectId>)> = Vec::new();
    index.for_each_object(|oid, loc: Location| {
        if !on_disk.contains(&loc.pack) {
            match stale.iter_mut().find(|(p, _)| *p == loc.pack) {
                Some((_, v)) => v.push(oid),
                None => stale.push((loc.pack, vec![oid])),
            }
        }
        Ok(())
    })?;
    for (p, ids) in &stale {
        index.remove_pack(p, ids)?;
    }
    index.sync()?;
    // 2. copy live objects out of packs about to go
    report.packs_written = repack(store, &to_copy)?;
    // 3. delete
    for (id, ids, freed) in &to_delete {
        index.remove_pack(id, ids)?;
        index.sync()?;
        packs.remove(id)?;
        report.bytes_freed += freed;
        report.objects_removed += ids.iter().filter(|i| !live.contains(i)).count() as u64;
    }
    report.packs_deleted = to_delete.len() as u64 - report.packs_repacked;
    // 4. the stat cache may only name content that still exists
    report.stat_entries_pruned = index.stat_retain(|e| match e.file.root_object() {
        None => true,
        Some((_, id)) => live.contains(&id),
    })?;
    index.sync()?;
    Ok(report)
}

fn repack(store: &Store, from: &[(PackId, Vec<PackEntry>)]) -> Result<u64> {
    let packs = store.packs();
    let mut written = 0;
    let mut sink: Option<(Box<dyn crate::packs::PackSink>, Framing)> = None;
    let mut flush = |sink: &mut Option<(Box<dyn crate::packs::PackSink>, Framing)>| -> Result<()> {
        if let Some((mut s, framing)) = sink.take() {
            let (id, trailer, entries) = framing.seal();
            s.write(&trailer)?;
            s.commit(&id)?;
            store.index().add_pack(&id, &entries)?;
            written += 1;
        }
        Ok(())
    };
    for (pid, live) in from {
        for e in live {
            let bytes = packs.read_at(pid, e.offset, e.stored_len as usize)?;
            // Never copy damage forward: check before rewriting.
            let raw =
                crate::store::decode_stored(e.stored, bytes.clone(), e.raw_len).map_err(|why| {
                    StoreError::Damaged {
                        kind: e.kind.name(),
                        id: e.id,
                        pack: Some(*pid),
                        why,
                    }
                })?;
            if e.kind.hash(&raw) != e.id {
                return Err(StoreError::Damaged {
                    kind: e.kind.name(),
                    id: e.id,
                    pack: Some(*pid),
                    why: "content does not match its hash; gc will not copy it".into(),
                });
            }
            let (s, framing) = match &mut sink {
                Some(s) => s,
                None => {
                    let mut s = packs.create()?;
                    s.write(&HEADER)?;
                    sink.insert((s, Framing::new()))
                }
            };
            s.write(&bytes)?;
            framing.push(e.id, e.kind, e.stored, e.stored_len, e.raw_len);
            if s.written() >= store.config().pack_size {
                flush(&mut sink)?;
            }
        }
    }
    flush(&mut sink)?;
    store.index().sync()?;
    Ok(written)
}
