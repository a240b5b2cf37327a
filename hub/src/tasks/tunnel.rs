//! The hub's end of relayed connections (the HTTP relay to task ports).
//!
//! A runner accepts no inbound connections, so the hub asks it, on its
//! Attach stream, to open a tunnel ([`OpenTunnel`]); the runner connects to
//! the task's port and calls `Tunnel`, and the hub pairs that call with the
//! waiting request by the tunnel's random id (and the runner's name: a
//! runner can only answer tunnels opened to it). From then on the bytes
//! travel as [`TunnelFrame`]s on that call's own HTTP/2 stream, which has
//! its own flow-control window: a browser that stops reading stalls its
//! own tunnel and nothing else — not other tunnels, and not the runner's
//! control stream. On the hub the tunnel is an in-memory duplex pipe that
//! the relay's HTTP client speaks over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ds_proto::RunnerName;
use ds_proto::runner::{OpenTunnel, TunnelFrame, hub_message};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::TaskHub;
use super::record::Record;
use crate::error::{HubError, Result};
use crate::metrics::METRICS;

/// How long a runner has to answer an OpenTunnel.
const OPEN_WITHIN: Duration = Duration::from_secs(10);
/// Largest data frame the hub sends (the runner's are its own choice,
/// bounded by the task protocol's message limit).
const FRAME: usize = 32 << 10;
/// Frames buffered towards the runner per tunnel (with [`FRAME`]: 256
/// KiB); the other way the runner's credit bounds it
/// ([`ds_proto::TUNNEL_CREDIT`]).
const FRAMES_BUFFERED: usize = 8;
/// The in-memory pipe between the relay's HTTP client and the tunnel.
const PIPE: usize = 64 << 10;

type Outbound = mpsc::Sender<Result<TunnelFrame, Status>>;

/// The runner's answer to an OpenTunnel: its stream, or why it could not
/// reach the port.
type Answer = std::result::Result<(Streaming<TunnelFrame>, Outbound), String>;

struct Pending {
    runner: RunnerName,
    answer: oneshot::Sender<Answer>,
}

/// Tunnels opened to runners and not yet answered.
#[derive(Default)]
pub(crate) struct Tunnels {
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.lock().len();
        write!(f, "Tunnels({n} pending)")
    }
}

impl Tunnels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A runner's `Tunnel` call: pairs it with its pending tunnel and
    /// returns the stream the hub's frames go out on.
    pub(crate) async fn accept(
        &self,
        runner: &RunnerName,
        mut inbound: Streaming<TunnelFrame>,
    ) -> std::result::Result<mpsc::Receiver<Result<TunnelFrame, Status>>, Status> {
        let first = tokio::time::timeout(OPEN_WITHIN, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no tunnel id within 10 s"))?
            .ok_or_else(|| Status::invalid_argument("a tunnel call without frames"))??;
        let pending = {
            let mut p = self.lock();
            match p.get(&first.tunnel) {
                Some(x) if &x.runner == runner => p.remove(&first.tunnel),
                _ => None,
            }
        };
        let Some(pending) = pending else {
            return Err(Status::not_found(
                "no such tunnel open to this runner (it timed out, or was never opened)",
            ));
        };
        let (tx, rx) = mpsc::channel(FRAMES_BUFFERED);
        let answer = if first.error.is_empty() {
            Ok((inbound, tx))
        } else {
            Err(first.error)
        };
        let _ = pending.answer.send(answer);
        Ok(rx)
    }
}

/// Removes a pending tunnel when its opener gives up.
struct Forget<'a>(&'a Tunnels, String);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

impl TaskHub {
    /// Opens a connection to the running task's port through its runner.
    /// Fails with [`HubError::Unreachable`] when the runner is not
    /// connected to this hub or does not answer, or cannot reach the port.
    pub(crate) async fn open_tunnel(&self, rec: &Record) -> Result<DuplexStream> {
        let runner = RunnerName::new(&rec.runner)
            .map_err(|_| HubError::Unreachable(format!("task {} has no runner", rec.id)))?;
        let Some(tx) = self.runners().get(&runner).map(|c| c.tx.clone()) else {
            return Err(HubError::Unreachable(format!(
                "runner {runner} of task {} is not connected to this hub",
                rec.id
            )));
        };
        let id = crate::auth::new_token()?;
        let (answer, answered) = oneshot::channel();
        self.tunnels.lock().insert(
            id.clone(),
            Pending {
                runner: runner.clone(),
                answer,
            },
        );
        let _forget = Forget(&self.tunnels, id.clone());
        let open = hub_message::Msg::OpenTunnel(OpenTunnel {
            task: rec.id.clone(),
            tunnel: id,
            port: rec.spec.port,
        });
        let gone = || HubError::Unreachable(format!("runner {runner} disconnected"));
        tx.send(Ok(ds_proto::runner::HubMessage { msg: Some(open) }))
            .await
            .map_err(|_| gone())?;
        let (inbound, outbound) = match tokio::time::timeout(OPEN_WITHIN, answered).await {
            Err(_) => {
                return Err(HubError::Unreachable(format!(
                    "runner {runner} did not open the tunnel within 10 s"
                )));
            }
            Ok(Err(_)) => return Err(gone()),
            Ok(Ok(Err(why))) => {
                return Err(HubError::Unreachable(format!(
                    "runner {runner} could not reach port {} of task {}: {why}",
                    rec.spec.port, rec.id
                )));
            }
            Ok(Ok(Ok(pair))) => pair,
        };
        let (ours, theirs) = tokio::io::duplex(PIPE);
        tokio::spawn(pump(theirs, inbound, outbound));
        METRICS.relay_opened();
        tracing::debug!(task = %rec.id, %runner, port = rec.spec.port, "tunnel opened");
        Ok(ours)
    }
}

/// Copies between the pipe and the tunnel's frames until both directions
/// end (or either fails).
async fn pump(pipe: DuplexStream, mut inbound: Streaming<TunnelFrame>, outbound: Outbound) {
    let (mut rd, mut wr) = tokio::io::split(pipe);
    let credit = outbound.clone();
    let up = async move {
        let mut buf = vec![0u8; FRAME];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let eof = TunnelFrame {
                        eof: true,
                        ..Default::default()
                    };
                    let _ = outbound.send(Ok(eof)).await;
                    // Keep the call open until the runner's side ends:
                    // dropping the sender would end it now.
                    return std::future::pending::<()>().await;
                }
                Ok(n) => {
                    METRICS.relay_bytes("to_task", n as u64);
                    let f = TunnelFrame {
                        data: buf[..n].to_vec(),
                        ..Default::default()
                    };
                    if outbound.send(Ok(f)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async move {
        // Credit goes back every quarter of the window passed on.
        let (mut passed, mut acked) = (0u64, 0u64);
        while let Some(Ok(f)) = inbound.next().await {
            if !f.data.is_empty() {
                METRICS.relay_bytes("from_task", f.data.len() as u64);
                if wr.write_all(&f.data).await.is_err() {
                    return;
                }
                passed += f.data.len() as u64;
                if passed - acked >= ds_proto::TUNNEL_CREDIT / 4 {
                    acked = passed;
                    let ack = TunnelFrame {
                        acked,
                        ..Default::default()
                    };
                    if credit.send(Ok(ack)).await.is_err() {
                        return;
                    }
                }
            }
            if f.eof {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    // The connection is over when the runner's side ends (the select then
    // drops `up` and its sender, which ends the call) or the call fails.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    METRICS.relay_closed();
}
