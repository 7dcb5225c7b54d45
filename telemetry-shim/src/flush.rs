//! What a flush (or close) reports: [`FlushOutcome`] and [`FlushReport`].
//!
//! The facade returns them and both back ends produce them (the live sender and the dry run),
//! so they live here, below all three: `sender` and `dry_run` import this module, not `shim`.

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Every record accepted before the flush is durably stored by the daemon.
    Acked,
    /// The daemon did not ack them all in time (it is down or slow); the rest are synced to the
    /// queue directory and will be sent by this shim, or by the next one on the same directory.
    OnDisk,
    /// Dry run: every record is written to the JSONL output.
    Written,
    /// Telemetry is disabled: nothing to do.
    Disabled,
}

/// What a flush (or close) achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// How it ended.
    pub outcome: FlushOutcome,
    /// The last `producer_seq` accepted before the flush (what it covered).
    pub accepted_through: u64,
    /// The daemon's durable watermark for this producer when it ended.
    pub acked_through: u64,
    /// Records still queued and not acked (0 after `Acked` unless more arrived meanwhile).
    pub pending_records: u64,
}

impl FlushReport {
    /// A report for a flush with nothing to wait for (disabled telemetry, a closed shim).
    pub(crate) fn trivial(outcome: FlushOutcome) -> Self {
        FlushReport {
            outcome,
            accepted_through: 0,
            acked_through: 0,
            pending_records: 0,
        }
    }
}
