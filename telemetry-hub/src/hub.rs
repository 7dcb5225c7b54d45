//! The hub itself: the facade over the shared state in `inner` (publish, subscribe, metrics,
//! shutdown).
//!
//! One `Hub` serves every run and every viewer. The publish path is synchronous and only
//! takes short mutexes (run map read lock, the run's lock, each subscriber queue's lock), so
//! the daemon can call it right after a commit without awaiting anything.

use std::sync::{atomic::Ordering, Arc};

use telemetry_core::pb::Record;
use tokio::time::Instant;

use crate::{
    catchup::Backlog,
    config::HubConfig,
    delivery::CloseReason,
    inner::HubInner,
    metrics::{self, HubMetrics},
    options::{StreamKind, SubscribeError, SubscribeOptions, MAX_BATCH},
    queue::{lock, Matcher, Mode, SubShared},
    source::{CatchUpQuery, CatchUpSource},
    subscription::{Phase, Subscription},
};

/// The live fan-out hub. Cheap to clone (an `Arc`); every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with `config` (zero limits are raised to 1; check with
    /// [`HubConfig::validate`] first to report them) reading catch-up pages from `catch_up`.
    ///
    /// It spawns nothing by itself; catch-up reads run on tokio's blocking pool when a
    /// subscriber with `since_seq` asks for them, so subscriptions must be polled inside a
    /// tokio runtime. `publish` works anywhere.
    pub fn new(config: HubConfig, catch_up: Arc<dyn CatchUpSource>) -> Hub {
        if let Err(e) = config.validate() {
            tracing::warn!(error = %e, "hub config adjusted");
        }
        Hub {
            inner: Arc::new(HubInner::new(config, catch_up)),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Publishes one committed record (its `seq_id` set by the store). Never blocks on a
    /// subscriber and never grows memory beyond the configured bounds. Records without
    /// payload, without seq, without run id, not newer than the run's previous record of the
    /// same stream, or published after shutdown are ignored and counted.
    pub fn publish(&self, record: Record) {
        self.inner
            .publish_many(std::iter::once(Arc::new(record)), Instant::now(), true);
    }

    /// [`Hub::publish`] for a record the caller already shares.
    pub fn publish_arc(&self, record: Arc<Record>) {
        self.inner
            .publish_many(std::iter::once(record), Instant::now(), true);
    }

    /// Publishes a committed batch, in order (each stream's records in seq order).
    pub fn publish_batch(&self, records: impl IntoIterator<Item = Record>) {
        self.inner
            .publish_many(records.into_iter().map(Arc::new), Instant::now(), true);
    }

    /// Fills a run's ring and seq chains from the store after a daemon restart, without
    /// delivering anything to subscribers (the records are history). Call it before
    /// publishing resumes. Per stream, records not newer than what the hub already holds are
    /// ignored (`warm_ignored_total`); a `RunCompleted` among them completes the run.
    pub fn warm(&self, run_id: &str, mut records: Vec<Record>) {
        let c = &self.inner.counters;
        let total = records.len() as u64;
        // Each stream in seq order (streams are independent chains).
        records.sort_by_key(|r| (StreamKind::of(r).map(StreamKind::index), r.seq_id()));
        let ours = records
            .into_iter()
            .filter(|r| r.run_id() == run_id)
            .map(Arc::new);
        let warmed = self.inner.publish_many(ours, Instant::now(), false);
        c.warmed.fetch_add(warmed, Ordering::Relaxed);
        c.warm_ignored.fetch_add(total - warmed, Ordering::Relaxed);
    }

    /// Subscribes; a refused subscription (see [`Hub::try_subscribe`]) yields one
    /// `Delivery::Closed(CloseReason::Refused(..))` and ends.
    pub fn subscribe(&self, opts: SubscribeOptions) -> Subscription {
        match self.try_subscribe(opts.clone()) {
            Ok(s) => s,
            Err(e) => Subscription::refused(Arc::clone(&self.inner), &opts, e),
        }
    }

    /// Subscribes, or says why not.
    pub fn try_subscribe(&self, opts: SubscribeOptions) -> Result<Subscription, SubscribeError> {
        let inner = &self.inner;
        let refuse = |e| {
            inner
                .counters
                .subscribers_refused
                .fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        if inner.shutdown.load(Ordering::Acquire) {
            return refuse(SubscribeError::ShutDown);
        }
        match &opts.run_id {
            None if opts.stream != StreamKind::Lifecycle => {
                return refuse(SubscribeError::AllRunsNeedsLifecycle(opts.stream))
            }
            Some(r) if r.is_empty() => return refuse(SubscribeError::EmptyRunId),
            _ => {}
        }
        let now = Instant::now();
        let capacity = opts
            .queue_capacity
            .unwrap_or(inner.config.subscriber_queue)
            .clamp(1, inner.config.max_subscriber_queue);
        let run_id: Option<Arc<str>> = opts.run_id.as_deref().map(Arc::from);
        let mode = if opts.since_seq.is_some() {
            Mode::Buffering { dropped_max: 0 }
        } else {
            Mode::Live
        };
        let matcher = Matcher {
            agent: opts.agent_id.clone(),
            mode: opts.control_mode,
            filter: opts.filter.clone(),
        };
        let shared = {
            let mut registry = inner.registry();
            if registry.len() >= inner.config.max_subscribers {
                drop(registry);
                return refuse(SubscribeError::TooManySubscribers {
                    limit: inner.config.max_subscribers,
                });
            }
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            let shared = Arc::new(SubShared::new(
                id,
                run_id.clone(),
                opts.stream,
                capacity,
                matcher,
                mode,
                0,
                now,
            ));
            registry.insert(id, Arc::clone(&shared));
            shared
        };
        // A shutdown that collected the registry before this insert set its flag first.
        if inner.shutdown.load(Ordering::Acquire) {
            shared.close(CloseReason::Shutdown);
        }
        // Register for live records first (so nothing published from now on is missed),
        // remembering where the run stood: catch-up must cover everything up to there.
        let i = opts.stream.index();
        let (reg_last, seen_any) = match (&run_id, opts.follow) {
            (Some(r), true) => inner.with_run(r, now, |run| {
                let last = run.last[i];
                shared.state().reg_last = last;
                match &run.completed {
                    Some(rc) => shared.set_terminal(rc),
                    None => run.subs[i].push(Arc::clone(&shared)),
                }
                (last, run.seen_any())
            }),
            (None, true) => {
                let mut all = lock(&inner.all_runs);
                shared.state().reg_last = all.last;
                all.subs.push(Arc::clone(&shared));
                (all.last, true)
            }
            (_, false) => (inner.last_seq(run_id.as_deref(), opts.stream), true),
        };
        let phase = match opts.since_seq {
            Some(since) => Phase::Backlog(Box::new(Backlog::new(
                CatchUpQuery {
                    run_id: opts.run_id.clone(),
                    stream: opts.stream,
                    agent_id: opts.agent_id.clone(),
                    control_mode: opts.control_mode,
                },
                opts.follow,
                since,
                run_id.is_some() && opts.follow && !seen_any,
            ))),
            None if opts.follow => Phase::Live,
            None => Phase::Done,
        };
        let rate = opts
            .rate
            .map(|r| (r.min_interval, r.max_batch.clamp(1, MAX_BATCH)));
        Ok(Subscription::new(
            Arc::clone(inner),
            shared,
            phase,
            opts.since_seq.unwrap_or(reg_last),
            rate,
            opts.filter,
            (opts.since_seq.is_none() && !opts.follow).then_some(reg_last),
        ))
    }

    /// A snapshot of every counter and gauge (see [`HubMetrics`]). Rates cover the time since
    /// the previous call.
    pub fn metrics(&self) -> HubMetrics {
        metrics::collect(&self.inner)
    }

    /// Blocking catch-up reads in flight (tasks the hub spawned and has not seen end).
    pub fn tasks_active(&self) -> usize {
        self.inner.tracker.len()
    }

    /// Stops the hub: every subscription yields `Closed(Shutdown)` and ends, later publishes
    /// and subscriptions are refused (and counted), and this returns only when every task the
    /// hub spawned (catch-up reads) has ended. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.shutdown.store(true, Ordering::Release);
        let subs: Vec<Arc<SubShared>> = self.inner.registry().values().cloned().collect();
        for s in subs {
            s.close(CloseReason::Shutdown);
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        tracing::debug!("hub shut down");
    }
}
