//! The sender's pending flushes and closes: when each is answered, and with what report.
//!
//! A flush (or close) **waits out its timeout while the sender reconnects**: a daemon that is
//! restarting, a refused connection or a stream cut in the middle do not answer it. While a
//! flush waits, reconnect attempts are made promptly (at most [`FLUSH_RETRY`] apart, whatever
//! the backoff has grown to), so a daemon that comes back within the timeout gets everything.
//! It is answered:
//!
//! - `Acked` once the daemon's durable watermark covers every record it covers;
//! - at its deadline, with records still unacked: `OnDisk` with a durable queue (synced first),
//!   else [`ShimError::FlushTimeout`] with the pending count (records not even moved out of
//!   the inbox in time also end in `FlushTimeout`);
//! - **at once** when the link fails with an error that waiting cannot heal: `OnDisk` with a
//!   durable queue, else [`ShimError::NotDelivered`] with the pending count and the reason.
//!   Those errors are, exactly (see `sender::link::permanent`): a TLS handshake refused (a
//!   certificate the shim does not trust or that does not name the host, or a peer that does
//!   not speak TLS at all), and a stream refused with `UNAUTHENTICATED` or `PERMISSION_DENIED`.
//!   The sender still keeps retrying in the background (a fixed token or certificate is picked
//!   up on the next attempt); each later flush makes one prompt attempt and answers at once
//!   again if it fails the same way. An invalid endpoint never reaches the sender: it is a
//!   configuration error at `Telemetry::new`.
//!
//! `finish` answers everything at close. Split from the sender's send/ack loop (`sender.rs`)
//! because these rules are what a caller of `flush`/`close` observes.

use super::{link::Link, Reply, Sender};
use crate::{
    backlog::Backlog,
    flush::{FlushOutcome, FlushReport},
    stats::Counters,
    ShimError,
};
use std::time::{Duration, Instant};

/// The longest pause between reconnect attempts while a flush or close is waiting.
pub(super) const FLUSH_RETRY: Duration = Duration::from_millis(100);

pub(super) struct PendingFlush {
    pub(super) upto: u64,
    pub(super) deadline: Instant,
    pub(super) reply: Reply,
    /// The link failed with an error waiting cannot heal since this flush was made.
    pub(super) refused: bool,
    pub(super) close: bool,
}

impl Sender {
    pub(super) fn add_flush(&mut self, upto: u64, deadline: Instant, reply: Reply, close: bool) {
        self.flushes.push(PendingFlush {
            upto,
            deadline,
            reply,
            refused: false,
            close,
        });
        if matches!(self.link, Link::Down) {
            // A flush wants to know now whether the daemon is there.
            self.retry_at = Instant::now();
        }
    }

    pub(super) fn pending_upto(&self, upto: u64) -> bool {
        let staged = self
            .staged
            .front()
            .is_some_and(|p| p.record.producer().1 <= upto);
        let queued = self
            .backlog
            .as_ref()
            .and_then(Backlog::first_unacked_seq)
            .is_some_and(|s| s <= upto);
        staged || queued
    }

    pub(super) fn report(&self, upto: u64, outcome: FlushOutcome) -> FlushReport {
        FlushReport {
            outcome,
            accepted_through: upto,
            acked_through: self.acked,
            pending_records: self.backlog.as_ref().map_or(0, Backlog::unacked)
                + self.staged.len() as u64,
        }
    }

    /// Answers the flushes that are done; returns a completed close.
    pub(super) fn check_flushes(
        &mut self,
        now: Instant,
    ) -> Option<(PendingFlush, Result<FlushReport, ShimError>)> {
        let mut i = 0;
        while i < self.flushes.len() {
            let f = &self.flushes[i];
            let drained = self
                .staged
                .front()
                .is_none_or(|p| p.record.producer().1 > f.upto);
            let result = if !self.pending_upto(f.upto) {
                Some(Ok(self.report(f.upto, FlushOutcome::Acked)))
            } else if drained && (f.refused || now >= f.deadline) {
                let durable = self.backlog.as_ref().is_some_and(Backlog::is_durable);
                if durable {
                    let synced = self.backlog.as_mut().map_or(Ok(()), Backlog::sync);
                    Some(match synced {
                        Ok(()) => Ok(self.report(f.upto, FlushOutcome::OnDisk)),
                        Err(e) => Err(ShimError::Queue(e)),
                    })
                } else if f.refused {
                    Some(Err(ShimError::NotDelivered {
                        pending: self.report(f.upto, FlushOutcome::Acked).pending_records,
                        reason: self.last_link_error.clone(),
                    }))
                } else {
                    None
                }
            } else {
                None
            };
            let result = result.or_else(|| {
                (now >= f.deadline).then(|| {
                    Err(ShimError::FlushTimeout {
                        pending: self.report(f.upto, FlushOutcome::Acked).pending_records,
                    })
                })
            });
            match result {
                Some(r) => {
                    let f = self.flushes.swap_remove(i);
                    if f.close {
                        return Some((f, r));
                    }
                    let _ = f.reply.send(r);
                }
                None => i += 1,
            }
        }
        None
    }

    /// Stops: queues what is left in the inbox, closes the backlog cleanly, then answers.
    pub(super) fn finish(&mut self, close: Option<(PendingFlush, Result<FlushReport, ShimError>)>) {
        self.inbox.close();
        self.drain();
        self.link.shut();
        let closed = self.backlog.take().map_or(Ok(()), Backlog::close);
        if let Err(e) = &closed {
            tracing::error!(error = %e, "closing the telemetry queue failed");
        }
        let left = self.staged.len();
        if left > 0 {
            Counters::add(&self.counters.dropped, left as u64);
            tracing::warn!(
                records = left,
                "telemetry records could not be queued before close"
            );
        }
        for f in self.flushes.drain(..) {
            let _ = f.reply.send(Err(ShimError::Closed));
        }
        if let Some((f, result)) = close {
            let result = match (result, closed) {
                (Ok(r), Err(e)) if r.outcome == FlushOutcome::OnDisk => Err(ShimError::Queue(e)),
                (r, _) => r,
            };
            let _ = f.reply.send(result);
        }
    }
}
