//! Runs a workload announces, found in its stdout and recorded as
//! snapshots of the live mount while it keeps running.
//!
//! A workload prints `[[DS-RUN:<id>]]{json}[[/DS-RUN:<id>]]`, or the
//! Dotscience library's `[[DOTSCIENCE-RUN:<uuid>]]{json}[[/DOTSCIENCE-RUN:<uuid>]]`
//! (pretty-printed over many lines). [`Scanner`] reads the raw byte stream,
//! before it is cut into log lines, so a marker split across reads, pipe
//! buffers or a container engine's 16 KiB frames is found whole. A body
//! over [`MAX_META`] is skipped to its end marker without being held (a
//! warning on the task's log); nothing a workload prints can stop the task.
//!
//! Each run found is handed to the recorder thread ([`record`]), which
//! snapshots the mount with the run's record attached (O(changed), a
//! consistent cut) and adds where and how it ran: task, runner, executor,
//! image and digest, command, git commit, CPU time and peak memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use ds_format::ObjectId;
use ds_format::run::{MAX_META, MAX_RUN, Origin, Run};
use ds_fuse::MountHandle;
use ds_store::Store;
use ds_store::vfs::CommitOptions;

/// The longest run id a marker may carry.
const MAX_ID: usize = 256;
const OPENERS: [(&[u8], Origin); 2] = [
    (b"[[DS-RUN:", Origin::Ds),
    (b"[[DOTSCIENCE-RUN:", Origin::Dotscience),
];

/// One marker found: its body, or why it was not taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    pub origin: Origin,
    pub name: String,
    pub body: Result<Vec<u8>, String>,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Seek,
    Body {
        origin: Origin,
        name: String,
        close: Vec<u8>,
        /// Bytes of the body thrown away because it was too big.
        dropped: usize,
    },
}

/// Finds run markers in a byte stream fed in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Scanner {
    buf: Vec<u8>,
    state: State,
}

enum Open {
    /// A whole opening marker: where it starts, where its body starts.
    At {
        start: usize,
        body: usize,
        origin: Origin,
        name: String,
    },
    /// Maybe a marker starting here; more bytes will tell.
    Partial(usize),
    None,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn find_open(buf: &[u8]) -> Open {
    let mut from = 0;
    while let Some(i) = buf[from..]
        .iter()
        .position(|&b| b == b'[')
        .map(|i| i + from)
    {
        let rest = &buf[i..];
        for (opener, origin) in OPENERS {
            if rest.len() < opener.len() {
                if opener.starts_with(rest) {
                    return Open::Partial(i);
                }
                continue;
            }
            if !rest.starts_with(opener) {
                continue;
            }
            let idpart = &rest[opener.len()..];
            let n = idpart.iter().take_while(|&&b| id_byte(b)).count();
            if n > MAX_ID {
                break;
            }
            match &idpart[n..] {
                [] | [b']'] => return Open::Partial(i),
                [b']', b']', ..] if n > 0 => {
                    return Open::At {
                        start: i,
                        body: i + opener.len() + n + 2,
                        origin,
                        name: String::from_utf8_lossy(&idpart[..n]).into_owned(),
                    };
                }
                _ => {}
            }
        }
        from = i + 1;
    }
    Open::None
}

impl Scanner {
    /// Feeds the next piece of the stream; runs found go to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Detected>) {
        self.buf.extend_from_slice(data);
        loop {
            match &mut self.state {
                State::Seek => match find_open(&self.buf) {
                    Open::At {
                        body, origin, name, ..
                    } => {
                        let close = match origin {
                            Origin::Dotscience => format!("[[/DOTSCIENCE-RUN:{name}]]"),
                            _ => format!("[[/DS-RUN:{name}]]"),
                        };
                        self.buf.drain(..body);
                        self.state = State::Body {
                            origin,
                            name,
                            close: close.into_bytes(),
                            dropped: 0,
                        };
                    }
                    Open::Partial(at) => {
                        self.buf.drain(..at);
                        return;
                    }
                    Open::None => {
                        self.buf.clear();
                        return;
                    }
                },
                State::Body {
                    origin,
                    name,
                    close,
                    dropped,
                } => {
                    let end = find(&self.buf, close);
                    // A new run beginning first: this one's end marker was
                    // lost or misspelt; the new one must not be.
                    if let Open::At { start, .. } = find_open(&self.buf)
                        && end.is_none_or(|e| start < e)
                    {
                        out.push(Detected {
                            origin: *origin,
                            name: std::mem::take(name),
                            body: Err("another run began before its end marker".into()),
                        });
                        self.buf.drain(..start);
                        self.state = State::Seek;
                        continue;
                    }
                    if let Some(end) = end {
                        let body = if *dropped > 0 {
                            Err(format!(
                                "run metadata of {} bytes is over the {MAX_META} byte limit",
                                *dropped + end
                            ))
                        } else {
                            Ok(self.buf[..end].to_vec())
                        };
                        out.push(Detected {
                            origin: *origin,
                            name: std::mem::take(name),
                            body,
                        });
                        let skip = end + close.len();
                        self.buf.drain(..skip);
                        self.state = State::Seek;
                        continue;
                    }
                    let keep = close.len() - 1;
                    if *dropped > 0 || self.buf.len() > MAX_META + keep {
                        let cut = self.buf.len().saturating_sub(keep);
                        *dropped += cut;
                        self.buf.drain(..cut);
                    }
                    return;
                }
            }
        }
    }

