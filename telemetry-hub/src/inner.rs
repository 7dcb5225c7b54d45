//! The hub's shared state and its publish path: the run map, the subscriber registry, the
//! counters, and how a committed record reaches the rings and the subscriber queues.
//!
//! [`Hub`](crate::Hub) (the facade), `subscription` (a viewer's end) and `metrics` (snapshots)
//! all work on this one state, so it lives below all three: they import this module and it
//! imports none of them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use telemetry_core::pb::{record::Kind, Record};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::{
    config::HubConfig,
    options::StreamKind,
    queue::{lock, Accepted, SubShared},
    ring::record_footprint,
    run::{Checked, RunState},
    source::CatchUpSource,
};

/// Hub-wide counters (monotonic).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub rejected_no_payload: AtomicU64,
    pub rejected_unsequenced: AtomicU64,
    pub rejected_no_run: AtomicU64,
    pub rejected_out_of_order: AtomicU64,
    pub rejected_after_shutdown: AtomicU64,
    pub ring_evicted: AtomicU64,
    pub runs_evicted: AtomicU64,
    pub runs_over_limit: AtomicU64,
    pub dropped: [AtomicU64; StreamKind::COUNT],
    pub delivered_by_ended: AtomicU64,
    pub catchup_reads: AtomicU64,
    pub catchup_errors: AtomicU64,
    pub catchup_invalid_records: AtomicU64,
    pub gaps: AtomicU64,
    pub subscribers_refused: AtomicU64,
    pub warmed: AtomicU64,
    pub warm_ignored: AtomicU64,
}

/// Lifecycle events of every run, for `run_id: None` subscribers.
#[derive(Default)]
pub(crate) struct AllRuns {
    /// The hub's last published lifecycle seq (any run), the chain of all-runs subscribers.
    pub last: u64,
    pub subs: Vec<Arc<SubShared>>,
}

pub(crate) struct HubInner {
    pub config: HubConfig,
    pub source: Arc<dyn CatchUpSource>,
    runs: RwLock<HashMap<Arc<str>, Mutex<RunState>>>,
    pub all_runs: Mutex<AllRuns>,
    registry: Mutex<BTreeMap<u64, Arc<SubShared>>>,
    pub next_id: AtomicU64,
    pub shutdown: AtomicBool,
    pub tracker: TaskTracker,
    pub counters: Counters,
    /// (time, published, delivered) at the previous metrics snapshot.
    pub rate_mark: Mutex<(Instant, u64, u64)>,
}

impl HubInner {
    /// A hub's state with `config` (normalized here) reading catch-up pages from `source`.
    pub fn new(config: HubConfig, source: Arc<dyn CatchUpSource>) -> Self {
        HubInner {
            config: config.normalized(),
            source,
            runs: RwLock::new(HashMap::new()),
            all_runs: Mutex::new(AllRuns::default()),
            registry: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            counters: Counters::default(),
            rate_mark: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    pub fn runs(&self) -> RwLockReadGuard<'_, HashMap<Arc<str>, Mutex<RunState>>> {
        self.runs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn runs_mut(&self) -> RwLockWriteGuard<'_, HashMap<Arc<str>, Mutex<RunState>>> {
        self.runs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<SubShared>>> {
        lock(&self.registry)
    }

    /// Runs `f` on the run's state, creating the run (and evicting another) if needed.
    pub fn with_run<R>(&self, run_id: &str, now: Instant, f: impl FnOnce(&mut RunState) -> R) -> R {
        {
            let map = self.runs();
            if let Some(slot) = map.get(run_id) {
                return f(&mut lock(slot));
            }
        }
        let mut map = self.runs_mut();
        if !map.contains_key(run_id) {
            self.make_room(&mut map);
            let key: Arc<str> = Arc::from(run_id);
            map.insert(Arc::clone(&key), Mutex::new(RunState::new(key, now)));
        }
        match map.get(run_id) {
            Some(slot) => f(&mut lock(slot)),
            None => unreachable!("inserted above under the same write lock"),
        }
    }

    /// Evicts one run when the map is full: a completed run without subscribers first (the
    /// least recently active), then the least recently active run without subscribers. Runs
    /// with subscribers are never evicted; if every run has some, the map grows past
    /// `max_runs` (bounded by `max_subscribers`) and `runs_over_limit_total` counts it.
    fn make_room(&self, map: &mut HashMap<Arc<str>, Mutex<RunState>>) {
        if map.len() < self.config.max_runs {
            return;
        }
        let mut best: Option<(bool, Instant, Arc<str>)> = None;
        for (key, slot) in map.iter() {
            let run = lock(slot);
            if run.subscriber_count() > 0 {
                continue;
            }
            // Sort key: not completed after completed, then older activity first.
            let cand = (run.completed.is_none(), run.last_activity, Arc::clone(key));
            if best.as_ref().is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                best = Some(cand);
            }
        }
        match best {
            Some((_, _, key)) => {
                map.remove(&key);
                self.counters.runs_evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(run_id = %key, "hub evicted a run to stay within max_runs");
            }
            None => {
                self.counters
                    .runs_over_limit
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    max_runs = self.config.max_runs,
                    "every tracked run has subscribers; tracking one more than max_runs"
                );
            }
        }
    }

