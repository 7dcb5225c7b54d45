//! The run registry: every run the daemon knows, its state, and the worker processes it started.
//!
//! A run enters the registry when it is submitted (`SubmitRun`, the daemon spawns the worker) or
//! when telemetry for an unknown run arrives (a worker started by hand). States move
//! `pending -> running -> completed | failed | cancelled` and never back. Every change is persisted
//! through the store writer (so a restart knows what was running) and broadcast to `WatchRuns`
//! subscribers. When a worker the daemon started exits, the daemon records a `RunCompleted`
//! (unless the worker reported its own), which ends every live view of the run.
//!
//! Limits: the in-memory registry keeps at most [`MAX_TRACKED_RUNS`] runs, evicting the oldest
//! finished ones first (they stay in the store); the change broadcast holds
//! [`WATCH_BUFFER`] changes per subscriber, and a subscriber that falls further behind is sent a
//! fresh snapshot instead of the changes it missed.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use telemetry_core::{
    pb::{RunCompleted, RunInfo, RunState},
    timestamp,
};
use tokio::sync::{broadcast, Notify};

use crate::{metrics::Metrics, pipeline::Pipeline};

/// Runs kept in memory at most.
pub const MAX_TRACKED_RUNS: usize = 10_000;
/// Changes buffered per `WatchRuns` subscriber.
pub const WATCH_BUFFER: usize = 1024;
/// `WatchRuns` streams (ours and the predecessor's together) at once, by default.
pub const DEFAULT_MAX_WATCHERS: usize = 64;

/// How many `WatchRuns` streams are open, and how many may be.
struct WatchLimit {
    held: AtomicUsize,
    max: usize,
}

/// One open `WatchRuns` stream's place; released on drop.
pub struct WatchSlot(Arc<WatchLimit>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Is this state final?
pub fn is_final(state: i32) -> bool {
    matches!(
        RunState::try_from(state),
        Ok(RunState::Completed | RunState::Failed | RunState::Cancelled)
    )
}

pub(crate) struct ProcessControl {
    pub cancel: Arc<Notify>,
    /// Why the process is being stopped: `None` for a user cancel.
    pub stop_reason: Option<String>,
    pub stop_requested: bool,
}

struct Entry {
    info: RunInfo,
    /// Owned by another daemon of a shared store: shown, never persisted, cancelled or timed
    /// out here (its rows come from the store, see [`Registry::merge_foreign`]).
    foreign: bool,
    process: Option<ProcessControl>,
    completion_recorded: bool,
    last_beat: Instant,
    order: u64,
    /// Taken over from this daemon (its lease lapsed): the heartbeat timeout's failure reason
    /// says so.
    taken_from: Option<String>,
}

struct Inner {
    runs: HashMap<String, Entry>,
    next_order: u64,
}

/// Signs of life shared through the store (see [`Registry::with_shared_beats`]).
#[derive(Clone)]
struct SharedBeats {
    leases: Arc<dyn telemetry_store::Leases>,
    metrics: Metrics,
}

/// Shared registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<RunInfo>,
    watchers: Arc<WatchLimit>,
    writer: Pipeline,
    /// This daemon's identity on a shared store (empty: the store is ours alone).
    owner: Arc<str>,
    /// On a shared store: where signs of life of other daemons' runs are stored, and where the
    /// heartbeat timeout looks before it fails a run of ours (see [`Registry::beat`]).
    shared_beats: Option<SharedBeats>,
    /// Where workers' logs and queues live.
    pub var_dir: PathBuf,
}

