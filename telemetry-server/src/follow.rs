//! Following a store that other daemons write too (PostgreSQL): the one publisher to the hub.
//!
//! On a store only this server writes (SQLite), the pipeline publishes what it committed
//! straight to the hub. On a shared store that is not enough: a viewer on daemon A must see,
//! live, what workers send to daemon B. And mixing the two sources in the hub would break it:
//! the hub accepts a run's records only in seq order, and a record B committed just before one
//! of ours could reach us after ours and be refused. So when the backend offers a change feed
//! ([`telemetry_store::Backend::change_feed`]), this thread is the only publisher:
//!
//! - it keeps one cursor per stream (the store's heads at start, after warm-up) and, on each
//!   wake-up, does keyset reads `seq > cursor` of every stream through the shared reader and
//!   publishes them in seq order, ours and other daemons' alike;
//! - it wakes on a local commit (the pipeline calls [`Follower::wake`] instead of publishing),
//!   on a hint of the feed (one `NOTIFY` per batch another daemon committed), on a reconnect of
//!   the feed (to catch up on hints it may have missed), and at least every
//!   [`POLL_INTERVAL`] anyway, so a lost hint delays records but loses none;
//! - hints are coalesced into one flag (bounded whatever the rate): a hint that arrives while
//!   a read is already due is counted as `coalesced` and costs nothing;
//! - each round reads the lifecycle stream first, up to one page, then the data streams to
//!   their end, then publishes the lifecycle page: a `RunCompleted` closes a run's live views,
//!   so every record committed before it must be in the hub first;
//! - a failed read is counted (`errors`) and retried on the next round from the same cursors.
//!
//! Memory is bounded by one page per stream ([`PAGE`] records).
//!
//! The run registry is shared the same way: every run row carries its owner daemon
//! (`RunInfo.owner`, [`daemon_identity`]); [`follow_runs`] reads the rows every second and
//! shows other daemons' runs in ours (ListRuns, WatchRuns), which never persists, cancels,
//! reaps or times them out: their owner does.
//!
//! Owners hold leases ([`telemetry_store::Leases`]): [`keep_lease`] renews ours every quarter
//! of its TTL, and each [`follow_runs`] round also takes over the active runs of daemons whose
//! lease lapsed (see [`Registry::adopt`]). What keeps a taken run alive is what this follower
//! reads: every record it publishes counts as a heartbeat of its run, whichever daemon stored
//! it, and a `RunCompleted` stored through another daemon ends a run we own
//! ([`Follower::observe`]).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
    thread,
    time::Duration,
};

use telemetry_core::pb::{Record, RunCompleted};
use telemetry_hub::Hub;
use telemetry_store::{
    Backend, BackendReader, ChangeFeed, ChangeWake, Filter, StoreError, StreamHeads,
};

use crate::{metrics::Metrics, runs::Registry};

/// How often the run rows of other daemons are read into the registry (and lapsed owners'
/// runs taken over).
pub const RUNS_INTERVAL: Duration = Duration::from_secs(1);

/// `RunCompleted`s read from the store waiting to be applied to the registry; when full, one
/// is dropped and counted (`completions_dropped`): its run then ends by the heartbeat timeout.
pub const COMPLETIONS_BUFFER: usize = 1024;

/// What the follower tells the run registry about the records it reads.
struct Observer {
    registry: Registry,
    completions: tokio::sync::mpsc::Sender<RunCompleted>,
    dropped: AtomicU64,
}

/// Owner leases of a shared store, for [`follow_runs`] and [`keep_lease`].
#[derive(Clone)]
pub struct Leasing {
    /// The store's leases.
    pub leases: Arc<dyn telemetry_store::Leases>,
    /// Our identity (the registry's owner).
    pub owner: String,
    /// How long a renewal holds.
    pub ttl: Duration,
    /// Counters (`store_leases`).
    pub metrics: Metrics,
}

