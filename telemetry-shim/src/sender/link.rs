//! The sender's connection to the daemon: down, connecting, or up with a publish stream, and
//! the one event it is waiting for in each state.
//!
//! Split from the sender's batching and ack bookkeeping (`sender.rs`): this is the only part
//! that knows how tonic reports a connection and a stream ending.

use super::Command;
use telemetry_core::pb::{IngestAck, IngestBatch};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{transport::Channel, Status};

pub(super) struct Up {
    pub(super) batch_tx: mpsc::Sender<IngestBatch>,
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