impl Registry {
    /// An empty registry persisting through `writer`.
    pub fn new(writer: Pipeline, var_dir: PathBuf) -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Registry {
            inner: Arc::new(Mutex::new(Inner {
                runs: HashMap::new(),
                next_order: 0,
            })),
            changes,
            watchers: Arc::new(WatchLimit {
                held: AtomicUsize::new(0),
                max: DEFAULT_MAX_WATCHERS,
            }),
            writer,
            owner: Arc::from(""),
            shared_beats: None,
            var_dir,
        }
    }

    /// The same registry on a store shared with other daemons that holds `leases` (call before
    /// cloning): a `Heartbeat` for another daemon's run is stored for its owner, and the
    /// heartbeat timeout does not fail a run of ours whose worker heartbeats to another daemon.
    pub fn with_shared_beats(
        mut self,
        leases: Arc<dyn telemetry_store::Leases>,
        metrics: Metrics,
    ) -> Self {
        self.shared_beats = Some(SharedBeats { leases, metrics });
        self
    }

    /// The same registry as daemon `owner` of a store shared with other daemons (call before
    /// cloning): runs it makes carry that owner, rows of other owners are shown but left alone.
    pub fn with_owner(mut self, owner: &str) -> Self {
        self.owner = Arc::from(owner);
        self
    }

    fn is_foreign(&self, info: &RunInfo) -> bool {
        !self.owner.is_empty() && !info.owner.is_empty() && info.owner != *self.owner
    }

    /// Takes in the store's run rows of other daemons (shown by ListRuns/WatchRuns here, and
    /// changes broadcast); rows of ours are ignored (we wrote them).
    pub fn merge_foreign(&self, stored: Vec<RunInfo>) {
        let mut changed = Vec::new();
        {
            let mut inner = self.lock();
            for info in stored {
                if !self.is_foreign(&info) {
                    continue;
                }
                match inner.runs.get_mut(&info.run_id) {
                    Some(e) if e.foreign => {
                        if e.info != info {
                            e.info = info.clone();
                            changed.push(info);
                        }
                    }
                    Some(e) => {
                        // We thought it ours, and the store says another daemon owns it: it was
                        // taken over while our lease had lapsed (or we registered a run another
                        // daemon had registered first). The store is the authority: from now on
                        // we only show it (a worker of ours still running is left to exit; its
                        // completion is a record, stored as any other).
                        tracing::warn!(run_id = %info.run_id, owner = %info.owner, "run owned by another daemon now");
                        e.foreign = true;
                        e.taken_from = None;
                        e.info = info.clone();
                        changed.push(info);
                    }
                    None => {
                        let order = inner.next_order;
                        inner.next_order += 1;
                        inner.runs.insert(
                            info.run_id.clone(),
                            Entry {
                                info: info.clone(),
                                foreign: true,
                                process: None,
                                completion_recorded: true,
                                last_beat: Instant::now(),
                                order,
                                taken_from: None,
                            },
                        );
                        changed.push(info);
                    }
                }
            }
            evict(&mut inner);
        }
        for info in changed {
            let _ = self.changes.send(info);
        }
    }

    /// This daemon's identity on a shared store (empty: the store is ours alone).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Takes in runs this daemon has just taken over from a daemon whose lease lapsed (their
    /// rows already name us). A pending run never started (its owner's queue died with it): it
    /// is failed as interrupted, with a stored `RunCompleted`. A running run becomes ours as it
    /// is: its worker (not our child) goes on if it is alive, and our heartbeat timeout, counted
    /// from the last sign of life this daemon saw (a heartbeat or a record through any daemon
    /// of the store, or when we learnt of the run), fails it if it is not. Returns the ids of
    /// the runs failed here.
    pub async fn adopt(&self, taken: Vec<telemetry_store::TakenRun>) -> Vec<String> {
        let mut failed = Vec::new();
        let mut shown = Vec::new();
        {
            let mut inner = self.lock();
            for t in taken {
                let run_id = t.info.run_id.clone();
                tracing::warn!(%run_id, from = %t.from, "took over a run whose owner's lease lapsed");
                let pending = t.info.state == RunState::Pending as i32;
                match inner.runs.get_mut(&run_id) {
                    Some(e) => {
                        e.foreign = false;
                        e.info = t.info;
                        e.taken_from = Some(t.from);
                        e.completion_recorded = false;
                        shown.push(e.info.clone());
                    }
                    None => {
                        let order = inner.next_order;
                        inner.next_order += 1;
                        shown.push(t.info.clone());
                        inner.runs.insert(
                            run_id.clone(),
                            Entry {
                                info: t.info,
                                foreign: false,
                                process: None,
                                completion_recorded: false,
                                last_beat: Instant::now(),
                                order,
                                taken_from: Some(t.from),
                            },
                        );
                    }
                }
                if pending {
                    failed.push(run_id);
                }
            }
            evict(&mut inner);
        }
        for info in shown {
            let _ = self.changes.send(info);
        }
        for run_id in &failed {
            let from = self
                .lock()
                .runs
                .get(run_id)
                .and_then(|e| e.taken_from.clone())
                .unwrap_or_default();
            let reason = format!("{TAKEN_OVER}: its daemon {from} stopped before it started");
            self.fail(run_id, reason).await;
        }
        failed
    }

    /// The same registry with at most `max` `WatchRuns` streams at once (call before cloning).
    pub fn with_max_watchers(mut self, max: usize) -> Self {
        self.watchers = Arc::new(WatchLimit {
            held: AtomicUsize::new(0),
            max,
        });
        self
    }

    /// A place for one more `WatchRuns` stream, held for as long as the stream runs, or the
    /// number already open when all are taken.
    pub fn watch_slot(&self) -> Result<WatchSlot, usize> {
        let limit = &self.watchers;
        limit
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit.max).then_some(n + 1)
            })
            .map(|_| WatchSlot(limit.clone()))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the runs a previous daemon persisted. Runs it left pending or running were
    /// interrupted by its death: they are marked failed. Returns the ids so marked.
    pub async fn restore(&self, stored: Vec<RunInfo>) -> Vec<Interrupted> {
        // Other daemons' runs were not interrupted by our death: shown, not restored.
        let (foreign, stored): (Vec<RunInfo>, Vec<RunInfo>) =
            stored.into_iter().partition(|i| self.is_foreign(i));
        self.merge_foreign(foreign);
        let (interrupted, changed) = {
            let mut inner = self.lock();
            let marked = insert_restored(&mut inner, stored);
            // Once after the bulk insert: one pass however many runs were restored.
            evict(&mut inner);
            marked
        };
        for info in changed {
            self.persist(info).await;
        }
        interrupted
    }

    async fn persist(&self, info: RunInfo) {
        let _ = self.changes.send(info.clone());
        if let Err(e) = self.writer.put_run(info).await {
            tracing::warn!(error = %e, "run state not persisted");
        }
    }

    /// Adds a new run in state pending. Fails if the id exists.
    pub async fn insert_pending(&self, mut info: RunInfo) -> Result<(), String> {
        {
            let mut inner = self.lock();
            if inner.runs.contains_key(&info.run_id) {
                return Err(format!("run {:?} already exists", info.run_id));
            }
            let now = timestamp::now();
            if info.owner.is_empty() {
                info.owner = self.owner.to_string();
            }
            info.state = RunState::Pending as i32;
            info.created_at = Some(now);
            info.updated_at = Some(now);
            info.last_heartbeat = Some(now);
            let order = inner.next_order;
            inner.next_order += 1;
            inner.runs.insert(
                info.run_id.clone(),
                Entry {
                    info: info.clone(),
                    foreign: false,
                    process: None,
                    completion_recorded: false,
                    last_beat: Instant::now(),
                    order,
                    taken_from: None,
                },
            );
            evict(&mut inner);
        }
        self.persist(info).await;
        Ok(())
    }

    /// Applies `f` to a run's info and persists the result when `f` returns true.
    async fn update(&self, run_id: &str, f: impl FnOnce(&mut Entry) -> bool) -> Option<RunInfo> {
        let (changed, foreign) = {
            let mut inner = self.lock();
            let entry = inner.runs.get_mut(run_id)?;
            if f(entry) {
                entry.info.updated_at = Some(timestamp::now());
                (Some(entry.info.clone()), entry.foreign)
            } else {
                (None, entry.foreign)
            }
        };
        match &changed {
            // Another daemon's run: its owner persists; we only show the change.
            Some(info) if foreign => {
                let _ = self.changes.send(info.clone());
            }
            Some(info) => self.persist(info.clone()).await,
            None => {}
        }
        changed
    }

    /// Binds a policy to an agent of a pending run (replacing that agent's earlier binding).
    /// Fails when the run is unknown or no longer pending: a worker already started never
    /// sees a later binding.
    pub async fn bind_policy(
        &self,
        run_id: &str,
        binding: telemetry_core::pb::PolicyBinding,
    ) -> Result<RunInfo, String> {
        let mut state = None;
        let updated = self
            .update(run_id, |e| {
                state = Some(e.info.state);
                if e.info.state != RunState::Pending as i32 {
                    return false;
                }
                e.info
                    .policy_bindings
                    .retain(|b| b.agent_id != binding.agent_id);
                e.info.policy_bindings.push(binding);
                true
            })
            .await;
        match (updated, state) {
            (Some(info), _) => Ok(info),
            (None, None) => Err(format!("no run {run_id:?}")),
            (None, Some(_)) => Err(format!(
                "run {run_id:?} is no longer pending: policies are equipped before a run starts"
            )),
        }
    }

    /// Runs not yet finished that have `policy_id` equipped.
    pub fn equipped_by(&self, policy_id: &str) -> Vec<String> {
        self.lock()
            .runs
            .values()
            .filter(|e| !is_final(e.info.state))
            .filter(|e| {
                e.info
                    .policy_bindings
                    .iter()
                    .any(|b| b.policy_id == policy_id)
            })
            .map(|e| e.info.run_id.clone())
            .collect()
    }

    /// The worker was spawned. Returns false (and changes nothing) when the run ended
    /// meanwhile (cancelled while it was being started): the caller stops the worker.
    pub(crate) async fn mark_running(
        &self,
        run_id: &str,
        control: ProcessControl,
        worker: Option<(u32, u64)>,
    ) -> bool {
        self.update(run_id, |e| {
            if is_final(e.info.state) {
                return false;
            }
            e.process = Some(control);
            e.info.worker_pid = worker.map(|w| w.0);
            e.info.worker_start_ticks = worker.map(|w| w.1);
            e.last_beat = Instant::now();
            e.info.state = RunState::Running as i32;
            true
        })
        .await
        .is_some()
    }

    /// The worker could not be started or has exited: sets the final state.
    pub async fn finish(
        &self,
        run_id: &str,
        state: RunState,
        reason: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
    ) -> Option<RunInfo> {
        self.update(run_id, |e| {
            if is_final(e.info.state) {
                return false;
            }
            e.process = None;
            e.info.state = state as i32;
            e.info.failure_reason = reason;
            e.info.exit_code = exit_code;
            e.info.signal = signal;
            true
        })
        .await
    }

    /// The reason a stop was requested (`None`: a user cancel), if one was.
    pub(crate) fn stop_request(&self, run_id: &str) -> Option<Option<String>> {
        let inner = self.lock();
        let p = inner.runs.get(run_id)?.process.as_ref()?;
        p.stop_requested.then(|| p.stop_reason.clone())
    }

    /// Asks a running worker to stop (`reason` None: a user cancel). Returns false when the run
    /// is unknown or has no live process.
    pub fn request_stop(&self, run_id: &str, reason: Option<String>) -> bool {
        let mut inner = self.lock();
        let Some(p) = inner.runs.get_mut(run_id).and_then(|e| e.process.as_mut()) else {
            return false;
        };
        if !p.stop_requested {
            p.stop_requested = true;
            p.stop_reason = reason;
            p.cancel.notify_one();
        }
        true
    }

    /// Cancels a run: a live worker is stopped (SIGTERM then SIGKILL); a pending run without a
    /// process is marked cancelled. Returns false when the run had already ended.
    pub async fn cancel(&self, run_id: &str) -> Result<bool, String> {
        let state = {
            let inner = self.lock();
            match inner.runs.get(run_id) {
                None => return Err(format!("unknown run {run_id:?}")),
                Some(e) if e.foreign => {
                    return Err(format!(
                        "run {run_id:?} belongs to daemon {:?}: cancel it there",
                        e.info.owner
                    ))
                }
                Some(e) => e.info.state,
            }
        };
        if is_final(state) {
            return Ok(false);
        }
        if self.request_stop(run_id, None) {
            return Ok(true);
        }
        Ok(self
            .finish(
                run_id,
                RunState::Cancelled,
                "cancelled by request".into(),
                None,
                None,
            )
            .await
            .is_some())
    }

    /// A heartbeat (explicit, or telemetry arriving) for a run. Returns false when unknown.
    pub fn heartbeat(&self, run_id: &str) -> bool {
        let mut inner = self.lock();
        match inner.runs.get_mut(run_id) {
            Some(e) => {
                e.last_beat = Instant::now();
                e.info.last_heartbeat = Some(timestamp::now());
                !is_final(e.info.state)
            }
            None => false,
        }
    }

    /// A worker's `Heartbeat` for a run. For another daemon's active run of a shared store it is
    /// also stored for the owner (`store_leases{event="beats_stored"}`; a failure is logged and
    /// counted as `beat_errors`, and the owner's timeout then goes by the records it sees).
    /// Returns false when the run is unknown here or has ended.
    pub async fn beat(&self, run_id: &str) -> bool {
        if !self.heartbeat(run_id) {
            return false;
        }
        let foreign = self.lock().runs.get(run_id).is_some_and(|e| e.foreign);
        if let (true, Some(b)) = (foreign, &self.shared_beats) {
            let (l, id) = (b.leases.clone(), run_id.to_owned());
            match tokio::task::spawn_blocking(move || l.beat(&id)).await {
                Ok(Ok(true)) => b.metrics.lease_event("beats_stored", 1),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    b.metrics.lease_event("beat_errors", 1);
                    tracing::warn!(run_id, error = %e, "storing a heartbeat for the run's owner failed");
                }
                Err(e) => {
                    b.metrics.lease_event("beat_errors", 1);
                    tracing::warn!(run_id, error = %e, "storing a heartbeat did not finish");
                }
            }
        }
        true
    }

    /// Telemetry arrived for `run_id`: counts as a heartbeat; an unknown run (a worker started
    /// by hand) is registered as running.
    pub async fn observe_telemetry(&self, run_id: &str, agent_id: &str, control_mode: &str) {
        if self.heartbeat(run_id) {
            return;
        }
        let known = self.lock().runs.contains_key(run_id);
        if known {
            return;
        }
        let info = RunInfo {
            run_id: run_id.to_owned(),
            agent_id: agent_id.to_owned(),
            control_mode: control_mode.to_owned(),
            ..Default::default()
        };
        if self.insert_pending(info).await.is_ok() {
            self.update(run_id, |e| {
                e.info.state = RunState::Running as i32;
                true
            })
            .await;
        }
    }

    /// A `RunCompleted` was stored for this run. A run without a process of ours takes its
    /// final state from it; a run with one waits for the process to exit.
    pub async fn observe_completion(&self, done: &RunCompleted) {
        use telemetry_core::pb::CompletionStatus as C;
        let state = match C::try_from(done.status) {
            Ok(C::Succeeded | C::Skipped) => RunState::Completed,
            Ok(C::Cancelled) => RunState::Cancelled,
            _ => RunState::Failed,
        };
        let reason = if !done.error.is_empty() {
            done.error.clone()
        } else {
            done.reason.clone()
        };
        self.update(&done.run_id, |e| {
            e.completion_recorded = true;
            if e.process.is_some() || is_final(e.info.state) {
                return false;
            }
            e.info.state = state as i32;
            e.info.failure_reason = reason;
            e.info.exit_code = done.exit_code;
            e.info.signal = done.signal;
            true
        })
        .await;
    }

    /// Whether a `RunCompleted` is already stored for the run (then the daemon adds none).
    pub fn completion_recorded(&self, run_id: &str) -> bool {
        self.lock()
            .runs
            .get(run_id)
            .is_some_and(|e| e.completion_recorded)
    }

    /// Notes that a `RunCompleted` for the run is stored.
    pub fn set_completion_recorded(&self, run_id: &str) {
        if let Some(e) = self.lock().runs.get_mut(run_id) {
            e.completion_recorded = true;
        }
    }

    /// Running runs of ours whose last heartbeat is older than `timeout` at `now`, with the
    /// daemon each was taken over from.
    fn stale(&self, now: Instant, timeout: Duration) -> Vec<(String, Option<String>)> {
        self.lock()
            .runs
            .values()
            .filter(|e| e.info.state == RunState::Running as i32 && !e.foreign)
            .filter(|e| now.saturating_duration_since(e.last_beat) > timeout)
            .map(|e| (e.info.run_id.clone(), e.taken_from.clone()))
            .collect()
    }

    /// Of `stale` runs, those whose worker heartbeat to another daemon of a shared store
    /// within `timeout` of `now` are taken out (their last beat moved to that time); the rest
    /// are returned. A failed read returns none: this round fails no run (a run is failed only
    /// when no sign of life is found), and the next round reads again.
    async fn beaten_elsewhere(
        &self,
        stale: Vec<(String, Option<String>)>,
        now: Instant,
        timeout: Duration,
    ) -> Vec<(String, Option<String>)> {
        let Some(b) = &self.shared_beats else {
            return stale;
        };
        if stale.is_empty() {
            return stale;
        }
        let ids: Vec<String> = stale.iter().map(|(id, _)| id.clone()).collect();
        let l = b.leases.clone();
        let ages = match tokio::task::spawn_blocking(move || l.beat_ages(&ids)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                b.metrics.lease_event("beat_errors", 1);
                tracing::warn!(error = %e, "reading runs' stored heartbeats failed");
                return Vec::new();
            }
            Err(e) => {
                b.metrics.lease_event("beat_errors", 1);
                tracing::warn!(error = %e, "reading runs' stored heartbeats did not finish");
                return Vec::new();
            }
        };
        let alive: HashMap<String, Duration> = ages
            .into_iter()
            .filter(|(_, age)| *age <= timeout)
            .collect();
        if alive.is_empty() {
            return stale;
        }
        b.metrics.lease_event("beats_seen", alive.len() as u64);
        let mut inner = self.lock();
        for (run_id, age) in &alive {
            if let Some(e) = inner.runs.get_mut(run_id) {
                e.last_beat = now.checked_sub(*age).unwrap_or(now);
            }
        }
        drop(inner);
        stale
            .into_iter()
            .filter(|(id, _)| !alive.contains_key(id))
            .collect()
    }

    /// Fails runs that stopped heartbeating (stopping their workers, if ours). On a shared
    /// store, a run's signs of life stored by other daemons count too.
    pub async fn enforce_heartbeats(&self, now: Instant, timeout: Duration) -> Vec<String> {
        let stale = self.stale(now, timeout);
        let stale = self.beaten_elsewhere(stale, now, timeout).await;
        for (run_id, taken_from) in &stale {
            let mut reason = format!("no heartbeat for {}s", timeout.as_secs());
            if let Some(from) = taken_from {
                reason =
                    format!("{TAKEN_OVER}: its daemon {from} stopped and its worker sent {reason}");
            }
            tracing::warn!(run_id = %run_id, %reason, "failing run");
            if !self.request_stop(run_id, Some(reason.clone())) {
                // No process of ours (a worker started by hand): fail it here, with a stored
                // completion so its live views end (with a process, its exit records one).
                self.fail(run_id, reason).await;
            }
        }
        stale.into_iter().map(|(run_id, _)| run_id).collect()
    }

    /// Fails a run that no process of ours will report on (it never started, or its worker is
    /// not our child): its final state, then a stored `RunCompleted` (unless the worker's own is
    /// stored already), which ends its live views.
    pub async fn fail(&self, run_id: &str, reason: String) {
        self.finish(run_id, RunState::Failed, reason.clone(), None, None)
            .await;
        self.complete(
            run_id,
            telemetry_core::pb::CompletionStatus::Failed,
            reason,
            None,
            None,
        )
        .await;
    }

    /// Stores a `RunCompleted` for the run unless one (the worker's own) is already stored;
    /// storing it ends every live view of the run. The one place the server makes completions.
    pub async fn complete(
        &self,
        run_id: &str,
        status: telemetry_core::pb::CompletionStatus,
        reason: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
    ) {
        if self.completion_recorded(run_id) {
            return;
        }
        self.set_completion_recorded(run_id);
        let failed = status == telemetry_core::pb::CompletionStatus::Failed;
        let done = RunCompleted {
            run_id: run_id.to_owned(),
            timestamp: Some(timestamp::now()),
            status: status as i32,
            exit_code,
            signal,
            error: if failed {
                reason.clone()
            } else {
                String::new()
            },
            reason: if failed { String::new() } else { reason },
            ..Default::default()
        };
        if let Err(e) = self.writer.append(vec![done.into()], Vec::new()).await {
            tracing::warn!(run_id, error = %e, "run_completed not stored");
        }
    }

    /// Every run, oldest first.
    pub fn snapshot(&self) -> Vec<RunInfo> {
        let inner = self.lock();
        let mut v: Vec<(&u64, &RunInfo)> =
            inner.runs.values().map(|e| (&e.order, &e.info)).collect();
        v.sort_by_key(|(o, _)| **o);
        v.into_iter().map(|(_, i)| i.clone()).collect()
    }

    /// One run.
    pub fn get(&self, run_id: &str) -> Option<RunInfo> {
        self.lock().runs.get(run_id).map(|e| e.info.clone())
    }

    /// The current runs and a receiver of every later change.
    pub fn watch(&self) -> (Vec<RunInfo>, broadcast::Receiver<RunInfo>) {
        // Subscribe first so no change between the snapshot and the subscription is lost
        // (a change may then be seen twice, which is harmless: it is a state, not a delta).
        let rx = self.changes.subscribe();
        (self.snapshot(), rx)
    }

    /// Ids of runs with a live worker process.
    pub fn live_processes(&self) -> Vec<String> {
        self.lock()
            .runs
            .values()
            .filter(|e| e.process.is_some())
            .map(|e| e.info.run_id.clone())
            .collect()
    }

    /// The pipeline (to record lifecycle events).
    pub fn writer(&self) -> &Pipeline {
        &self.writer
    }
}