impl Leasing {
    /// Renews our lease once (on the blocking pool).
    pub async fn renew(&self) -> Result<telemetry_store::Renewal, telemetry_store::StoreError> {
        let (l, owner, ttl) = (self.leases.clone(), self.owner.clone(), self.ttl);
        let out = tokio::task::spawn_blocking(move || l.renew(&owner, ttl))
            .await
            .unwrap_or_else(|e| {
                Err(telemetry_store::StoreError::Server {
                    engine: "lease",
                    code: None,
                    retryable: true,
                    detail: format!("the renewal did not finish: {e}"),
                })
            });
        match &out {
            Ok(telemetry_store::Renewal::Lapsed) => {
                self.metrics.lease_event("renewals", 1);
                self.metrics.lease_event("lapsed", 1);
                tracing::warn!(owner = %self.owner, "our lease had lapsed: other daemons may have taken our runs over");
            }
            Ok(_) => self.metrics.lease_event("renewals", 1),
            Err(e) => {
                self.metrics.lease_event("renew_errors", 1);
                tracing::warn!(error = %e, "renewing our lease failed");
            }
        }
        out
    }

    /// Ends our lease (a clean shutdown).
    pub async fn release(&self) {
        let (l, owner) = (self.leases.clone(), self.owner.clone());
        match tokio::task::spawn_blocking(move || l.release(&owner)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing our lease failed"),
            Err(e) => tracing::warn!(error = %e, "releasing our lease did not finish"),
        }
    }

    /// One take-over round: the runs of lapsed owners become ours ([`Registry::adopt`]); a
    /// taken run whose `RunCompleted` is already stored takes its final state from it.
    pub async fn take_over(&self, reader: &Arc<dyn BackendReader>, registry: &Registry) {
        self.metrics.lease_event("takeover_rounds", 1);
        let (l, owner) = (self.leases.clone(), self.owner.clone());
        let taken = match tokio::task::spawn_blocking(move || l.take_over(&owner)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.metrics.lease_event("takeover_errors", 1);
                tracing::warn!(error = %e, "taking over lapsed owners' runs failed");
                return;
            }
            Err(e) => {
                self.metrics.lease_event("takeover_errors", 1);
                tracing::warn!(error = %e, "the take-over did not finish");
                return;
            }
        };
        if taken.is_empty() {
            return;
        }
        self.metrics.lease_event("taken_runs", taken.len() as u64);
        let running: Vec<String> = taken
            .iter()
            .filter(|t| t.info.state == telemetry_core::pb::RunState::Running as i32)
            .map(|t| t.info.run_id.clone())
            .collect();
        registry.adopt(taken).await;
        for run_id in running {
            let r = reader.clone();
            let id = run_id.clone();
            match tokio::task::spawn_blocking(move || r.run_completion(&id)).await {
                Ok(Ok(Some(done))) => registry.observe_completion(&done).await,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%run_id, error = %e, "reading a taken run's completion failed")
                }
                Err(e) => {
                    tracing::warn!(%run_id, error = %e, "reading a taken run's completion did not finish")
                }
            }
        }
    }
}

/// Renews our lease every quarter of its TTL until `cancel` (the shutdown releases it once the
/// registry's last changes are stored).
pub async fn keep_lease(leasing: Leasing, cancel: tokio_util::sync::CancellationToken) {
    let every = (leasing.ttl / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate and start-up has just renewed.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => break,
        }
        let _ = leasing.renew().await;
    }
}

/// Applies `RunCompleted`s the follower read to the registry, until the sender goes.
pub async fn apply_completions(
    mut rx: tokio::sync::mpsc::Receiver<RunCompleted>,
    registry: Registry,
) {
    while let Some(done) = rx.recv().await {
        registry.observe_completion(&done).await;
    }
}

/// This daemon's identity on a shared store: `<hostname>:<var dir>` (stable across restarts,
/// so a restarted daemon knows its own runs; distinct per var dir, so two daemons of one host
/// differ).
pub fn daemon_identity(var_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let dir = std::fs::canonicalize(var_dir).unwrap_or_else(|_| var_dir.to_owned());
    format!("{host}:{}", dir.display())
}

