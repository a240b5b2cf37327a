//! What the runner holds for each task it runs, shared between the task's
//! own thread (which adds output lines and finally the result) and the hub
//! link (which batches, sends, resends after a reconnect and forgets what
//! the hub acknowledged).
//!
//! Why it outlives a connection: a reconnect must resume without a lost or
//! duplicated line. Lines are numbered once, when they arrive; a batch is
//! kept until the hub acknowledges it and sent again, unchanged, on every
//! new connection (the hub stores a batch under its first line's number,
//! so a resent batch is stored once). `Done` waits until every batch is
//! acknowledged and is itself kept until the hub's `DoneAck`.
//!
//! Backpressure: a task whose unacknowledged output exceeds
//! [`MAX_BUFFERED`] blocks in [`Ledger::line`] (and so its workload blocks
//! on a full pipe) until the hub catches up. Nothing is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ds_proto::runner::{Done, Held, LogBatch, LogLine, Started};
use ds_proto::{MAX_LOG_BATCH_BYTES, MAX_LOG_BATCH_LINES, MAX_LOG_LINE, TaskId};

/// Output bytes a task may have in flight before its workload is paused.
pub const MAX_BUFFERED: usize = 64 << 20;

/// Output streams, as the protocol numbers them.
pub const STDOUT: u32 = 1;
pub const STDERR: u32 = 2;
/// Lines the runner itself writes on a task's log ("pulling …").
pub const RUNNER: u32 = 3;

/// Orders from the hub to a task's thread.
#[derive(Debug, Default)]
pub struct Control {
    cancel: AtomicBool,
    grace_seconds: AtomicU32,
    dropped: AtomicBool,
    /// Where the task's port (`--port`) is reachable from the runner, once
    /// its executor knows: the relay's tunnels connect there.
    target: std::sync::Mutex<Option<std::net::SocketAddr>>,
}

