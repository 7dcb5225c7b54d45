//! What a viewer asks for when it subscribes.
//!
//! One options struct covers the daemon's `StreamRequest` (run, stream, agent, control mode,
//! resume point, follow, rate limit, hidden view / every k-th step) so that the daemon maps a
//! request field by field and the hub owns the semantics of each.

use std::{fmt, sync::Arc, time::Duration};

use telemetry_core::pb::{record::Kind, Record};

use crate::filter::RecordFilter;

/// The four seq streams of the store. Each has its own strictly increasing `seq_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StreamKind {
    /// `RunStep` records.
    #[default]
    Steps,
    /// `RunEpisode` records.
    Episodes,
    /// `RunStarted`, `RunCompleted` and `Artifact` records.
    Lifecycle,
    /// `Scalar` records (training curves).
    Scalars,
}

impl StreamKind {
    /// Every stream, in a stable order.
    pub const ALL: [StreamKind; StreamKind::COUNT] = [
        StreamKind::Steps,
        StreamKind::Episodes,
        StreamKind::Lifecycle,
        StreamKind::Scalars,
    ];

    /// How many streams there are.
    pub const COUNT: usize = 4;

    /// The stream a record belongs to (`None` for a record without payload).
    pub fn of(record: &Record) -> Option<StreamKind> {
        Some(match record.kind.as_ref()? {
            Kind::Step(_) => StreamKind::Steps,
            Kind::Episode(_) => StreamKind::Episodes,
            Kind::RunStarted(_) | Kind::RunCompleted(_) | Kind::Artifact(_) => {
                StreamKind::Lifecycle
            }
            Kind::Scalar(_) => StreamKind::Scalars,
        })
    }

    /// A stable lower-case name (metrics labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            StreamKind::Steps => "steps",
            StreamKind::Episodes => "episodes",
            StreamKind::Lifecycle => "lifecycle",
            StreamKind::Scalars => "scalars",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            StreamKind::Steps => 0,
            StreamKind::Episodes => 1,
            StreamKind::Lifecycle => 2,
            StreamKind::Scalars => 3,
        }
    }
}

pub use telemetry_core::ModeFilter;

/// Batched delivery for UIs: at most one `Records` delivery per `min_interval`, each with at
/// most `max_batch` records. A zero interval batches whatever is queued without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Minimum time between two `Records` deliveries.
    pub min_interval: Duration,
    /// Records per delivery (0 is taken as 1, larger than 4096 as 4096).
    pub max_batch: usize,
}

/// Largest batch a rate-limited subscription delivers at once.
pub(crate) const MAX_BATCH: usize = 4096;

/// What to deliver to one subscriber.
#[derive(Clone, Default)]
pub struct SubscribeOptions {
    /// One run, or `None` for the lifecycle events of every run (then `stream` must be
    /// [`StreamKind::Lifecycle`]).
    pub run_id: Option<String>,
    /// Which stream.
    pub stream: StreamKind,
    /// Only this agent's steps/episodes.
    pub agent_id: Option<String>,
    /// Only these control modes (steps/episodes).
    pub control_mode: ModeFilter,
    /// `Some(s)`: first deliver stored records with `seq > s` (from the run's ring when it
    /// reaches back that far, else from the [`CatchUpSource`](crate::CatchUpSource)), then
    /// `CaughtUp`, then live. `None`: live records from now on.
    pub since_seq: Option<u64>,
    /// Keep following live records after the stored ones (until the run completes). Without
    /// it the stream ends after `CaughtUp`.
    pub follow: bool,
    /// Batched, rate-limited delivery; `None` delivers one record per `Records`.
    pub rate: Option<RateLimit>,
    /// A predicate/transform for this subscription (see [`crate::filter`]).
    pub filter: Option<Arc<dyn RecordFilter>>,
    /// Records this subscriber's queue holds (default `HubConfig::subscriber_queue`, at most
    /// `HubConfig::max_subscriber_queue`).
    pub queue_capacity: Option<usize>,
}

impl SubscribeOptions {
    /// Live records of one run's stream.
    pub fn run(run_id: impl Into<String>, stream: StreamKind) -> Self {
        SubscribeOptions {
            run_id: Some(run_id.into()),
            stream,
            follow: true,
            ..Default::default()
        }
    }

    /// Lifecycle events of every run, live.
    pub fn all_runs_lifecycle() -> Self {
        SubscribeOptions {
            run_id: None,
            stream: StreamKind::Lifecycle,
            follow: true,
            ..Default::default()
        }
    }

    /// Catch up from `since_seq` first.
    pub fn since(mut self, since_seq: u64) -> Self {
        self.since_seq = Some(since_seq);
        self
    }

    /// Sets `follow`.
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// Sets the rate limit.
    pub fn rate(mut self, min_interval: Duration, max_batch: usize) -> Self {
        self.rate = Some(RateLimit {
            min_interval,
            max_batch,
        });
        self
    }

    /// Sets the filter.
    pub fn filter(mut self, filter: Arc<dyn RecordFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Sets the queue capacity.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// Only this agent.
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// Only these modes.
    pub fn mode(mut self, mode: ModeFilter) -> Self {
        self.control_mode = mode;
        self
    }
}

impl fmt::Debug for SubscribeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("run_id", &self.run_id)
            .field("stream", &self.stream)
            .field("agent_id", &self.agent_id)
            .field("control_mode", &self.control_mode)
            .field("since_seq", &self.since_seq)
            .field("follow", &self.follow)
            .field("rate", &self.rate)
            .field("filter", &self.filter.as_ref().map(|_| ".."))
            .field("queue_capacity", &self.queue_capacity)
            .finish()
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// `run_id: None` asks for every run, which only the lifecycle stream offers.
    #[error("subscribing to every run is only possible for the lifecycle stream, not {0:?}")]
    AllRunsNeedsLifecycle(StreamKind),
    /// An empty run id.
    #[error("run_id must not be empty")]
    EmptyRunId,
    /// `HubConfig::max_subscribers` subscriptions are alive.
    #[error("too many subscribers (limit {limit})")]
    TooManySubscribers {
        /// The limit.
        limit: usize,
    },
    /// The hub has been shut down.
    #[error("the hub is shut down")]
    ShutDown,
}
