//! The process executor: the workload as a child process of the runner,
//! with the workspace mount as `$HOME` and working directory.
//!
//! The contract is the container executor's: the command runs as given
//! (no shell), in its own process group (so a cancel reaches its children
//! too), with a clean environment — the runner's token and settings never
//! reach the workload — plus the task's variables. Output is read as raw
//! bytes and cut into lines for the task's log ([`crate::ledger`]).

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ds_proto::runner::TaskSpec;
use ds_proto::{MAX_LOG_LINE, TaskId};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::ledger::{Control, Ledger, STDERR, STDOUT};
use crate::runs::{Runs, Tap};

/// How a workload ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Where a running workload's output and state go, shared by both
/// executors: the task's log, its cancel/drop flags, run detection.
#[derive(Debug, Clone, Copy)]
pub struct Io<'a> {
    pub ledger: &'a Arc<Ledger>,
    pub control: &'a Control,
    pub runs: &'a Arc<Runs>,
}

/// Variables passed through from the runner's own environment; everything
/// else is dropped.
const PASS_ENV: &[&str] = &[
    "PATH", "LANG", "LC_ALL", "TZ", "TERM", "USER", "LOGNAME", "SHELL",
];

/// Runs `spec.command` in `home` until it exits, is cancelled (SIGTERM,
/// the grace period, SIGKILL) or dropped (SIGKILL at once). Its output goes
/// to `ledger` as it comes. Err: it could not be started (the message says
/// why, e.g. no such command).
pub fn run(spec: &TaskSpec, id: &TaskId, home: &Path, io: Io<'_>) -> Result<Exit, String> {
    let Io {
        ledger,
        control,
        runs,
    } = io;
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .current_dir(home)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for k in PASS_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd.env("HOME", home)
        .env("DS_TASK", id.as_str())
        .env("DS_WORKSPACE", &spec.workspace)
        .envs(&spec.env);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", spec.command[0]))?;
    // Its own process group (process_group(0)): stopped while a run it
    // announced is recorded.
    runs.set_pausable_group(child.id());
    if let Ok(port) = u16::try_from(spec.port)
        && port != 0
    {
        // A child process serves on the runner's own loopback.
        control.set_target(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let readers = [
        reader(child.stdout.take(), STDOUT, id, ledger, Some(runs.tap())),
        reader(child.stderr.take(), STDERR, id, ledger, None),
    ];
    let exit = wait(&mut child, control);
    // Whatever the workload left running in its group goes with it: it
    // would hold the pipes and the mount open.
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    exit
}

fn wait(child: &mut Child, control: &Control) -> Result<Exit, String> {
    let pgid = Pid::from_raw(child.id() as i32);
    let mut kill_at: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                return Ok(Exit {
                    code: st.code(),
                    signal: st.signal(),
                });
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the workload: {e}")),
        }
        if control.dropped() {
            let _ = killpg(pgid, Signal::SIGKILL);
        } else if let Some(grace) = control.cancelled() {
            match kill_at {
                None => {
                    let _ = killpg(pgid, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + Duration::from_secs(grace.into()));
                }
                Some(t) if Instant::now() >= t => {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A thread that cuts `pipe` into lines (at most [`MAX_LOG_LINE`] bytes
/// each; a longer line continues on the next) for the task's log, and
/// shows the raw bytes to `tap` (run markers).
fn reader(
    pipe: Option<impl Read + Send + 'static>,
    stream: u32,
    id: &TaskId,
    ledger: &Arc<Ledger>,
    mut tap: Option<Tap>,
) -> Option<JoinHandle<()>> {
    let mut pipe = pipe?;
    let (id, ledger) = (id.clone(), ledger.clone());
    std::thread::Builder::new()
        .name(format!("ds-task-out{stream}"))
        .spawn(move || {
            let mut lines = LineCutter::default();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Some(t) = &mut tap {
                            t.feed(&buf[..n]);
                        }
                        lines.feed(&buf[..n], |l| ledger.line(&id, stream, l))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            lines.finish(|l| ledger.line(&id, stream, l));
            if let Some(t) = &mut tap {
                t.finish();
            }
        })
        .ok()
}

/// Cuts a byte stream into lines without their newline; a line longer than
/// [`MAX_LOG_LINE`] is given in pieces of that size, none lost.
#[derive(Debug, Default)]
pub struct LineCutter {
    cur: Vec<u8>,
    /// The last piece was cut at the size limit: a newline right after it
    /// ends that line, not an empty one.
    cut: bool,
}

impl LineCutter {
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        while !data.is_empty() {
            let room = MAX_LOG_LINE - self.cur.len();
            let take = &data[..data.len().min(room)];
            match take.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.cur.extend_from_slice(&take[..i]);
                    if !(self.cut && self.cur.is_empty()) {
                        emit(&self.cur);
                    }
                    self.cur.clear();
                    self.cut = false;
                    data = &data[i + 1..];
                }
                None => {
                    self.cur.extend_from_slice(take);
                    data = &data[take.len()..];
                    self.cut = false;
                    if self.cur.len() == MAX_LOG_LINE {
                        emit(&self.cur);
                        self.cur.clear();
                        self.cut = true;
                    }
                }
            }
        }
    }

    /// The last line, if the stream did not end with a newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.cur.is_empty() {
            emit(&self.cur);
            self.cur.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut c = LineCutter::default();
        let mut out = Vec::new();
        for p in parts {
            c.feed(p, |l| out.push(l.to_vec()));
        }
        c.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        assert_eq!(
            cut(&[b"ab", b"c\nd", b"e\n\nf"]),
            vec![b"abc".to_vec(), b"de".to_vec(), b"".to_vec(), b"f".to_vec()]
        );
    }

    #[test]
    fn an_endless_line_comes_in_pieces_with_nothing_lost() {
        let big = vec![b'q'; MAX_LOG_LINE * 2 + 3];
        let out = cut(&[&big[..100], &big[100..], b"\n"]);
        assert_eq!(out.len(), 3);
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), big.len());
        let exact = vec![b'q'; MAX_LOG_LINE];
        let out = cut(&[&exact, b"\nnext\n"]);
        assert_eq!(
            out,
            vec![exact.clone(), b"next".to_vec()],
            "no empty line after a cut"
        );
    }
}
