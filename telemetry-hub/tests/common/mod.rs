//! Test helpers: an in-memory store acting as the daemon's SQLite store, record makers and
//! delivery helpers. "Publishing" in tests mirrors the daemon: commit to the fake store
//! (which assigns the per-stream seq), then `hub.publish`.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

use telemetry_core::pb::{
    record::Kind, Artifact, CompletionStatus, Record, RunCompleted, RunEpisode, RunStarted, RunStep,
};
use telemetry_hub::{
    CatchUpError, CatchUpQuery, CatchUpSource, Delivery, Hub, HubConfig, StreamKind, Subscription,
};

#[derive(Default)]
struct Streams {
    rows: [Vec<Record>; StreamKind::COUNT],
    next: [u64; StreamKind::COUNT],
}

/// An in-memory store: one Vec and one seq per stream.
#[derive(Default)]
pub struct FakeStore {
    streams: Mutex<Streams>,
    pub reads: AtomicU64,
    /// Fail this many reads from now on.
    pub fail_reads: AtomicU32,
    /// When set, each read first waits for one message (a test-controlled blocking read).
    pub gate: Mutex<Option<mpsc::Receiver<()>>>,
    /// When set, each read takes its snapshot first, then waits for one message (commits
    /// during the wait are not in the page, like a read transaction that started earlier).
    pub gate_after_snapshot: Mutex<Option<mpsc::Receiver<()>>>,
    /// Told after each snapshot taken under `gate_after_snapshot`.
    pub snapshot_taken: Mutex<Option<mpsc::Sender<()>>>,
    /// Seqs the store "loses" when read (to provoke a store/hub disagreement).
    pub hidden: Mutex<HashSet<u64>>,
    /// Every read: (since, limit).
    pub read_log: Mutex<Vec<(u64, usize)>>,
}

fn idx(s: StreamKind) -> usize {
    match s {
        StreamKind::Steps => 0,
        StreamKind::Episodes => 1,
        StreamKind::Lifecycle => 2,
        StreamKind::Scalars => 3,
    }
}

impl FakeStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Stores a record, assigning its stream's next seq.
    pub fn commit(&self, mut r: Record) -> Record {
        let stream = StreamKind::of(&r).expect("record with payload");
        let mut s = self.streams.lock().unwrap();
        s.next[idx(stream)] += 1;
        r.set_seq_id(s.next[idx(stream)]);
        s.rows[idx(stream)].push(r.clone());
        r
    }

    pub fn all(&self, stream: StreamKind) -> Vec<Record> {
        self.streams.lock().unwrap().rows[idx(stream)].clone()
    }
}

fn agent_mode(r: &Record) -> (&str, &str) {
    match &r.kind {
        Some(Kind::Step(s)) => (&s.agent_id, &s.control_mode),
        Some(Kind::Episode(e)) => (&e.agent_id, &e.control_mode),
        Some(Kind::Scalar(s)) => (&s.agent_id, ""),
        _ => ("", ""),
    }
}

/// Whether a record matches a catch-up query (the store's WHERE clause).
pub fn query_matches(q: &CatchUpQuery, r: &Record) -> bool {
    let (agent, mode) = agent_mode(r);
    let lifecycle = q.stream == StreamKind::Lifecycle;
    q.run_id.as_deref().is_none_or(|id| r.run_id() == id)
        && (lifecycle || q.agent_id.as_deref().is_none_or(|a| a == agent))
        && (lifecycle || q.stream == StreamKind::Scalars || q.control_mode.matches(mode))
}

