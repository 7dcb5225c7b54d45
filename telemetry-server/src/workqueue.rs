//! The queue in front of the dispatcher: at most `max_running` workers at once, submissions
//! beyond wait as `pending`, in submission order, at most `max_pending` of them.
//!
//! A running worker holds a [`Slot`]; dropping the slot (the worker exited, or could not be
//! started) hands it to the oldest waiting run that is still pending (a cancelled one is
//! skipped). Once the daemon is stopping, nothing new is started: runs still waiting stay
//! pending and are failed as interrupted by the next start, like every run left active.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use telemetry_core::pb::SubmitRunRequest;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A submission waiting for a worker slot.
pub(crate) struct Queued {
    /// Its run id (registered as pending).
    pub run_id: String,
    /// The validated request.
    pub req: SubmitRunRequest,
}

#[derive(Default)]
struct State {
    running: usize,
    /// Submissions being registered that will queue (they count against `max_pending`).
    reserved: usize,
    pending: VecDeque<Queued>,
}

/// Worker slots and the pending queue. Shared by every service that submits runs.
pub struct WorkQueue {
    state: Mutex<State>,
    max_running: usize,
    max_pending: usize,
    stopping: CancellationToken,
    metrics: Metrics,
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue")
            .field("max_running", &self.max_running)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}

/// What a new submission gets.
pub(crate) enum Ticket {
    /// Start now, in this slot.
    Run(Slot),
    /// Queue it (call [`WorkQueue::push`] once the run is registered as pending).
    Queue(Reservation),
}

/// A place in the pending queue, held while the run is registered; released on drop unless
/// [`WorkQueue::push`]ed.
pub(crate) struct Reservation {
    queue: Arc<WorkQueue>,
    used: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            let mut st = self.queue.lock();
            st.reserved = st.reserved.saturating_sub(1);
        }
    }
}

/// One running worker's slot. Dropping it frees the slot, and `on_free` (set by the
/// dispatcher) starts whatever [`WorkQueue::fill`] hands over.
pub(crate) struct Slot {
    queue: Arc<WorkQueue>,
    on_free: Option<Box<dyn FnOnce(Arc<WorkQueue>) + Send>>,
}

impl Slot {
    /// Runs `f` with the queue once this slot is freed (after the count went down).
    pub fn on_free(&mut self, f: impl FnOnce(Arc<WorkQueue>) + Send + 'static) {
        self.on_free = Some(Box::new(f));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut st = self.queue.lock();
            st.running = st.running.saturating_sub(1);
            self.queue.gauges(&st);
        }
        if let Some(f) = self.on_free.take() {
            f(self.queue.clone());
        }
    }
}

/// The pending queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{running} workers are running (at most {max_running}) and {pending} runs are waiting (at \
     most {max_pending}): try again later"
)]
pub struct QueueFull {
    /// Workers running.
    pub running: usize,
    /// The running limit.
    pub max_running: usize,
    /// Runs waiting.
    pub pending: usize,
    /// The pending limit.
    pub max_pending: usize,
}

impl WorkQueue {
    /// A queue of at most `max_running` workers (at least 1) and `max_pending` waiting runs;
    /// nothing starts after `stopping` is cancelled.
    pub fn new(
        max_running: usize,
        max_pending: usize,
        stopping: CancellationToken,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State::default()),
            max_running: max_running.max(1),
            max_pending,
            stopping,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauges(&self, st: &State) {
        self.metrics
            .dispatch_running
            .set(i64::try_from(st.running).unwrap_or(i64::MAX));
        self.metrics
            .dispatch_pending
            .set(i64::try_from(st.pending.len()).unwrap_or(i64::MAX));
    }

