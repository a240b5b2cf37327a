//! The runner's end of relayed connections: the hub asks (OpenTunnel on
//! the Attach stream), the runner connects to where the task's port is
//! reachable from here (the process executor's loopback, or the port the
//! container engine published on it) and calls `Tunnel` on the same
//! HTTP/2 connection as its Attach stream: a stream of its own, with its
//! own flow control, per relayed connection.

use std::time::Duration;

use ds_proto::TaskId;
use ds_proto::runner::{OpenTunnel, TunnelFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::ledger::Ledger;

/// How long connecting to the task's port may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// Largest data frame sent to the hub.
const FRAME: usize = 32 << 10;

/// Serves one OpenTunnel in the background.
pub(crate) fn open(o: OpenTunnel, ledger: &Ledger, mut client: ds_sync::tasks::Tasks) {
    let target = TaskId::new(&o.task)
        .ok()
        .and_then(|id| ledger.control(&id))
        .map(|c| c.target());
    tokio::spawn(async move {
        let (tx, rx) = mpsc::channel::<TunnelFrame>(8);
        let mut first = TunnelFrame {
            tunnel: o.tunnel.clone(),
            ..Default::default()
        };
        let tcp = match target {
            None => {
                first.error = format!("task {} does not run on this runner", o.task);
                None
            }
            Some(None) => {
                first.error = format!(
                    "task {} has not started serving a port yet (or was not given --port)",
                    o.task
                );
                None
            }
            Some(Some(a)) => {
                match tokio::time::timeout(CONNECT_WITHIN, TcpStream::connect(a)).await {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) => {
                        first.error = format!("connecting to {a}: {e}");
                        None
                    }
                    Err(_) => {
                        first.error = format!("connecting to {a}: no answer within 5 s");
                        None
                    }
                }
            }
        };
        if !first.error.is_empty() {
            tracing::warn!(task = %o.task, error = %first.error, "tunnel refused");
        } else {
            tracing::debug!(task = %o.task, port = o.port, "tunnel opened");
        }
        if tx.send(first).await.is_err() {
            return;
        }
        let reply = client.tunnel(ReceiverStream::new(rx)).await;
        let (Some(tcp), Ok(reply)) = (tcp, reply) else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        crate::metrics::TUNNELS.inc();
        crate::metrics::TUNNELS_OPEN.inc();
        struct Open;
        impl Drop for Open {
            fn drop(&mut self) {
                crate::metrics::TUNNELS_OPEN.dec();
            }
        }
        let _open = Open;
        let mut inbound = reply.into_inner();
        let (mut rd, mut wr) = tcp.into_split();
        // What the hub has passed on of our data (its credit, see the
        // protocol): we send while less than TUNNEL_CREDIT is unacked.
        let (acked_tx, mut acked) = tokio::sync::watch::channel(0u64);
        let up = async move {
            let mut buf = vec![0u8; FRAME];
            let mut sent = 0u64;
            loop {
                if acked
                    .wait_for(|a| sent - *a < ds_proto::TUNNEL_CREDIT)
                    .await
                    .is_err()
                {
                    return;
                }
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let eof = TunnelFrame {
                            eof: true,
                            ..Default::default()
                        };
                        let _ = tx.send(eof).await;
                        // The call stays open until the hub's side ends.
                        return std::future::pending::<()>().await;
                    }
                    Ok(n) => {
                        sent += n as u64;
                        crate::metrics::TUNNEL_BYTES.add(n as u64);
                        let f = TunnelFrame {
                            data: buf[..n].to_vec(),
                            ..Default::default()
                        };
                        if tx.send(f).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let down = async move {
            while let Ok(Some(f)) = inbound.message().await {
                if f.acked > *acked_tx.borrow() {
                    let _ = acked_tx.send(f.acked);
                }
                crate::metrics::TUNNEL_BYTES.add(f.data.len() as u64);
                if !f.data.is_empty() && wr.write_all(&f.data).await.is_err() {
                    return;
                }
                if f.eof {
                    let _ = wr.shutdown().await;
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    });
}