/// Reads the shared run registry every [`RUNS_INTERVAL`] and shows other daemons' runs (and
/// their changes) in ours, until `cancel`.
pub async fn follow_runs(
    reader: Arc<dyn BackendReader>,
    registry: Registry,
    leasing: Option<Leasing>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(RUNS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let r = reader.clone();
        match tokio::task::spawn_blocking(move || r.run_infos()).await {
            Ok(Ok(rows)) => registry.merge_foreign(rows),
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the shared run registry failed"),
            Err(e) => tracing::warn!(error = %e, "the run registry read did not finish"),
        }
        if let Some(l) = &leasing {
            l.take_over(&reader, &registry).await;
        }
    }
}

/// The longest a committed record waits to be read when every hint about it was lost.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Records read per page of a stream.
pub const PAGE: usize = 1024;

/// The pause after a failed round before the next one.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Flag {
    dirty: bool,
    stop: bool,
}

/// The one wake-up flag of the follower (hints coalesce into it).
#[derive(Default)]
struct Wake {
    flag: Mutex<Flag>,
    cv: Condvar,
    hints: AtomicU64,
    coalesced: AtomicU64,
}

impl Wake {
    fn set(&self) {
        let mut f = self.flag.lock().unwrap_or_else(PoisonError::into_inner);
        if f.dirty {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        f.dirty = true;
        self.cv.notify_one();
    }

    /// Waits until woken, stopped, or `timeout`; returns whether to stop.
    fn wait(&self, timeout: Duration) -> bool {
        let f = self.flag.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut f, _) = self
            .cv
            .wait_timeout_while(f, timeout, |f| !f.dirty && !f.stop)
            .unwrap_or_else(PoisonError::into_inner);
        f.dirty = false;
        f.stop
    }
}

/// The running follower; [`Follower::stop`] ends it.
pub struct Follower {
    wake: Arc<Wake>,
    observer: Arc<std::sync::OnceLock<Observer>>,
    join: thread::JoinHandle<()>,
}

impl Follower {
    /// Starts following `backend` when it has a change feed (`None`: the pipeline publishes).
    /// The cursors start at the store's heads now: what is older was warmed or is read by
    /// catch-up.
    pub fn start(
        backend: &dyn Backend,
        reader: Arc<dyn BackendReader>,
        hub: Hub,
        metrics: Metrics,
    ) -> Result<Option<Follower>, StoreError> {
        let wake = Arc::new(Wake::default());
        let hint = {
            let wake = wake.clone();
            Arc::new(move || {
                wake.hints.fetch_add(1, Ordering::Relaxed);
                wake.set();
            }) as ChangeWake
        };
        let Some(feed) = backend.change_feed(hint)? else {
            return Ok(None);
        };
        let heads = feed.heads()?;
        let observer = Arc::new(std::sync::OnceLock::new());
        let mut state = State {
            observer: observer.clone(),
            feed,
            reader,
            hub,
            metrics,
            cursors: heads,
            reads: 0,
            records: 0,
            errors: 0,
            wake: wake.clone(),
        };
        let join = thread::Builder::new()
            .name("store-follow".into())
            .spawn(move || state.run())
            .map_err(|e| StoreError::Server {
                engine: "follow",
                code: None,
                retryable: false,
                detail: format!("starting the follower thread: {e}"),
            })?;
        tracing::info!(?heads, "following the shared store");
        Ok(Some(Follower {
            wake,
            observer,
            join,
        }))
    }

    /// From now on, every record read counts as a heartbeat of its run in `registry`, and each
    /// `RunCompleted` read is applied to it (through a channel of [`COMPLETIONS_BUFFER`]; the
    /// returned receiver goes to [`apply_completions`]). Set once; later calls change nothing.
    pub fn observe(&self, registry: Registry) -> tokio::sync::mpsc::Receiver<RunCompleted> {
        let (tx, rx) = tokio::sync::mpsc::channel(COMPLETIONS_BUFFER);
        let _ = self.observer.set(Observer {
            registry,
            completions: tx,
            dropped: AtomicU64::new(0),
        });
        rx
    }

    /// What the pipeline calls after a commit that stored records (instead of publishing).
    pub fn local_wake(&self) -> ChangeWake {
        let wake = self.wake.clone();
        Arc::new(move || wake.set())
    }

