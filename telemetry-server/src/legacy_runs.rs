//! The predecessor's view of runs: `RunRecord` updates numbered by `seq_id`, the DISPATCHING
//! state, GPU slots, `schedule.max_duration_seconds`, and TrainRunConfig submissions.
//!
//! - **Updates.** A task follows the run registry and turns every change into a `RunRecord`
//!   with the next `seq_id` (from 1). The last [`FEED_LOG`] updates are kept, so `WatchRuns`
//!   with `since_seq = N` replays every later update, then follows; a client further behind is
//!   sent each run's latest record newer than `N` instead. Our registry has no DISPATCHING state:
//!   for a run submitted here the update between PENDING and the worker's start (RUNNING, or
//!   FAILED when it cannot be spawned) is preceded by a DISPATCHING update.
//! - **GPUs.** The daemon is given a pool of slots (`--gpus 0,1`; none by default). A run gets
//!   `resources.gpus.requested` free slots, or as many as are free when the request is not
//!   `mandatory`; a mandatory request that cannot be met is refused (`RESOURCE_EXHAUSTED`). The
//!   slots go to `CUDA_VISIBLE_DEVICES` (empty when none) and `gpu_slot`/`gpu_slots`, and back to
//!   the pool when the run ends.
//! - **Time limit.** A run with `schedule.max_duration_seconds` still active after that long is
//!   stopped (SIGTERM, then SIGKILL). The legacy record shows it CANCELLED with the reason
//!   `max_duration_seconds (N s) exceeded`; our own API shows the same reason on a FAILED run
//!   (a stop the user did not ask for).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use prost_types::Timestamp;
use telemetry_core::{
    pb::{self, legacy::RunRecord, legacy::RunStatus, RunInfo, RunState, WorkerCommand},
    timestamp,
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    legacy_config::{derived_run_id, iso8601, sha256_hex, TrainRunConfig},
    runs::{is_final, Registry},
    security,
};

/// Updates kept for `WatchRuns` replay.
pub const FEED_LOG: usize = 4096;
/// The demo worker's executable name.
pub const DEMO_EXE_NAME: &str = "gym-telemetry-demo";
/// The file a worker's `metadata.worker.config` is written to, in its run directory.
pub const WORKER_CONFIG_FILE: &str = "worker-config.json";

/// What the legacy service needs beyond the daemon's shared components.
#[derive(Debug, Clone, Default)]
pub struct LegacyOptions {
    /// The GPU slots runs may be given.
    pub gpus: Vec<u32>,
    /// The built-in demo worker (`<demo_exe> worker`), run when a config names no worker.
    pub demo_exe: PathBuf,
    /// The address the daemon listens on, for `GetHealth`.
    pub listen_address: String,
}

struct Feed {
    next_seq: u64,
    log: VecDeque<RunRecord>,
    latest: HashMap<String, RunRecord>,
}

#[derive(Default)]
struct Book {
    /// Slots in use, by run.
    gpus: HashMap<String, Vec<u32>>,
    /// Runs submitted here whose worker has not started yet.
    dispatching: HashSet<String>,
    /// Final status and reason shown instead of the registry's (the time limit).
    overrides: HashMap<String, (RunStatus, String)>,
}

