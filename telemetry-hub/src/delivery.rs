//! What a subscriber receives: records and the notices that make a stream trustworthy.
//!
//! A viewer must be able to tell "nothing happened" from "I missed something": every loss is
//! announced (`Lagged` for counted drops, `Gap` for anything else), the end of the stored past
//! is marked (`CaughtUp`), and a stream ends only with a reason (`Completed`, `Closed`).

use std::sync::Arc;

use telemetry_core::pb::{Record, RunCompleted};

use crate::{options::SubscribeError, source::CatchUpError};

/// One item of a [`Subscription`](crate::Subscription).
#[derive(Debug, Clone)]
pub enum Delivery {
    /// One record, or a batch of up to `max_batch` under rate limiting; in seq order.
    Records(Vec<Arc<Record>>),
    /// The subscriber fell behind and this many of the oldest queued records were dropped
    /// (they are in the store). Delivered before the next record after the loss.
    Lagged {
        /// Steps dropped.
        dropped_steps: u64,
        /// Episodes dropped.
        dropped_episodes: u64,
        /// Lifecycle events dropped (lifecycle subscriptions only).
        dropped_lifecycle: u64,
        /// Scalars dropped (scalar subscriptions only).
        dropped_scalars: u64,
    },
    /// Records of this run/stream between `after_seq` and `next_seq` (exclusive) were not
    /// delivered and not counted as dropped; read them from the store.
    Gap {
        /// The last seq accounted for.
        after_seq: u64,
        /// The seq of the next record delivered.
        next_seq: u64,
    },
    /// Every stored record up to `last_seq` has been delivered; what follows is live (or the
    /// stream ends, without `follow`). `last_seq` is a valid resume point for `since_seq`.
    CaughtUp {
        /// The resume point.
        last_seq: u64,
    },
    /// The run completed; every record published before its `RunCompleted` has been
    /// delivered (or counted). The stream ends after this. (An `Arc`, like records: it is
    /// shared by every subscriber, and keeps `Delivery` small on the hot path.)
    Completed(Arc<RunCompleted>),
    /// The stream ended for another reason; it ends after this.
    Closed(CloseReason),
}

/// Why a stream was closed without its run completing.
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// The hub was shut down.
    Shutdown,
    /// Catch-up reads kept failing (after `HubConfig::catch_up_retries` retries).
    CatchUpFailed(Arc<CatchUpError>),
    /// The subscription was refused (returned by [`Hub::subscribe`](crate::Hub::subscribe);
    /// [`Hub::try_subscribe`](crate::Hub::try_subscribe) returns the error instead).
    Refused(SubscribeError),
}