    /// A new submission: a slot now when one is free and nobody waits, else a place in the
    /// queue, else [`QueueFull`] (counted as `submissions_refused{reason="pending_queue_full"}`).
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Ticket, QueueFull> {
        let mut st = self.lock();
        let waiting = st.pending.len() + st.reserved;
        if st.running < self.max_running && waiting == 0 && !self.stopping.is_cancelled() {
            st.running += 1;
            self.gauges(&st);
            return Ok(Ticket::Run(Slot {
                queue: self.clone(),
                on_free: None,
            }));
        }
        if waiting >= self.max_pending {
            self.metrics.refuse_submission("pending_queue_full");
            return Err(QueueFull {
                running: st.running,
                max_running: self.max_running,
                pending: waiting,
                max_pending: self.max_pending,
            });
        }
        st.reserved += 1;
        Ok(Ticket::Queue(Reservation {
            queue: self.clone(),
            used: false,
        }))
    }

    /// Queues a registered run in its reserved place.
    pub(crate) fn push(&self, mut reservation: Reservation, queued: Queued) {
        reservation.used = true;
        let mut st = self.lock();
        st.reserved = st.reserved.saturating_sub(1);
        st.pending.push_back(queued);
        self.gauges(&st);
    }

    /// Hands free slots to the oldest waiting runs (none once stopping).
    pub(crate) fn fill(self: &Arc<Self>) -> Vec<(Queued, Slot)> {
        let mut st = self.lock();
        let mut out = Vec::new();
        while st.running < self.max_running && !self.stopping.is_cancelled() {
            let Some(q) = st.pending.pop_front() else {
                break;
            };
            st.running += 1;
            out.push((
                q,
                Slot {
                    queue: self.clone(),
                    on_free: None,
                },
            ));
        }
        self.gauges(&st);
        out
    }

    /// Takes a waiting run out of the queue. Returns whether it was waiting.
    pub(crate) fn remove(&self, run_id: &str) -> bool {
        let mut st = self.lock();
        let before = st.pending.len();
        st.pending.retain(|q| q.run_id != run_id);
        let removed = st.pending.len() != before;
        self.gauges(&st);
        removed
    }

    /// The metrics it counts in.
    /// Whether the server is stopping (then nothing new starts, and exits skip the queue drain).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Workers running and runs waiting.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.running, st.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: &str) -> Queued {
        Queued {
            run_id: id.into(),
            req: SubmitRunRequest::default(),
        }
    }

    #[test]
    fn slots_are_handed_over_in_submission_order_and_the_queue_is_bounded() {
        let q = WorkQueue::new(1, 2, CancellationToken::new(), Metrics::new());
        let Ok(Ticket::Run(first)) = q.admit() else {
            panic!("a free slot")
        };
        for id in ["b", "c"] {
            match q.admit() {
                Ok(Ticket::Queue(r)) => q.push(r, queued(id)),
                _ => panic!("queued"),
            }
        }
        let full = q.admit().err().expect("full");
        assert_eq!((full.running, full.pending, full.max_pending), (1, 2, 2));
        assert_eq!(q.counts(), (1, 2));
        assert!(q.fill().is_empty(), "no free slot");
        drop(first);
        let next = q.fill();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].0.run_id, "b");
        assert!(q.remove("c"));
        assert!(!q.remove("c"));
        assert_eq!(q.counts(), (1, 0));
        drop(next);
        assert_eq!(q.counts(), (0, 0));
    }

    #[test]
    fn a_dropped_reservation_frees_its_place_and_nothing_starts_once_stopping() {
        let stop = CancellationToken::new();
        let q = WorkQueue::new(1, 1, stop.clone(), Metrics::new());
        let Ok(Ticket::Run(slot)) = q.admit() else {
            panic!("a free slot")
        };
        let Ok(Ticket::Queue(r)) = q.admit() else {
            panic!("queued")
        };
        assert!(q.admit().is_err());
        drop(r);
        let Ok(Ticket::Queue(r)) = q.admit() else {
            panic!("the place is free again")
        };
        q.push(r, queued("b"));
        stop.cancel();
        drop(slot);
        assert!(q.fill().is_empty());
        assert_eq!(q.counts(), (0, 1));
    }
}