    /// The stream ended: a run still open is reported as unterminated.
    pub fn finish(&mut self, out: &mut Vec<Detected>) {
        if let State::Body { origin, name, .. } = std::mem::take(&mut self.state) {
            out.push(Detected {
                origin,
                name,
                body: Err("the output ended before the run's end marker".into()),
            });
        }
        self.buf.clear();
    }
}

/// The task's side of run detection, shared by its output readers and the
/// recorder: where found runs go, and what the executor learnt (the
/// workload's pid for CPU and memory, the image's digest).
#[derive(Debug, Default)]
pub struct Runs {
    tx: Mutex<Option<Sender<Detected>>>,
    pid: AtomicU32,
    image_digest: Mutex<Option<String>>,
    /// The workload is a process group the runner may stop while a run is
    /// recorded (the process executor; not containers).
    pausable: std::sync::atomic::AtomicBool,
    /// Runs found and not yet recorded while the workload is stopped.
    pending: std::sync::atomic::AtomicUsize,
}

impl Runs {
    pub fn new() -> (Arc<Runs>, Receiver<Detected>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let r = Runs {
            tx: Mutex::new(Some(tx)),
            ..Runs::default()
        };
        (Arc::new(r), rx)
    }

    /// A scanner for one stdout stream.
    pub fn tap(self: &Arc<Self>) -> Tap {
        Tap {
            scanner: Scanner::default(),
            runs: self.clone(),
            found: Vec::new(),
        }
    }

    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// The workload is process group `pgid`, which may be stopped
    /// (SIGSTOP) from the moment a run's end marker is read until the
    /// run's snapshot is taken, so the snapshot holds the files as they
    /// were when the run was announced, not as the workload went on to
    /// change them.
    pub fn set_pausable_group(&self, pgid: u32) {
        self.set_pid(pgid);
        self.pausable.store(true, Ordering::Relaxed);
    }

    fn signal_group(&self, sig: nix::sys::signal::Signal) {
        let pid = self.pid.load(Ordering::Relaxed);
        if pid != 0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// A run was found: stop the workload until it is recorded.
    fn hold(&self) {
        if self.pausable.load(Ordering::Relaxed) {
            self.pending.fetch_add(1, Ordering::SeqCst);
            self.signal_group(nix::sys::signal::Signal::SIGSTOP);
        }
    }

    /// A run found was recorded (or refused): let the workload go on once
    /// none is pending.
    fn release(&self) {
        if self.pausable.load(Ordering::Relaxed) && self.pending.fetch_sub(1, Ordering::SeqCst) == 1
        {
            self.signal_group(nix::sys::signal::Signal::SIGCONT);
        }
    }

    pub fn set_image_digest(&self, d: String) {
        *self.image_digest.lock().expect("not poisoned") = Some(d);
    }

    /// No more runs will be found: the recorder ends once it has recorded
    /// those already found.
    pub fn close(&self) {
        self.tx.lock().expect("not poisoned").take();
    }

    fn send(&self, d: Detected) {
        if let Some(tx) = &*self.tx.lock().expect("not poisoned") {
            self.hold();
            if tx.send(d).is_err() {
                self.release();
            }
        }
    }

    /// CPU seconds (the workload and the children it waited for) and peak
    /// resident memory of the workload's main process, from /proc.
    fn usage(&self) -> (Option<f64>, Option<u64>) {
        let pid = self.pid.load(Ordering::Relaxed);
        if pid == 0 {
            return (None, None);
        }
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the command name, which may hold spaces.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split(' ').collect();
                let ticks: u64 = (11..15).filter_map(|i| f.get(i)?.parse::<u64>().ok()).sum();
                // USER_HZ: /proc reports clock ticks of 1/100 s on Linux.
                Some(ticks as f64 / 100.0)
            });
        let mem = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
                let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            });
        (cpu, mem)
    }
}

