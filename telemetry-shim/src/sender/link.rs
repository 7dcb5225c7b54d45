//! The sender's connection to the daemon: down, connecting, or up with a publish stream, and
//! the one event it is waiting for in each state.
//!
//! Split from the sender's batching and ack bookkeeping (`sender.rs`): this is the only part
//! that knows how tonic reports a connection and a stream ending.

use super::Command;
use crate::wire::EncodedBatch;
use telemetry_core::pb::IngestAck;
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{transport::Channel, Status};

pub(super) struct Up {
    pub(super) batch_tx: mpsc::Sender<EncodedBatch>,
    pub(super) ack_rx: mpsc::Receiver<Result<IngestAck, Status>>,
    pub(super) task: JoinHandle<()>,
}

pub(super) enum Link {
    Down,
    Connecting(JoinHandle<Result<Channel, tonic::transport::Error>>),
    Up(Up),
}

pub(super) enum Event {
    Cmd(Option<Command>),
    Wake,
    Timer,
    Connected(Result<Channel, String>),
    Ack(Result<IngestAck, Status>),
}

impl Link {
    pub(super) async fn event(&mut self) -> Event {
        match self {
            Link::Down => std::future::pending().await,
            Link::Connecting(handle) => Event::Connected(match handle.await {
                Ok(Ok(ch)) => Ok(ch),
                Ok(Err(e)) => Err(describe(&e)),
                Err(e) => Err(e.to_string()),
            }),
            Link::Up(up) => Event::Ack(
                up.ack_rx
                    .recv()
                    .await
                    .unwrap_or_else(|| Err(Status::unavailable("ack stream task ended"))),
            ),
        }
    }

    pub(super) fn shut(&mut self) {
        match std::mem::replace(self, Link::Down) {
            Link::Up(up) => up.task.abort(),
            Link::Connecting(h) => h.abort(),
            Link::Down => {}
        }
    }
}

/// An error with its sources (tonic's transport errors say little at the top level).
pub(super) fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Whether a failed connection attempt is one waiting cannot heal: the TLS handshake was
/// refused (an untrusted or misnamed certificate, or a peer that does not speak TLS). Refused
/// connections, resets, timeouts and DNS failures are not: a restarting daemon causes them.
pub(super) fn permanent_transport(description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    d.contains("certificate") || d.contains("corrupt message") || d.contains("handshake failure")
}

/// Whether a stream ended by the daemon is one waiting cannot heal: the credentials are
/// refused, or a TLS failure surfaced on the stream instead of at connect.
pub(super) fn permanent_status(status: &Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => true,
        _ => {
            let source = std::error::Error::source(status).map(describe);
            permanent_transport(&format!(
                "{} {}",
                status.message(),
                source.unwrap_or_default()
            ))
        }
    }
}