/// A run a dead server left active that this one ends: spawned by it (its worker pid and start
/// ticks, to stop a worker that outlived it) or still pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    /// The run.
    pub run_id: String,
    /// The worker the dead server spawned: `(pid, start ticks)`.
    pub worker: Option<(u32, u64)>,
}

/// How the reason stored for a run taken over from a dead daemon and then failed begins.
pub const TAKEN_OVER: &str = "interrupted: taken over";

/// The reason stored for a run interrupted by a server restart.
pub const INTERRUPTED: &str = "interrupted: the daemon stopped while the run was active";

/// Inserts the runs a previous server persisted, in their order. Runs it spawned (they carry a
/// worker pid) and runs still pending are failed as interrupted and returned, to get a stored
/// `RunCompleted`; runs fed by a worker started by hand stay running (such a worker reconnects
/// and goes on) under the heartbeat timeout, which fails them, with a stored completion, if it
/// does not. Returns the interrupted runs and the changed infos. Does not evict.
fn insert_restored(inner: &mut Inner, stored: Vec<RunInfo>) -> (Vec<Interrupted>, Vec<RunInfo>) {
    let mut interrupted = Vec::new();
    let mut changed = Vec::new();
    inner.runs.reserve(stored.len());
    for mut info in stored {
        let active = !is_final(info.state);
        let spawned = info.worker_pid.is_some();
        if active && (spawned || info.state == RunState::Pending as i32) {
            interrupted.push(Interrupted {
                run_id: info.run_id.clone(),
                worker: info.worker_pid.zip(info.worker_start_ticks),
            });
            info.state = RunState::Failed as i32;
            info.failure_reason = INTERRUPTED.into();
            info.updated_at = Some(timestamp::now());
            changed.push(info.clone());
        }
        let order = inner.next_order;
        inner.next_order += 1;
        inner.runs.insert(
            info.run_id.clone(),
            Entry {
                info,
                foreign: false,
                process: None,
                // Active runs have no stored completion yet: the server makes one (for an
                // external run, when its heartbeat times out).
                completion_recorded: !active,
                last_beat: Instant::now(),
                order,
                taken_from: None,
            },
        );
    }
    (interrupted, changed)
}