/// A [`Scanner`] on one stdout stream, sending what it finds.
#[derive(Debug)]
pub struct Tap {
    scanner: Scanner,
    runs: Arc<Runs>,
    found: Vec<Detected>,
}

impl Tap {
    pub fn feed(&mut self, data: &[u8]) {
        self.scanner.feed(data, &mut self.found);
        for d in self.found.drain(..) {
            self.runs.send(d);
        }
    }

    pub fn finish(&mut self) {
        self.scanner.finish(&mut self.found);
        for d in self.found.drain(..) {
            self.runs.send(d);
        }
    }
}

/// Where and how the task's runs execute.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub task: String,
    pub runner: String,
    pub executor: String,
    pub image: Option<String>,
    pub command: Vec<String>,
    pub repo: Option<String>,
    pub commit: Option<String>,
    /// The workspace's path as the workload sees it.
    pub home: String,
    /// The datasets mounted into the task, at the snapshots it saw.
    pub datasets: Vec<ds_format::run::DatasetUse>,
}

impl Provenance {
    /// Fills in a run's code and environment.
    pub fn stamp(&self, r: &mut Run, runs: &Runs) {
        r.task = Some(self.task.clone());
        r.code.repo = self.repo.clone();
        r.code.commit = self.commit.clone();
        for d in &self.datasets {
            if !r.datasets.contains(d) {
                r.datasets.push(d.clone());
            }
        }
        let (cpu, mem) = runs.usage();
        r.environment = ds_format::run::Environment {
            executor: Some(self.executor.clone()),
            image: self.image.clone(),
            image_digest: runs.image_digest.lock().expect("not poisoned").clone(),
            command: self.command.clone(),
            runner: Some(self.runner.clone()),
            host: None,
            cpu_seconds: cpu,
            peak_memory_bytes: mem,
        };
    }

    /// The snapshot's metadata for a run of this task.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("task".to_string(), self.task.clone()),
            ("runner".to_string(), self.runner.clone()),
        ])
    }
}

/// The run records in `.ds/runs/*.json` of the mount at `home_path` that
/// are new since snapshot `last`, stamped; warnings go to `say`.
pub fn pending_files(
    store: &Store,
    home_path: &std::path::Path,
    last: Option<ObjectId>,
    prov: &Provenance,
    runs: &Runs,
    say: &dyn Fn(String),
) -> Vec<Run> {
    let parent = match last.map(|l| store.load_snapshot(&l)).transpose() {
        Ok(p) => p,
        Err(e) => {
            say(format!(
                "warning: cannot read snapshot {last:?} for .ds/runs: {e}"
            ));
            return Vec::new();
        }
    };
    match ds_store::runs::pending(store, home_path, parent.as_ref(), &prov.home) {
        Ok((mut found, warnings)) => {
            for w in warnings {
                say(format!("warning: {w}"));
            }
            for r in &mut found {
                for w in &r.warnings {
                    say(format!("warning: run {:?}: {w}", r.name));
                }
                prov.stamp(r, runs);
            }
            found
        }
        Err(e) => {
            say(format!("warning: cannot read .ds/runs: {e}"));
            Vec::new()
        }
    }
}

/// Records every run found until the task's output ends: a snapshot of
/// the mount per run. Returns the last snapshot made (or `last` as given)
/// and the runs whose snapshot failed, for the task's final snapshot.
pub fn record(
    rx: Receiver<Detected>,
    handle: &MountHandle,
    ctx: (&Store, &std::path::Path),
    prov: &Provenance,
    runs: &Runs,
    mut last: Option<ObjectId>,
    say: &dyn Fn(String),
) -> (Option<ObjectId>, Vec<Run>) {
    let mut carried: Vec<Run> = Vec::new();
    for d in rx {
        last = record_one(d, handle, ctx, prov, runs, last, &mut carried, say);
        runs.release();
    }
    (last, carried)
}