    /// The run's last published seq in `stream` (0 if unknown), or the hub's last lifecycle
    /// seq for all-runs.
    pub fn last_seq(&self, run_id: Option<&str>, stream: StreamKind) -> u64 {
        match run_id {
            Some(r) => self
                .runs()
                .get(r)
                .map_or(0, |slot| lock(slot).last[stream.index()]),
            None => lock(&self.all_runs).last,
        }
    }

    /// Checks a record before it goes anywhere; rejections are counted.
    fn check(&self, record: Arc<Record>) -> Option<Checked> {
        let c = &self.counters;
        let Some(stream) = StreamKind::of(&record) else {
            c.rejected_no_payload.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let seq = record.seq_id();
        if seq == 0 {
            c.rejected_unsequenced.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if record.run_id().is_empty() {
            c.rejected_no_run.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let bytes = record_footprint(&record);
        Some(Checked {
            record,
            stream,
            seq,
            bytes,
        })
    }

    /// Accepts a checked record into its (locked) run. Records for the run's subscribers
    /// collect in `pending` (offered by [`HubInner::flush`]); a `RunCompleted` first flushes
    /// what precedes it, then completes the run; lifecycle events also go to the all-runs
    /// subscribers at once. Lock order: run, then all-runs, then subscriber queues.
    fn accept_into(
        &self,
        run: &mut RunState,
        r: Checked,
        now: Instant,
        fan_out: bool,
        pending: &mut Vec<Accepted>,
    ) -> bool {
        let c = &self.counters;
        let limits = (self.config.ring_records, self.config.ring_bytes);
        let Some((prev, evicted)) = run.accept(&r, now, limits, fan_out) else {
            if fan_out {
                c.rejected_out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        };
        if evicted > 0 {
            c.ring_evicted.fetch_add(evicted, Ordering::Relaxed);
        }
        let accepted = Accepted {
            record: r.record,
            seq: r.seq,
            prev,
            stream: r.stream,
        };
        if r.stream == StreamKind::Lifecycle && fan_out {
            let mut all = lock(&self.all_runs);
            let global = Accepted {
                prev: all.last,
                ..accepted.clone()
            };
            all.last = r.seq;
            let mut dropped = 0;
            for sub in &all.subs {
                dropped += sub.offer_many(std::iter::once(&global), now)[r.stream.index()];
            }
            if dropped > 0 {
                c.dropped[r.stream.index()].fetch_add(dropped, Ordering::Relaxed);
            }
        }
        if let Some(Kind::RunCompleted(rc)) = &accepted.record.kind {
            if fan_out {
                self.flush(run, pending, now);
            }
            run.complete(rc);
        } else if fan_out {
            pending.push(accepted);
        }
        true
    }

    /// Offers the pending records to the run's subscribers.
    fn flush(&self, run: &mut RunState, pending: &mut Vec<Accepted>, now: Instant) {
        if pending.is_empty() {
            return;
        }
        let dropped = run.fan_out(pending, now);
        for (total, d) in self.counters.dropped.iter().zip(dropped) {
            if d > 0 {
                total.fetch_add(d, Ordering::Relaxed);
            }
        }
        pending.clear();
    }

    /// Publishes records in order. Consecutive records of one run share one map lookup, one
    /// hold of the run's lock and one lock/wake-up per subscriber. Returns how many were
    /// accepted.
    pub fn publish_many(
        &self,
        records: impl Iterator<Item = Arc<Record>>,
        now: Instant,
        fan_out: bool,
    ) -> u64 {
        if self.shutdown.load(Ordering::Acquire) {
            let n = records.count() as u64;
            self.counters
                .rejected_after_shutdown
                .fetch_add(n, Ordering::Relaxed);
            return 0;
        }
        let mut records = records.filter_map(|r| self.check(r)).peekable();
        let mut pending = Vec::new();
        let mut accepted = 0u64;
        while records.peek().is_some() {
            {
                let map = self.runs();
                while let Some(next) = records.peek() {
                    let Some((key, slot)) = map.get_key_value(next.record.run_id()) else {
                        break;
                    };
                    let mut run = lock(slot);
                    while let Some(r) = records.next_if(|r| r.record.run_id() == &**key) {
                        let ok = self.accept_into(&mut run, r, now, fan_out, &mut pending);
                        accepted += u64::from(ok);
                    }
                    self.flush(&mut run, &mut pending, now);
                }
            }
            // The next record's run is not tracked yet.
            if let Some(r) = records.next() {
                let record = Arc::clone(&r.record);
                let ok = self.with_run(record.run_id(), now, |run| {
                    let ok = self.accept_into(run, r, now, fan_out, &mut pending);
                    self.flush(run, &mut pending, now);
                    ok
                });
                accepted += u64::from(ok);
            }
        }
        if fan_out && accepted > 0 {
            self.counters
                .published
                .fetch_add(accepted, Ordering::Relaxed);
        }
        accepted
    }

    /// Removes a subscriber from its run's (or the all-runs) list and from the registry.
    pub fn unregister(&self, shared: &Arc<SubShared>) {
        match &shared.run_id {
            Some(run_id) => {
                if let Some(slot) = self.runs().get(&**run_id) {
                    let mut run = lock(slot);
                    run.subs[shared.stream.index()].retain(|s| !Arc::ptr_eq(s, shared));
                }
            }
            None => lock(&self.all_runs)
                .subs
                .retain(|s| !Arc::ptr_eq(s, shared)),
        }
        if self.registry().remove(&shared.id).is_some() {
            self.counters
                .delivered_by_ended
                .fetch_add(shared.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}