/// Keeps at most [`MAX_TRACKED_RUNS`] runs by removing the oldest finished ones (active runs
/// are kept, even over the limit). One pass over the runs plus a selection of the excess,
/// however many must go: linear, not a scan per removed run. Returns the entries scanned.
fn evict(inner: &mut Inner) -> usize {
    let excess = inner.runs.len().saturating_sub(MAX_TRACKED_RUNS);
    if excess == 0 {
        return 0;
    }
    let scanned = inner.runs.len();
    let mut finished: Vec<(u64, String)> = inner
        .runs
        .values()
        .filter(|e| is_final(e.info.state))
        .map(|e| (e.order, e.info.run_id.clone()))
        .collect();
    if finished.len() > excess {
        // Orders are unique: the `excess` smallest are exactly the oldest finished runs.
        finished.select_nth_unstable(excess - 1);
        finished.truncate(excess);
    }
    for (_, id) in finished {
        inner.runs.remove(&id);
    }
    scanned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(i: usize, state: RunState) -> RunInfo {
        RunInfo {
            run_id: format!("run-{i:05}"),
            state: state as i32,
            ..Default::default()
        }
    }

    fn empty() -> Inner {
        Inner {
            runs: HashMap::new(),
            next_order: 0,
        }
    }

    #[test]
    fn restoring_more_than_the_limit_keeps_the_newest_in_one_pass() {
        const EXTRA: usize = 500;
        let total = MAX_TRACKED_RUNS + EXTRA;
        // Every 7th run was left running by the dead daemon, which had spawned its worker:
        // restored as failed (interrupted).
        let stored: Vec<RunInfo> = (0..total)
            .map(|i| {
                if i % 7 == 0 {
                    RunInfo {
                        worker_pid: Some(4242),
                        ..info(i, RunState::Running)
                    }
                } else {
                    info(i, RunState::Completed)
                }
            })
            .collect();
        let mut inner = empty();
        let (interrupted, changed) = insert_restored(&mut inner, stored);
        assert_eq!(interrupted.len(), total.div_ceil(7));
        assert_eq!(changed.len(), interrupted.len());
        assert_eq!(inner.runs.len(), total);

        let scanned = evict(&mut inner);
        assert_eq!(
            scanned, total,
            "one pass over the runs, not one per evicted run"
        );
        assert_eq!(inner.runs.len(), MAX_TRACKED_RUNS);
        for i in 0..EXTRA {
            assert!(!inner.runs.contains_key(&format!("run-{i:05}")), "{i} kept");
        }
        for i in EXTRA..total {
            assert!(
                inner.runs.contains_key(&format!("run-{i:05}")),
                "{i} evicted"
            );
        }
        assert!(inner
            .runs
            .values()
            .all(|e| (e.info.state == RunState::Failed as i32) != e.completion_recorded));
        // Under the limit nothing is scanned.
        assert_eq!(evict(&mut inner), 0);
    }

    #[test]
    fn spawned_and_pending_runs_are_interrupted_but_external_ones_go_on() {
        let mut inner = empty();
        let spawned = RunInfo {
            worker_pid: Some(7),
            worker_start_ticks: Some(99),
            ..info(0, RunState::Running)
        };
        let (interrupted, changed) = insert_restored(
            &mut inner,
            vec![
                spawned,
                info(1, RunState::Pending),
                info(2, RunState::Running),
                info(3, RunState::Completed),
            ],
        );
        assert_eq!(
            interrupted,
            vec![
                Interrupted {
                    run_id: "run-00000".into(),
                    worker: Some((7, 99))
                },
                Interrupted {
                    run_id: "run-00001".into(),
                    worker: None
                },
            ]
        );
        assert_eq!(changed.len(), 2);
        let external = &inner.runs["run-00002"];
        assert_eq!(external.info.state, RunState::Running as i32, "goes on");
        assert!(
            !external.completion_recorded,
            "its heartbeat timeout stores one"
        );
        assert!(inner.runs["run-00003"].completion_recorded);
    }

    #[test]
    fn active_runs_are_never_evicted() {
        let mut inner = empty();
        let _ = insert_restored(
            &mut inner,
            (0..MAX_TRACKED_RUNS)
                .map(|i| info(i, RunState::Completed))
                .collect(),
        );
        // Make the two oldest active (as a pending submission would be).
        for i in 0..2 {
            if let Some(e) = inner.runs.get_mut(&format!("run-{i:05}")) {
                e.info.state = RunState::Pending as i32;
            }
        }
        let _ = insert_restored(
            &mut inner,
            vec![info(MAX_TRACKED_RUNS, RunState::Completed)],
        );
        evict(&mut inner);
        assert_eq!(inner.runs.len(), MAX_TRACKED_RUNS);
        assert!(inner.runs.contains_key("run-00000"));
        assert!(inner.runs.contains_key("run-00001"));
        assert!(
            !inner.runs.contains_key("run-00002"),
            "the oldest finished run goes"
        );
    }
}