/// Records one run found (see [`record`]); returns the newest snapshot.
#[allow(clippy::too_many_arguments)]
fn record_one(
    d: Detected,
    handle: &MountHandle,
    ctx: (&Store, &std::path::Path),
    prov: &Provenance,
    runs: &Runs,
    mut last: Option<ObjectId>,
    carried: &mut Vec<Run>,
    say: &dyn Fn(String),
) -> Option<ObjectId> {
    let (store, home_path) = ctx;
    {
        let label = match d.origin {
            Origin::Dotscience => "Dotscience run",
            _ => "run",
        };
        let body = match d.body {
            Ok(b) => b,
            Err(why) => {
                say(format!("warning: {label} {:?} not recorded: {why}", d.name));
                return last;
            }
        };
        let mut run = match Run::from_workload(&d.name, d.origin, &body) {
            Ok(r) => r,
            Err(why) => {
                say(format!("warning: {label} {:?} not recorded: {why}", d.name));
                return last;
            }
        };
        run.relativize(&prov.home);
        for w in &run.warnings {
            say(format!("warning: {label} {:?}: {w}", d.name));
        }
        prov.stamp(&mut run, runs);
        if run.encode().len() > MAX_RUN {
            say(format!(
                "warning: {label} {:?} not recorded: its record is over {MAX_RUN} bytes",
                d.name
            ));
            return last;
        }
        let mut all = std::mem::take(carried);
        all.extend(pending_files(store, home_path, last, prov, runs, say));
        all.push(run);
        let message = format!("run {}", d.name);
        match handle.snapshot(CommitOptions {
            message,
            metadata: prov.metadata(),
            source: Vec::new(),
            runs: all.clone(),
        }) {
            Ok(c) => {
                say(format!(
                    "recorded {label} {} ({}) in snapshot {}",
                    d.name,
                    c.runs.last().map(|r| r.short()).unwrap_or_default(),
                    c.id.short()
                ));
                last = Some(c.id);
            }
            Err(e) => {
                say(format!(
                    "warning: {label} {:?}: its snapshot failed: {e}; it goes with the next one",
                    d.name
                ));
                // Files already picked are picked again from `last`.
                *carried = all
                    .into_iter()
                    .filter(|r| r.origin != Some(Origin::File))
                    .collect();
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> Vec<Detected> {
        let mut s = Scanner::default();
        let mut out = Vec::new();
        for p in parts {
            s.feed(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn markers_are_found_at_any_split() {
        let text = b"noise [x] [[DS-RUN:r1]]{\"a\":1}[[/DS-RUN:r1]]\n\
            [[DOTSCIENCE-RUN:u-2]]{\n    \"summary\": {}\n}[[/DOTSCIENCE-RUN:u-2]]\ntail [[";
        let want = scan(&[text]);
        assert_eq!(want.len(), 2, "{want:?}");
        assert_eq!(want[0].name, "r1");
        assert_eq!(want[0].body.as_deref().unwrap(), b"{\"a\":1}");
        assert_eq!(want[1].origin, Origin::Dotscience);
        for cut in 0..text.len() {
            assert_eq!(scan(&[&text[..cut], &text[cut..]]), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(scan(&bytes), want);
    }

    #[test]
    fn a_wrong_end_marker_or_an_oversized_body_is_reported_not_held() {
        let r = scan(&[b"[[DS-RUN:a]]{}[[/DS-RUN:b]]"]);
        assert_eq!(r.len(), 1);
        assert!(r[0].body.is_err(), "unterminated");
        let r = scan(&[b"[[DS-RUN:a]]{}[[/DS-RUN:x]] [[DS-RUN:b]]{}[[/DS-RUN:b]]"]);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].body.is_err());
        assert_eq!(r[1].name, "b");
        assert_eq!(r[1].body.as_deref().unwrap(), b"{}");
        let big = vec![b'x'; 10 << 20];
        let mut s = Scanner::default();
        let mut out = Vec::new();
        s.feed(b"[[DS-RUN:big]]", &mut out);
        for c in big.chunks(64 << 10) {
            s.feed(c, &mut out);
            assert!(s.buf.len() <= MAX_META + (64 << 10), "held {}", s.buf.len());
        }
        s.feed(b"[[/DS-RUN:big]][[DS-RUN:ok]]{}[[/DS-RUN:ok]]", &mut out);
        assert_eq!(out.len(), 2);
        assert!(out[0].body.as_ref().unwrap_err().contains("over the"));
        assert_eq!(out[1].body.as_deref().unwrap(), b"{}");
    }
}
