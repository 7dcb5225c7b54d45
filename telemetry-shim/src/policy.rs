//! What the shim does when its buffers are full, and when its disk queue syncs.
//!
//! Both are settings ([`ShimConfig`](crate::ShimConfig) carries them) and both are obeyed by
//! the disk queue; they live here, below both, so the queue does not depend on the
//! configuration module (re-exported from `config` and the crate root).

use std::time::Duration;

/// What happens to a new record when the shim's buffers are full (the daemon has been away long
/// enough to fill the queue, or the disk is slower than the worker). Every drop is counted in
/// [`ShimStats::dropped`](crate::ShimStats::dropped) and logged at a bounded rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// The caller waits for room, at most `timeout`; then the new record is dropped and the call
    /// returns [`ShimError::QueueFull`](crate::ShimError::QueueFull).
    Block {
        /// The longest wait per record.
        timeout: Duration,
    },
    /// The oldest queued records make room (the default: the training loop never waits and the
    /// most recent telemetry survives). On disk, room is made a whole segment at a time.
    #[default]
    DropOldest,
    /// The new record is dropped (the call returns `QueueFull`).
    DropNewest,
}

/// When the disk queue forces its writes to stable storage. A process crash loses nothing the
/// queue has written whatever the policy (the kernel has it); the policy bounds what an OS crash
/// or power loss may take. See the loss windows in [`disk_queue`](crate::disk_queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` after every batch the sender writes (default).
    #[default]
    EveryBatch,
    /// At most one sync per interval (and at flush/close).
    Interval(Duration),
    /// Only at flush/close; the kernel writes back when it likes.
    Never,
}
