//! The shim's one error type.
//!
//! Telemetry must not crash training: every call returns a [`ShimError`] the worker may log or
//! ignore (`let _ = shim.step(..)` is a legitimate choice; drops are counted either way).

use crate::{config::ConfigError, disk_queue::QueueError, FullPolicy};
use telemetry_core::validate::ValidationError;

/// What went wrong in a shim call.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The queue directory could not be opened or written (for example another process holds it).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The shim was closed; nothing more is accepted.
    #[error("the telemetry shim is closed")]
    Closed,
    /// The buffers were full and the policy dropped this record (it is counted in `dropped`).
    #[error("telemetry queue full ({policy:?}): record dropped")]
    QueueFull {
        /// The policy in force.
        policy: FullPolicy,
    },
    /// The record is larger than `max_record_bytes`; it was not accepted.
    #[error("record is {size} bytes encoded, the limit is {max}")]
    RecordTooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Every `producer_seq` of this producer has been handed out (the counter is at
    /// `u64::MAX`); the record was not accepted (it is counted in `dropped`). A new producer
    /// (another queue directory) starts again from 1.
    #[error("producer seqs exhausted: the record was dropped")]
    SeqExhausted,
    /// Dry run: the record fails the daemon's validation (counted in `rejected`).
    #[error("invalid record: {0}")]
    Invalid(#[from] ValidationError),
    /// A flush ran out of time before its records were acked (or, with a queue directory, on
    /// disk). They are still queued and will be sent.
    #[error("flush timed out with {pending} records not yet acked")]
    FlushTimeout {
        /// Records queued and not acked when the flush gave up.
        pending: u64,
    },
    /// No queue directory, and the daemon refused the connection for a reason waiting cannot
    /// heal (TLS handshake, credentials): the records are only in memory.
    #[error("the daemon refused the connection ({reason}); {pending} records held in memory only")]
    NotDelivered {
        /// Records queued and not acked.
        pending: u64,
        /// The last connection error.
        reason: String,
    },
    /// Writing the dry-run output failed.
    #[error("dry-run output: {0}")]
    Io(#[from] std::io::Error),
    /// The background sender could not be started, or stopped unexpectedly.
    #[error("telemetry sender: {0}")]
    Sender(String),
}