/// The legacy run view; shared by the service's clones.
pub struct LegacyRuns {
    feed: Mutex<Feed>,
    book: Mutex<Book>,
    tx: broadcast::Sender<RunRecord>,
    opts: Mutex<LegacyOptions>,
    /// When the service started.
    pub started_at: Timestamp,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The predecessor's status for one of our run states.
pub fn legacy_status(state: i32) -> RunStatus {
    match RunState::try_from(state) {
        Ok(RunState::Pending) => RunStatus::Pending,
        Ok(RunState::Running) => RunStatus::Running,
        Ok(RunState::Completed) => RunStatus::Completed,
        Ok(RunState::Failed) => RunStatus::Failed,
        Ok(RunState::Cancelled) => RunStatus::Cancelled,
        _ => RunStatus::Unspecified,
    }
}

/// The predecessor's run record for one of ours. The digest is the hex SHA-256 of the run's
/// metadata JSON, which for a TrainRunConfig submission is the config's canonical JSON (so it
/// equals the digest `SubmitRun` returned).
pub fn run_record(info: RunInfo) -> RunRecord {
    RunRecord {
        status: legacy_status(info.state) as i32,
        digest: sha256_hex(info.metadata_json.as_bytes()),
        created_at: info.created_at,
        updated_at: info.updated_at,
        last_heartbeat: info.last_heartbeat,
        gpu_slot: None,
        failure_reason: (!info.failure_reason.is_empty()).then_some(info.failure_reason),
        gpu_slots: Vec::new(),
        seq_id: 0,
        run_id: info.run_id,
    }
}

impl LegacyRuns {
    /// Starts following `registry` (subscribed before this returns, so no change is missed).
    pub fn start(
        registry: &Registry,
        opts: LegacyOptions,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (tx, _) = broadcast::channel(crate::runs::WATCH_BUFFER);
        let me = Arc::new(LegacyRuns {
            feed: Mutex::new(Feed {
                next_seq: 1,
                log: VecDeque::new(),
                latest: HashMap::new(),
            }),
            book: Mutex::new(Book::default()),
            tx,
            opts: Mutex::new(opts),
            started_at: timestamp::now(),
        });
        let (snapshot, mut rx) = registry.watch();
        for info in snapshot {
            me.ingest(info);
        }
        let feed = me.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    n = rx.recv() => n,
                };
                match next {
                    Ok(info) => feed.ingest(info),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for info in registry.snapshot() {
                            feed.ingest(info);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        me
    }

    /// The options in force.
    pub fn opts(&self) -> LegacyOptions {
        lock(&self.opts).clone()
    }

    /// Replaces the options (at start, before serving).
    pub fn set_opts(&self, opts: LegacyOptions) {
        *lock(&self.opts) = opts;
    }

    /// The legacy record of a run as of `info` (GPU slots, overrides, latest `seq_id`).
    pub fn view(&self, info: RunInfo) -> RunRecord {
        let mut rec = run_record(info);
        {
            let book = lock(&self.book);
            if let Some(slots) = book.gpus.get(&rec.run_id) {
                rec.gpu_slots = slots
                    .iter()
                    .map(|s| i32::try_from(*s).unwrap_or(-1))
                    .collect();
                rec.gpu_slot = rec.gpu_slots.first().copied();
            }
            if is_final_status(rec.status) {
                if let Some((status, reason)) = book.overrides.get(&rec.run_id) {
                    rec.status = *status as i32;
                    rec.failure_reason = Some(reason.clone());
                }
            }
        }
        if let Some(l) = lock(&self.feed).latest.get(&rec.run_id) {
            rec.seq_id = l.seq_id;
        }
        rec
    }

    fn ingest(&self, info: RunInfo) {
        let run_id = info.run_id.clone();
        let mut rec = self.view(info);
        let mut feed = lock(&self.feed);
        let last = feed.latest.get(&run_id).cloned();
        if let Some(l) = &last {
            if l.status == rec.status && l.updated_at == rec.updated_at {
                return; // a snapshot repeating what was sent
            }
        }
        let was_pending = last
            .as_ref()
            .is_some_and(|l| l.status == RunStatus::Pending as i32);
        let dispatching = lock(&self.book).dispatching.remove(&run_id);
        if dispatching
            && was_pending
            && rec.status != RunStatus::Pending as i32
            && rec.status != RunStatus::Cancelled as i32
        {
            let mut d = rec.clone();
            d.status = RunStatus::Dispatching as i32;
            push(&mut feed, &self.tx, d);
        } else if dispatching && rec.status == RunStatus::Pending as i32 {
            lock(&self.book).dispatching.insert(run_id.clone());
        }
        if is_final_status(rec.status) {
            let mut book = lock(&self.book);
            book.gpus.remove(&run_id);
        }
        rec.seq_id = 0;
        push(&mut feed, &self.tx, rec);
    }

    /// `WatchRuns`: updates after `since_seq` matching `filter`, then every later one. `slot`
    /// (the watcher limit's place) is held until the stream ends.
    pub fn watch<S: Send + 'static>(
        self: &Arc<Self>,
        since_seq: u64,
        filter: Vec<i32>,
        tx: mpsc::Sender<Result<RunRecord, Status>>,
        shutdown: CancellationToken,
        slot: S,
    ) {
        let (replay, mut rx) = {
            let feed = lock(&self.feed);
            let rx = self.tx.subscribe();
            (replay_after(&feed, since_seq), rx)
        };
        let me = self.clone();
        let keep = move |r: &RunRecord| filter.is_empty() || filter.contains(&r.status);
        tokio::spawn(async move {
            let _slot = slot;
            let mut sent = since_seq;
            for r in replay {
                sent = sent.max(r.seq_id);
                if keep(&r) && tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    n = rx.recv() => n,
                };
                let batch = match next {
                    Ok(r) => vec![r],
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        replay_after(&lock(&me.feed), sent)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for r in batch {
                    if r.seq_id <= sent {
                        continue;
                    }
                    sent = r.seq_id;
                    if keep(&r) && tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    /// Takes GPU slots for a run: `requested` free slots, or (not `mandatory`) as many as are
    /// free. Errors when a mandatory request cannot be met.
    pub fn take_gpus(
        &self,
        run_id: &str,
        requested: u32,
        mandatory: bool,
    ) -> Result<Vec<u32>, String> {
        if requested == 0 {
            return Ok(Vec::new());
        }
        let pool = self.opts().gpus;
        let mut book = lock(&self.book);
        let used: HashSet<u32> = book.gpus.values().flatten().copied().collect();
        let free: Vec<u32> = pool.iter().copied().filter(|g| !used.contains(g)).collect();
        let want = usize::try_from(requested).unwrap_or(usize::MAX);
        if free.len() < want && mandatory {
            return Err(format!(
                "resources.gpus: {requested} mandatory GPU(s) requested, {} of the daemon's {} free",
                free.len(),
                pool.len()
            ));
        }
        let slots: Vec<u32> = free.into_iter().take(want).collect();
        if !slots.is_empty() {
            book.gpus.insert(run_id.to_owned(), slots.clone());
        }
        Ok(slots)
    }

    /// Gives a run's slots back (a submission that did not go through).
    pub fn release_gpus(&self, run_id: &str) {
        lock(&self.book).gpus.remove(run_id);
    }

    /// Notes a run submitted here (its start is reported as DISPATCHING first).
    pub fn mark_dispatching(&self, run_id: &str) {
        lock(&self.book).dispatching.insert(run_id.to_owned());
    }

    /// Stops the run after `limit` unless it ended first.
    pub fn enforce_duration(
        self: &Arc<Self>,
        registry: Registry,
        run_id: String,
        limit: Duration,
        shutdown: CancellationToken,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(limit) => {}
            }
            if registry.get(&run_id).is_none_or(|i| is_final(i.state)) {
                return;
            }
            let reason = format!("max_duration_seconds ({} s) exceeded", limit.as_secs());
            tracing::warn!(run_id = %run_id, %reason, "stopping run");
            lock(&me.book)
                .overrides
                .insert(run_id.clone(), (RunStatus::Cancelled, reason.clone()));
            if !registry.request_stop(&run_id, Some(reason.clone())) {
                registry
                    .finish(&run_id, RunState::Cancelled, reason, None, None)
                    .await;
            }
        });
    }
}

fn is_final_status(s: i32) -> bool {
    s == RunStatus::Completed as i32
        || s == RunStatus::Failed as i32
        || s == RunStatus::Cancelled as i32
}

fn push(feed: &mut Feed, tx: &broadcast::Sender<RunRecord>, mut rec: RunRecord) {
    rec.seq_id = feed.next_seq;
    feed.next_seq += 1;
    feed.latest.insert(rec.run_id.clone(), rec.clone());
    feed.log.push_back(rec.clone());
    while feed.log.len() > FEED_LOG {
        feed.log.pop_front();
    }
    let _ = tx.send(rec);
}

/// Updates after `since`: from the log when it reaches back that far, else each run's latest.
fn replay_after(feed: &Feed, since: u64) -> Vec<RunRecord> {
    let covered = feed
        .log
        .front()
        .is_none_or(|f| f.seq_id <= since.saturating_add(1));
    if covered {
        feed.log
            .iter()
            .filter(|r| r.seq_id > since)
            .cloned()
            .collect()
    } else {
        let mut v: Vec<RunRecord> = feed
            .latest
            .values()
            .filter(|r| r.seq_id > since)
            .cloned()
            .collect();
        v.sort_by_key(|r| r.seq_id);
        v
    }
}

/// A TrainRunConfig submission turned into ours: run id, worker command and environment.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Our request.
    pub request: pb::SubmitRunRequest,
    /// The config's digest.
    pub digest: String,
}

/// Picks the run id: the request's, else derived from the config and the submission time.
pub fn run_id_for(requested: &str, cfg: &TrainRunConfig, now: &Timestamp) -> String {
    if requested.is_empty() {
        derived_run_id(&cfg.run_name, &iso8601(now), &cfg.digest())
    } else {
        requested.to_owned()
    }
}

/// Builds our submission for a validated config: the worker command (module, script or the demo
/// worker), its environment (`environment`, `CUDA_VISIBLE_DEVICES`, `TRAINER_WORKER_*`) and, when
/// `metadata.worker.config` is given, its config file in the run directory.
pub fn build_submission(
    cfg: &TrainRunConfig,
    run_id: &str,
    var_dir: &Path,
    demo_exe: &Path,
    gpu_slots: &[u32],
) -> Result<Submission, Status> {
    let w = &cfg.worker;
    let mut env: BTreeMap<String, String> = cfg.environment.clone();
    env.insert(
        "CUDA_VISIBLE_DEVICES".into(),
        gpu_slots
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    if w.use_grpc {
        env.insert("TRAINER_WORKER_USE_GRPC".into(), "1".into());
    }
    if let Some(t) = &w.grpc_target {
        env.insert("TRAINER_WORKER_GRPC_TARGET".into(), t.clone());
    }
    let (mut argv, legacy_jsonl) = match (&w.module, &w.script) {
        (Some(m), _) => (vec![cfg.entry_point.clone(), "-m".into(), m.clone()], true),
        (None, Some(s)) => (vec![cfg.entry_point.clone(), s.clone()], true),
        (None, None) => (
            vec![demo_exe.to_string_lossy().into_owned(), "worker".into()],
            false,
        ),
    };
    argv.extend(w.arguments.iter().cloned());
    if let Some(config) = &w.config {
        let dir = var_dir.join("runs").join(run_id);
        security::private_dir(&dir)
            .map_err(|e| Status::internal(format!("cannot create the run directory: {e}")))?;
        let path = dir.join(WORKER_CONFIG_FILE);
        write_private(&path, config.to_string().as_bytes())
            .map_err(|e| Status::internal(format!("cannot write the worker config: {e}")))?;
        let p = path.to_string_lossy().into_owned();
        if legacy_jsonl {
            argv.extend(["--config".into(), p.clone()]);
        }
        env.insert("TRAINER_WORKER_CONFIG_PATH".into(), p);
    }
    let wc = w.config.as_ref();
    let game_id = wc
        .and_then(|c| c.get("env_id").or_else(|| c.get("game_id")))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned();
    let seed = wc
        .and_then(|c| c.get("seed"))
        .and_then(serde_json::Value::as_u64);
    Ok(Submission {
        request: pb::SubmitRunRequest {
            run_id: run_id.to_owned(),
            command: Some(WorkerCommand {
                argv,
                env: env.into_iter().collect(),
                working_dir: String::new(),
                legacy_jsonl,
            }),
            agent_id: w.agent_id.clone(),
            control_mode: String::new(),
            game_id,
            seed,
            metadata_json: cfg.canonical(),
            ..Default::default()
        },
        digest: cfg.digest(),
    })
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = security::private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)
}