impl CatchUpSource for FakeStore {
    fn read_page(
        &self,
        q: &CatchUpQuery,
        since: u64,
        limit: usize,
    ) -> Result<Vec<Record>, CatchUpError> {
        if let Some(gate) = self.gate.lock().unwrap().as_ref() {
            gate.recv().map_err(CatchUpError::read)?;
        }
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.read_log.lock().unwrap().push((since, limit));
        if self
            .fail_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(CatchUpError::read("disk on fire"));
        }
        let hidden = self.hidden.lock().unwrap().clone();
        let page = self.streams.lock().unwrap().rows[idx(q.stream)]
            .iter()
            .filter(|r| r.seq_id() > since && !hidden.contains(&r.seq_id()))
            .filter(|r| query_matches(q, r))
            .take(limit)
            .cloned()
            .collect();
        if let Some(gate) = self.gate_after_snapshot.lock().unwrap().as_ref() {
            if let Some(tx) = self.snapshot_taken.lock().unwrap().as_ref() {
                tx.send(()).map_err(CatchUpError::read)?;
            }
            gate.recv().map_err(CatchUpError::read)?;
        }
        Ok(page)
    }

    fn run_completion(&self, run_id: &str) -> Result<Option<RunCompleted>, CatchUpError> {
        let s = self.streams.lock().unwrap();
        Ok(s.rows[2].iter().find_map(|r| match &r.kind {
            Some(Kind::RunCompleted(c)) if c.run_id == run_id => Some(c.clone()),
            _ => None,
        }))
    }
}

pub fn step(run: &str, agent: &str, episode: u64, index: u64) -> Record {
    RunStep {
        run_id: run.into(),
        agent_id: agent.into(),
        episode_index: episode,
        step_index: index,
        control_mode: "agent".into(),
        observation_json: format!("{{\"i\":{index}}}"),
        render_hint_json: "{\"rgb\":true}".into(),
        frame_ref: format!("frames/{index}.png"),
        ..Default::default()
    }
    .into()
}

pub fn step_mode(run: &str, mode: &str, index: u64) -> Record {
    RunStep {
        run_id: run.into(),
        step_index: index,
        control_mode: mode.into(),
        ..Default::default()
    }
    .into()
}

pub fn episode(run: &str, index: u64) -> Record {
    RunEpisode {
        run_id: run.into(),
        episode_index: index,
        ..Default::default()
    }
    .into()
}

pub fn started(run: &str) -> Record {
    RunStarted {
        run_id: run.into(),
        ..Default::default()
    }
    .into()
}

pub fn artifact(run: &str, path: &str) -> Record {
    Artifact {
        run_id: run.into(),
        path: path.into(),
        ..Default::default()
    }
    .into()
}

pub fn completed(run: &str) -> Record {
    RunCompleted {
        run_id: run.into(),
        status: CompletionStatus::Succeeded as i32,
        ..Default::default()
    }
    .into()
}

/// Commit to the store, then publish (the daemon's order). Returns the stored record.
pub fn commit_publish(store: &FakeStore, hub: &Hub, r: Record) -> Record {
    let r = store.commit(r);
    hub.publish(r.clone());
    r
}

pub fn hub_with(store: &Arc<FakeStore>, config: HubConfig) -> Hub {
    Hub::new(config, Arc::clone(store) as Arc<dyn CatchUpSource>)
}

/// The next delivery, or `None` when the subscription has nothing more for now (idle under
/// paused time: the runtime auto-advances the timeout only when no task can make progress)
/// or has ended.
pub async fn next_now(sub: &mut Subscription) -> Option<Delivery> {
    tokio::time::timeout(Duration::from_secs(24 * 3600), sub.next())
        .await
        .ok()
        .flatten()
}

/// Every delivery until the subscription is idle or ended.
pub async fn drain(sub: &mut Subscription) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(d) = next_now(sub).await {
        out.push(d);
    }
    out
}

/// The seqs of every record in `deliveries`.
pub fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries
        .iter()
        .flat_map(|d| match d {
            Delivery::Records(rs) => rs.iter().map(|r| r.seq_id()).collect(),
            _ => vec![],
        })
        .collect()
}

/// The notices (everything but records) in `deliveries`.
pub fn notices(deliveries: &[Delivery]) -> Vec<&Delivery> {
    deliveries
        .iter()
        .filter(|d| !matches!(d, Delivery::Records(_)))
        .collect()
}
