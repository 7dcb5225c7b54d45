//! Counters a worker (or its Python wrapper) can read at any time to see what the shim did.
//!
//! Every limit in the shim has a policy and a counter (docs/ARCHITECTURE.md, "Queues"): a drop
//! that is not counted is a silent loss. The counters are atomics shared by the caller side and
//! the sender thread; [`ShimStats`] is a consistent-enough snapshot of them.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Mutex,
};

/// A snapshot of the shim's counters. All counts are records unless said otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimStats {
    /// Accepted by a call (and given a `producer_seq`).
    pub accepted: u64,
    /// Put on the wire (a resend after a reconnect counts again).
    pub sent: u64,
    /// Covered by the daemon's durable watermark (each record once).
    pub acked: u64,
    /// Queued while no connection to the daemon was up (to be sent later).
    pub spilled: u64,
    /// Lost to a full policy or a refused record (never sent).
    pub dropped: u64,
    /// Refused by the daemon (from its acks), or by validation in dry-run mode.
    pub rejected: u64,
    /// Reported by the daemon as already stored (resends after a lost ack).
    pub duplicates: u64,
    /// Connection attempts after the first one.
    pub reconnects: u64,
    /// Bytes in the queue (disk files, or memory without a queue directory).
    pub queue_bytes: u64,
    /// Unacked records in the queue.
    pub queue_records: u64,
    /// Accepted records not yet taken from the inbox by the sender.
    pub buffered_records: u64,
    /// Torn or corrupt queue frames found (at open or while reading).
    pub corrupt_tails: u64,
    /// Unacked records lost with those frames: counted in records, by the seqs missing between
    /// the intact frames either side of the damage (`Recovery::lost_records` of the disk
    /// queue), never sent.
    pub corrupt_lost_records: u64,
    /// Watermarks from the daemon not adopted as this shim's seq floor: more than
    /// `telemetry_core::MAX_SEQ_JUMP` ahead of the shim's own counter (or at `u64::MAX`).
    pub refused_watermarks: u64,
    /// Times the sender moved on to the next daemon of its endpoint list after a link failed.
    pub failovers: u64,
    /// The last error the sender met (connection, stream, disk), if any.
    pub last_error: Option<String>,
}

/// The live counters behind [`ShimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub spilled: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
    pub reconnects: AtomicU64,
    pub queue_bytes: AtomicU64,
    pub queue_records: AtomicU64,
    pub buffered_records: AtomicU64,
    pub corrupt_tails: AtomicU64,
    pub corrupt_lost_records: AtomicU64,
    pub refused_watermarks: AtomicU64,
    pub failovers: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    pub fn set_error(&self, e: impl std::fmt::Display) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(e.to_string());
        }
    }

    pub fn snapshot(&self) -> ShimStats {
        ShimStats {
            accepted: self.accepted.load(Relaxed),
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            spilled: self.spilled.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            queue_bytes: self.queue_bytes.load(Relaxed),
            queue_records: self.queue_records.load(Relaxed),
            buffered_records: self.buffered_records.load(Relaxed),
            corrupt_tails: self.corrupt_tails.load(Relaxed),
            corrupt_lost_records: self.corrupt_lost_records.load(Relaxed),
            refused_watermarks: self.refused_watermarks.load(Relaxed),
            failovers: self.failovers.load(Relaxed),
            last_error: self.last_error.lock().ok().and_then(|g| g.clone()),
        }
    }
}