    /// Stops the thread and waits for it (at most one round's time).
    pub fn stop(self) {
        {
            let mut f = self
                .wake
                .flag
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            f.stop = true;
            self.wake.cv.notify_one();
        }
        let _ = self.join.join();
    }
}

struct State {
    observer: Arc<std::sync::OnceLock<Observer>>,
    feed: Box<dyn ChangeFeed>,
    reader: Arc<dyn BackendReader>,
    hub: Hub,
    metrics: Metrics,
    cursors: StreamHeads,
    reads: u64,
    records: u64,
    errors: u64,
    wake: Arc<Wake>,
}

impl State {
    fn run(&mut self) {
        loop {
            if self.wake.wait(POLL_INTERVAL) {
                return;
            }
            match self.round() {
                Ok(more) => {
                    if more {
                        self.wake.set();
                    }
                }
                Err(e) => {
                    self.errors += 1;
                    tracing::warn!(error = %e, "reading the shared store failed; retrying");
                    self.export();
                    if self.wake.wait(ERROR_PAUSE) {
                        return;
                    }
                    self.wake.set();
                }
            }
        }
    }

    /// One catch-up round; returns whether the lifecycle stream has more to read at once.
    fn round(&mut self) -> Result<bool, StoreError> {
        self.reads += 1;
        let all = Filter::default();
        let events = self.reader.events_page(self.cursors.events, None, PAGE)?;
        let more_events = events.len() >= PAGE;
        loop {
            let page = self.reader.steps_page(self.cursors.steps, &all, PAGE)?;
            let short = page.len() < PAGE;
            if let Some(last) = page.last() {
                self.cursors.steps = last.seq_id;
            }
            self.publish(page.into_iter().map(Record::from).collect());
            if short {
                break;
            }
        }
        loop {
            let page = self
                .reader
                .episodes_page(self.cursors.episodes, &all, PAGE)?;
            let short = page.len() < PAGE;
            if let Some(last) = page.last() {
                self.cursors.episodes = last.seq_id;
            }
            self.publish(page.into_iter().map(Record::from).collect());
            if short {
                break;
            }
        }
        loop {
            let page = self.reader.scalars_page(self.cursors.scalars, &all, PAGE)?;
            let short = page.len() < PAGE;
            if let Some(last) = page.last() {
                self.cursors.scalars = last.seq_id;
            }
            self.publish(page.into_iter().map(Record::from).collect());
            if short {
                break;
            }
        }
        if let Some(last) = events.last() {
            self.cursors.events = last.seq_id();
        }
        self.publish(events);
        self.export();
        Ok(more_events)
    }

    fn publish(&mut self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        self.records += records.len() as u64;
        if let Some(o) = self.observer.get() {
            observe(o, &records);
        }
        self.hub.publish_batch(records);
    }

    fn export(&self) {
        let stats = self.feed.stats();
        let m = &self.metrics.store_follow;
        let set = |event: &str, v: u64| {
            m.get_or_create(&vec![("event".to_owned(), event.to_owned())])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set("hints", self.wake.hints.load(Ordering::Relaxed));
        set("coalesced", self.wake.coalesced.load(Ordering::Relaxed));
        set("reconnects", stats.reconnects);
        set("malformed_hints", stats.malformed);
        set("reads", self.reads);
        set("records", self.records);
        set("errors", self.errors);
        if let Some(o) = self.observer.get() {
            set("completions_dropped", o.dropped.load(Ordering::Relaxed));
        }
    }
}

/// A page's runs get one heartbeat each (records are in seq order, so runs come in runs of
/// equal ids: comparing with the previous id keeps this one pass without a set); completions
/// go to the registry's channel.
fn observe(o: &Observer, records: &[Record]) {
    use telemetry_core::pb::record::Kind;
    let mut last: Option<&str> = None;
    for r in records {
        let Some(kind) = &r.kind else { continue };
        if let Kind::RunCompleted(done) = kind {
            if o.completions.try_send(done.clone()).is_err() {
                o.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let run = r.run_id();
        if last != Some(run) {
            o.registry.heartbeat(run);
            last = Some(run);
        }
    }
}