impl Control {
    pub fn set_target(&self, a: std::net::SocketAddr) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(a);
    }
    pub fn target(&self) -> Option<std::net::SocketAddr> {
        *self.target.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn cancel(&self, grace_seconds: u32) {
        self.grace_seconds.store(grace_seconds, Ordering::Relaxed);
        self.cancel.store(true, Ordering::Relaxed);
    }
    /// The hub no longer counts this runner's lease: stop, push nothing.
    pub fn drop_task(&self) {
        self.dropped.store(true, Ordering::Relaxed);
    }
    pub fn cancelled(&self) -> Option<u32> {
        self.cancel
            .load(Ordering::Relaxed)
            .then(|| self.grace_seconds.load(Ordering::Relaxed))
    }
    pub fn dropped(&self) -> bool {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Slot {
    lease: u64,
    control: Arc<Control>,
    /// Number of the next line to arrive.
    next_line: u64,
    /// Lines not in a batch yet (the first is line `next_line - pending.len()`).
    pending: Vec<LogLine>,
    /// Batches not acknowledged, oldest first; `sent` of them were sent on
    /// the current connection.
    unacked: VecDeque<LogBatch>,
    sent: usize,
    /// Bytes of output in `pending` and `unacked`.
    buffered: usize,
    started: Option<Started>,
    started_sent: bool,
    done: Option<Done>,
    done_sent: bool,
}

impl Slot {
    fn first_pending(&self) -> u64 {
        self.next_line - self.pending.len() as u64
    }
}

/// What the link should send now.
#[derive(Debug, Default)]
pub struct Outbox {
    pub started: Vec<Started>,
    pub batches: Vec<LogBatch>,
    pub done: Vec<Done>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    slots: Mutex<HashMap<TaskId, Slot>>,
    /// Signalled when output is acknowledged (wakes blocked writers) or a
    /// task leaves.
    room: Condvar,
}

impl Ledger {
    fn slots(&self) -> MutexGuard<'_, HashMap<TaskId, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a new task; false if it is already held (an assignment seen twice).
    pub fn admit(&self, id: &TaskId, lease: u64) -> Option<Arc<Control>> {
        let mut s = self.slots();
        if s.contains_key(id) {
            return None;
        }
        let control = Arc::new(Control::default());
        s.insert(
            id.clone(),
            Slot {
                lease,
                control: control.clone(),
                next_line: 0,
                pending: Vec::new(),
                unacked: VecDeque::new(),
                sent: 0,
                buffered: 0,
                started: None,
                started_sent: false,
                done: None,
                done_sent: false,
            },
        );
        crate::metrics::TASKS_RUNNING.set(s.len() as u64);
        Some(control)
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn control(&self, id: &TaskId) -> Option<Arc<Control>> {
        self.slots().get(id).map(|s| s.control.clone())
    }

    /// Every held task, for a hello or a heartbeat.
    pub fn held(&self) -> Vec<Held> {
        self.slots()
            .iter()
            .map(|(id, s)| Held {
                task: id.to_string(),
                lease: s.lease,
                next_line: s.unacked.front().map_or(s.first_pending(), |b| b.first),
            })
            .collect()
    }

    /// Adds one line of output (split into pieces of at most
    /// [`MAX_LOG_LINE`] bytes; nothing is cut). Blocks while the task has
    /// too much output in flight.
    pub fn line(&self, id: &TaskId, stream: u32, text: &[u8]) {
        let pieces: Vec<&[u8]> = if text.is_empty() {
            vec![text]
        } else {
            text.chunks(MAX_LOG_LINE).collect()
        };
        crate::metrics::LOG_LINES.add(pieces.len() as u64);
        let mut s = self.slots();
        for p in pieces {
            loop {
                let Some(slot) = s.get_mut(id) else {
                    return;
                };
                if slot.buffered < MAX_BUFFERED || slot.control.dropped() {
                    slot.pending.push(LogLine {
                        stream,
                        text: p.to_vec(),
                        time_ms: now_ms(),
                    });
                    slot.next_line += 1;
                    slot.buffered += p.len();
                    break;
                }
                s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    pub fn started(&self, id: &TaskId, st: Started) {
        if let Some(slot) = self.slots().get_mut(id) {
            slot.started = Some(st);
            slot.started_sent = false;
        }
    }

    /// The task ended with `done`; sent once all its output is acknowledged.
    /// `None`: the task was dropped, forget it at once.
    pub fn finish(&self, id: &TaskId, done: Option<Done>) {
        let mut s = self.slots();
        match done {
            Some(mut d) => {
                if let Some(slot) = s.get_mut(id) {
                    d.lines = slot.next_line;
                    slot.done = Some(d);
                }
            }
            None => {
                s.remove(id);
            }
        }
        crate::metrics::TASKS_RUNNING.set(s.len() as u64);
        self.room.notify_all();
    }

    /// A new connection: everything unacknowledged goes again.
    pub fn reset_sent(&self) {
        for slot in self.slots().values_mut() {
            slot.sent = 0;
            slot.started_sent = false;
            slot.done_sent = false;
        }
    }

    /// Cuts pending lines into batches and returns what is to be sent.
    pub fn outbox(&self) -> Outbox {
        let mut out = Outbox::default();
        for (id, slot) in self.slots().iter_mut() {
            if let Some(st) = &slot.started
                && !slot.started_sent
            {
                out.started.push(st.clone());
                slot.started_sent = true;
            }
            while !slot.pending.is_empty() {
                let mut n = 0;
                let mut bytes = 0;
                while n < slot.pending.len() && n < MAX_LOG_BATCH_LINES {
                    let len = slot.pending[n].text.len();
                    if n > 0 && bytes + len > MAX_LOG_BATCH_BYTES {
                        break;
                    }
                    bytes += len;
                    n += 1;
                }
                let first = slot.first_pending();
                let lines: Vec<LogLine> = slot.pending.drain(..n).collect();
                slot.unacked.push_back(LogBatch {
                    task: id.to_string(),
                    lease: slot.lease,
                    first,
                    lines,
                });
            }
            out.batches
                .extend(slot.unacked.iter().skip(slot.sent).cloned());
            slot.sent = slot.unacked.len();
            if let Some(d) = &slot.done
                && slot.unacked.is_empty()
                && !slot.done_sent
            {
                out.done.push(d.clone());
                slot.done_sent = true;
            }
        }
        out
    }

    /// The hub holds every line of `id` before `next_line`.
    pub fn ack(&self, id: &TaskId, next_line: u64) {
        let mut s = self.slots();
        if let Some(slot) = s.get_mut(id) {
            while let Some(b) = slot.unacked.front() {
                if b.first + b.lines.len() as u64 > next_line {
                    break;
                }
                let b = slot.unacked.pop_front().expect("front exists");
                slot.buffered -= b.lines.iter().map(|l| l.text.len()).sum::<usize>();
                slot.sent = slot.sent.saturating_sub(1);
            }
        }
        self.room.notify_all();
    }

    /// The hub no longer counts task `id` as this runner's: its thread is
    /// told to stop and push nothing; a task that already ended (its
    /// `DoneAck` was lost with a connection) is forgotten at once.
    pub fn drop_task(&self, id: &TaskId) {
        let mut s = self.slots();
        if let Some(slot) = s.get(id) {
            slot.control.drop_task();
            if slot.done.is_some() {
                s.remove(id);
            }
        }
        crate::metrics::TASKS_RUNNING.set(s.len() as u64);
        self.room.notify_all();
    }

    /// The hub applied (or refused) the task's Done: forget the task.
    pub fn done_acked(&self, id: &TaskId) {
        let mut s = self.slots();
        if s.get(id).is_some_and(|slot| slot.done.is_some()) {
            s.remove(id);
        }
        crate::metrics::TASKS_RUNNING.set(s.len() as u64);
        self.room.notify_all();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TaskId {
        TaskId::generate(1, 2)
    }

    #[test]
    fn unacked_batches_are_resent_unchanged_after_a_reconnect() {
        let l = Ledger::default();
        let t = id();
        l.admit(&t, 1).unwrap();
        l.line(&t, STDOUT, b"a");
        l.line(&t, STDOUT, b"b");
        let o = l.outbox();
        assert_eq!(o.batches.len(), 1);
        assert_eq!(o.batches[0].first, 0);
        l.line(&t, STDERR, b"c");
        let o2 = l.outbox();
        assert_eq!(o2.batches.len(), 1, "only the new batch");
        assert_eq!(o2.batches[0].first, 2);
        l.ack(&t, 2);
        l.reset_sent();
        let o3 = l.outbox();
        assert_eq!(o3.batches.len(), 1, "the acked batch is gone");
        assert_eq!(o3.batches[0], o2.batches[0], "resent as it was");
        assert_eq!(l.held()[0].next_line, 2);
    }

    #[test]
    fn done_waits_for_every_ack_and_then_for_its_own() {
        let l = Ledger::default();
        let t = id();
        l.admit(&t, 3).unwrap();
        l.line(&t, STDOUT, b"x");
        l.finish(&t, Some(Done::default()));
        let o = l.outbox();
        assert!(o.done.is_empty(), "a batch is still unacknowledged");
        l.ack(&t, 1);
        let o = l.outbox();
        assert_eq!(o.done.len(), 1);
        assert_eq!(o.done[0].lines, 1);
        assert!(l.outbox().done.is_empty(), "sent once per connection");
        l.reset_sent();
        assert_eq!(l.outbox().done.len(), 1, "sent again after a reconnect");
        l.done_acked(&t);
        assert!(l.is_empty());
    }

    #[test]
    fn a_dropped_task_that_already_ended_is_forgotten() {
        let l = Ledger::default();
        let (a, b) = (id(), TaskId::generate(1, 3));
        let ca = l.admit(&a, 1).unwrap();
        l.admit(&b, 1).unwrap();
        l.finish(&b, Some(Done::default()));
        l.drop_task(&a);
        l.drop_task(&b);
        assert!(ca.dropped(), "a running task is told to stop");
        assert_eq!(
            l.len(),
            1,
            "the ended one is gone, the running one stays until its thread ends"
        );
    }

    #[test]
    fn long_lines_are_split_not_cut_and_batches_respect_the_limits() {
        let l = Ledger::default();
        let t = id();
        l.admit(&t, 1).unwrap();
        let long = vec![b'x'; MAX_LOG_LINE * 2 + 5];
        l.line(&t, STDOUT, &long);
        for _ in 0..MAX_LOG_BATCH_LINES + 10 {
            l.line(&t, STDOUT, b"y");
        }
        let o = l.outbox();
        let total: usize = o.batches.iter().map(|b| b.lines.len()).sum();
        assert_eq!(total, 3 + MAX_LOG_BATCH_LINES + 10);
        let bytes: usize = o.batches[0]
            .lines
            .iter()
            .take(3)
            .map(|l| l.text.len())
            .sum();
        assert_eq!(bytes, long.len());
        let mut next = 0;
        for b in &o.batches {
            assert_eq!(b.first, next);
            assert!(b.lines.len() <= MAX_LOG_BATCH_LINES);
            assert!(b.lines.iter().map(|l| l.text.len()).sum::<usize>() <= MAX_LOG_BATCH_BYTES);
            next += b.lines.len() as u64;
        }
    }

    #[test]
    fn a_writer_blocks_when_too_much_is_in_flight_until_acked() {
        let l = Arc::new(Ledger::default());
        let t = id();
        l.admit(&t, 1).unwrap();
        let big = vec![b'z'; MAX_LOG_LINE];
        for _ in 0..MAX_BUFFERED / MAX_LOG_LINE {
            l.line(&t, STDOUT, &big);
        }
        let (l2, t2) = (l.clone(), t.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let w = std::thread::spawn(move || {
            l2.line(&t2, STDOUT, b"one more");
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the writer must wait"
        );
        let o = l.outbox();
        let next: u64 = o.batches.iter().map(|b| b.lines.len() as u64).sum();
        l.ack(&t, next);
        rx.recv().unwrap();
        w.join().unwrap();
    }
}
