//! The writer: exactly-once appends, one transaction per call, seqs in commit order.
//!
//! An append, in one `READ COMMITTED` transaction:
//!
//! 1. locks the `stream_seqs` rows of the streams the batch touches (`FOR UPDATE`, in name
//!    order) and reads each stream's last seq;
//! 2. creates the missing rows of the batch's producers (`ON CONFLICT DO NOTHING`) and locks
//!    them all (`FOR UPDATE`, in id order), reading their watermarks;
//! 3. drops duplicates, numbers the new rows from the counters and inserts them: the step rows
//!    (the bulk of a batch) by one binary `COPY`, the others by one
//!    `INSERT … SELECT FROM unnest(…)` per stream;
//! 4. moves the counters, the watermarks, the run and series summaries (each in key order);
//! 5. sends one `pg_notify` hint for other daemons (feed.rs) and commits, which releases every
//!    lock.
//!
//! Locks are always taken in the same global order (counters, producers, run summaries, run
//! agents, series summaries; each by key), so two daemons' appends wait for each other but do
//! not deadlock; if the server still reports one (`40P01`), it is retryable.
//!
//! Because a stream's counter row stays locked until commit, a second transaction numbering
//! the same stream waits for the first to commit (or roll back) and then reads the committed
//! counter: seqs are handed out in commit order, which is what makes `seq > since` reads
//! complete (docs/ARCHITECTURE.md, "Seq order on PostgreSQL").

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    pin::Pin,
    sync::Arc,
};

use deadpool_postgres::Object;
use prost::Message;
use telemetry_core::{
    pb::{self, record::Kind, Record, Scalar},
    timestamp::to_unix_nanos,
    ControlMode, Watermark,
};
use telemetry_store::{
    AppendOutcome, AppendReport, BackendWriter, CheckpointStats, SeriesDelta, StoreError,
};
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    types::{ToSql, Type},
};

use crate::{error::classify, Shared};

/// Stream names, in lock order (the `stream_seqs` keys).
const STREAMS: [&str; 4] = ["episodes", "events", "scalars", "steps"];
const EPISODES: usize = 0;
const EVENTS: usize = 1;
const SCALARS: usize = 2;
const STEPS: usize = 3;

const LOCK_STREAMS: &str = "SELECT stream, last_seq FROM stream_seqs WHERE stream = ANY($1) \
     ORDER BY stream FOR UPDATE";
const MOVE_STREAMS: &str = "UPDATE stream_seqs AS s SET last_seq = u.last \
     FROM unnest($1::text[], $2::bigint[]) AS u(stream, last) WHERE s.stream = u.stream";
const ADD_PRODUCERS: &str = "INSERT INTO producers (producer_id, durable_seq) \
     SELECT p, NULL FROM unnest($1::text[]) AS p ORDER BY p ON CONFLICT (producer_id) DO NOTHING";
const LOCK_PRODUCERS: &str = "SELECT producer_id, durable_seq FROM producers \
     WHERE producer_id = ANY($1) ORDER BY producer_id FOR UPDATE";
const MOVE_PRODUCERS: &str = "UPDATE producers AS p SET durable_seq = u.seq \
     FROM unnest($1::text[], $2::bigint[]) AS u(id, seq) WHERE p.producer_id = u.id";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";
const SELECT_WATERMARK: &str = "SELECT durable_seq FROM producers WHERE producer_id = $1";

/// Step rows go in by binary `COPY` (the bulk of every batch): no array parameters to build
/// and no `unnest` for the server to expand. Same columns, in [`STEP_COPY_TYPES`]' order.
const COPY_STEPS: &str = "COPY steps (seq, run_id, episode_index, step_index, action_json, \
     observation_json, reward, terminated, truncated, ts_ns, policy_label, backend, agent_id, \
     render_hint_json, frame_ref, payload_version, control_mode, producer_id, producer_seq, \
     info_json, policy_id, policy_digest) FROM STDIN BINARY";
/// The column types of [`COPY_STEPS`] (binary COPY sends no types: they must match the table).
const STEP_COPY_TYPES: [Type; 22] = [
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::BOOL,
    Type::BOOL,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
];
const INSERT_EPISODES: &str = "INSERT INTO episodes (seq, run_id, episode_index, total_reward, \
     steps, terminated, truncated, metadata_json, ts_ns, agent_id, control_mode, producer_id, \
     producer_seq, policy_id, policy_digest) SELECT * FROM unnest($1::bigint[], $2::text[], \
     $3::bigint[], $4::float8[], $5::bigint[], $6::bool[], $7::bool[], $8::text[], $9::bigint[], \
     $10::text[], $11::text[], $12::text[], $13::bigint[], $14::text[], $15::text[])";
const INSERT_EVENTS: &str = "INSERT INTO events (seq, kind, run_id, ts_ns, producer_id, \
     producer_seq, body) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], \
     $4::bigint[], $5::text[], $6::bigint[], $7::bytea[])";
const INSERT_SCALARS: &str = "INSERT INTO scalars (seq, run_id, agent_id, tag, step, value, \
     ts_ns, producer_id, producer_seq) SELECT * FROM unnest($1::bigint[], $2::text[], \
     $3::text[], $4::text[], $5::bigint[], $6::float8[], $7::bigint[], $8::text[], $9::bigint[])";

const UPSERT_RUN_STATS: &str = "INSERT INTO run_stats AS r (run_id, step_count, episode_count, \
     first_ts_ns, last_ts_ns, last_step_seq, last_episode_seq, last_event_seq) \
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
     $6::bigint[], $7::bigint[], $8::bigint[]) ORDER BY 1 \
     ON CONFLICT (run_id) DO UPDATE SET step_count = r.step_count + excluded.step_count, \
     episode_count = r.episode_count + excluded.episode_count, \
     first_ts_ns = LEAST(r.first_ts_ns, excluded.first_ts_ns), \
     last_ts_ns = GREATEST(r.last_ts_ns, excluded.last_ts_ns), \
     last_step_seq = GREATEST(r.last_step_seq, excluded.last_step_seq), \
     last_episode_seq = GREATEST(r.last_episode_seq, excluded.last_episode_seq), \
     last_event_seq = GREATEST(r.last_event_seq, excluded.last_event_seq)";
const INSERT_RUN_AGENTS: &str = "INSERT INTO run_agents (run_id, agent_id, control_mode) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ORDER BY 1, 2, 3 \
     ON CONFLICT DO NOTHING";
const UPSERT_SCALAR_TAGS: &str = "INSERT INTO scalar_tags AS t (run_id, tag, agent_id, points, \
     first_step, last_step, last_value, last_ts_ns, last_seq) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
     $6::bigint[], $7::float8[], $8::bigint[], $9::bigint[]) ORDER BY 1, 2, 3 \
     ON CONFLICT (run_id, tag, agent_id) DO UPDATE SET points = t.points + excluded.points, \
     first_step = LEAST(t.first_step, excluded.first_step), \
     last_value = CASE WHEN excluded.last_step >= t.last_step THEN excluded.last_value \
                  ELSE t.last_value END, \
     last_ts_ns = CASE WHEN excluded.last_step >= t.last_step THEN excluded.last_ts_ns \
                  ELSE t.last_ts_ns END, \
     last_step = GREATEST(t.last_step, excluded.last_step), \
     last_seq = GREATEST(t.last_seq, excluded.last_seq)";
/// A run row is replaced only by its owner (or when it has none): a daemon that lost its lease
/// and had its runs taken over cannot write them back (see `leases.rs`).
const UPSERT_RUN_INFO: &str = "INSERT INTO runs (run_id, state, updated_ns, info, owner) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, \
     updated_ns = excluded.updated_ns, info = excluded.info, owner = excluded.owner \
     WHERE runs.owner = excluded.owner OR runs.owner = ''";

/// The `i64` stored for a `u64` (same bits).
pub(crate) fn u64_to_sql(v: u64) -> i64 {
    v as i64
}

/// The `u64` a stored `i64` stands for (same bits).
pub(crate) fn u64_from_sql(v: i64) -> u64 {
    v as u64
}

fn ts_of(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(to_unix_nanos)
}

/// The canonical spelling of a control mode (as the SQLite store writes it).
fn canonical_mode(mode: &str) -> &str {
    if ControlMode::ALL.iter().any(|m| m.as_str() == mode) {
        return mode;
    }
    match ControlMode::from_wire(mode) {
        Ok(m) => m.as_str(),
        Err(_) => mode,
    }
}

fn stream_of(kind: &Kind) -> usize {
    match kind {
        Kind::Step(_) => STEPS,
        Kind::Episode(_) => EPISODES,
        Kind::Scalar(_) => SCALARS,
        Kind::RunStarted(_) | Kind::RunCompleted(_) | Kind::Artifact(_) => EVENTS,
    }
}

/// The writer of a PostgreSQL store (one of possibly several, one per daemon).
pub(crate) struct PgWriter {
    shared: Arc<Shared>,
}

impl PgWriter {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        PgWriter { shared }
    }
}

/// What one transaction reports: an outcome per record, the watermark of every producer.
type Appended = (Vec<AppendOutcome>, Vec<(String, u64)>);

impl BackendWriter for PgWriter {
    fn append(
        &mut self,
        records: &mut [Record],
        rejected: &[(String, u64)],
    ) -> Result<AppendReport, StoreError> {
        if let Some(index) = records.iter().position(|r| r.kind.is_none()) {
            return Err(StoreError::EmptyRecord { index });
        }
        let s = &self.shared;
        let input: &[Record] = records;
        let (outcomes, watermarks) = s.block_on(async {
            let mut client = s.write_client().await?;
            append_tx(&mut client, input, rejected, &s.cfg.schema).await
        })?;
        let mut stored = 0;
        for (record, outcome) in records.iter_mut().zip(&outcomes) {
            if let AppendOutcome::Stored { seq } = outcome {
                record.set_seq_id(*seq);
                stored += 1;
            }
        }
        tracing::trace!(
            stored,
            duplicates = outcomes.len() - stored,
            "postgres append"
        );
        Ok(AppendReport {
            duplicates: outcomes.len() - stored,
            stored,
            outcomes,
            watermarks,
        })
    }

    fn watermark(&self, producer_id: &str) -> Result<u64, StoreError> {
        let s = &self.shared;
        s.block_on(async {
            let client = s.write_client().await?;
            let stmt = client
                .prepare_cached(SELECT_WATERMARK)
                .await
                .map_err(classify)?;
            let row = client
                .query_opt(&stmt, &[&producer_id])
                .await
                .map_err(classify)?;
            let stored: Option<i64> = match row {
                Some(r) => r.try_get(0).map_err(classify)?,
                None => None,
            };
            Ok(stored.map_or(0, u64_from_sql))
        })
    }

    fn put_run_info(&mut self, info: &pb::RunInfo) -> Result<(), StoreError> {
        let s = &self.shared;
        let updated = ts_of(info.updated_at.as_ref().or(info.created_at.as_ref()));
        let body = info.encode_to_vec();
        s.block_on(async {
            let client = s.write_client().await?;
            let stmt = client
                .prepare_cached(UPSERT_RUN_INFO)
                .await
                .map_err(classify)?;
            let written = client
                .execute(
                    &stmt,
                    &[&info.run_id, &info.state, &updated, &body, &info.owner],
                )
                .await
                .map_err(classify)?;
            if written == 0 {
                // Not an error of the caller's write path: the run is another daemon's now,
                // and its row (which the registry follows) says so.
                tracing::warn!(
                    run_id = %info.run_id,
                    writer = %info.owner,
                    "run row not written: another daemon owns the run now"
                );
            }
            Ok(())
        })
    }

    fn checkpoint(&mut self) -> Result<CheckpointStats, StoreError> {
        // A commit is durable once it returns (the server's WAL and synchronous_commit): there
        // is nothing to copy back.
        Ok(CheckpointStats::default())
    }
}

/// What one call adds to a run's summary.
#[derive(Default)]
struct RunDelta {
    steps: u64,
    episodes: u64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    last_step_seq: u64,
    last_episode_seq: u64,
    last_event_seq: u64,
}

impl RunDelta {
    fn saw_ts(&mut self, ts: Option<i64>) {
        if let Some(t) = ts {
            self.first_ts = Some(self.first_ts.map_or(t, |f| f.min(t)));
            self.last_ts = Some(self.last_ts.map_or(t, |l| l.max(t)));
        }
    }
}

/// One step row of [`COPY_STEPS`]: the record's fields plus the values computed for the
/// table (seq, the `u64`s as stored, the timestamp, the canonical control mode).
fn step_row<'a>(
    seq: &'a i64,
    s: &'a pb::RunStep,
    computed: &'a StepComputed<'a>,
) -> [&'a (dyn ToSql + Sync); 22] {
    [
        seq,
        &s.run_id,
        &computed.episode_index,
        &computed.step_index,
        &s.action_json,
        &s.observation_json,
        &s.reward,
        &s.terminated,
        &s.truncated,
        &computed.ts,
        &s.policy_label,
        &s.backend,
        &s.agent_id,
        &s.render_hint_json,
        &s.frame_ref,
        &computed.payload_version,
        &computed.control_mode,
        &s.producer_id,
        &computed.producer_seq,
        &s.info_json,
        &s.policy_id,
        &s.policy_digest,
    ]
}

/// The columns of a step row that are not the record's own fields as they are.
struct StepComputed<'a> {
    episode_index: i64,
    step_index: i64,
    ts: Option<i64>,
    payload_version: i64,
    control_mode: &'a str,
    producer_seq: i64,
}

impl<'a> StepComputed<'a> {
    fn of(s: &'a pb::RunStep) -> Self {
        StepComputed {
            episode_index: u64_to_sql(s.episode_index),
            step_index: u64_to_sql(s.step_index),
            ts: ts_of(s.timestamp.as_ref()),
            payload_version: i64::from(s.payload_version),
            control_mode: canonical_mode(&s.control_mode),
            producer_seq: u64_to_sql(s.producer_seq),
        }
    }
}

#[derive(Default)]
struct EpisodeCols<'a> {
    seq: Vec<i64>,
    run_id: Vec<&'a str>,
    episode_index: Vec<i64>,
    total_reward: Vec<f64>,
    steps: Vec<i64>,
    terminated: Vec<bool>,
    truncated: Vec<bool>,
    metadata_json: Vec<&'a str>,
    ts: Vec<Option<i64>>,
    agent_id: Vec<&'a str>,
    control_mode: Vec<&'a str>,
    producer_id: Vec<&'a str>,
    producer_seq: Vec<i64>,
    policy_id: Vec<&'a str>,
    policy_digest: Vec<&'a str>,
}

impl<'a> EpisodeCols<'a> {
    fn push(&mut self, seq: i64, e: &'a pb::RunEpisode) {
        self.seq.push(seq);
        self.run_id.push(&e.run_id);
        self.episode_index.push(u64_to_sql(e.episode_index));
        self.total_reward.push(e.total_reward);
        self.steps.push(u64_to_sql(e.steps));
        self.terminated.push(e.terminated);
        self.truncated.push(e.truncated);
        self.metadata_json.push(&e.metadata_json);
        self.ts.push(ts_of(e.timestamp.as_ref()));
        self.agent_id.push(&e.agent_id);
        self.control_mode.push(canonical_mode(&e.control_mode));
        self.producer_id.push(&e.producer_id);
        self.producer_seq.push(u64_to_sql(e.producer_seq));
        self.policy_id.push(&e.policy_id);
        self.policy_digest.push(&e.policy_digest);
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        [
            &self.seq,
            &self.run_id,
            &self.episode_index,
            &self.total_reward,
            &self.steps,
            &self.terminated,
            &self.truncated,
            &self.metadata_json,
            &self.ts,
            &self.agent_id,
            &self.control_mode,
            &self.producer_id,
            &self.producer_seq,
            &self.policy_id,
            &self.policy_digest,
        ]
    }
}

#[derive(Default)]
struct EventCols<'a> {
    seq: Vec<i64>,
    kind: Vec<&'static str>,
    run_id: Vec<&'a str>,
    ts: Vec<Option<i64>>,
    producer_id: Vec<&'a str>,
    producer_seq: Vec<i64>,
    body: Vec<Vec<u8>>,
}

#[derive(Default)]
struct ScalarCols<'a> {
    seq: Vec<i64>,
    run_id: Vec<&'a str>,
    agent_id: Vec<&'a str>,
    tag: Vec<&'a str>,
    step: Vec<i64>,
    value: Vec<f64>,
    ts: Vec<Option<i64>>,
    producer_id: Vec<&'a str>,
    producer_seq: Vec<i64>,
}

/// The per-call state of an append, borrowing from the caller's records.
#[derive(Default)]
struct Batch<'a> {
    outcomes: Vec<AppendOutcome>,
    /// Every producer of the call (records and `rejected`): its watermark, and whether this
    /// call moved it.
    producers: BTreeMap<&'a str, (Watermark, bool)>,
    /// Each stream's last seq (from its locked counter, then as this call numbers rows).
    last: [i64; 4],
    used: [bool; 4],
    /// The new step rows with their seqs (written by binary COPY).
    steps: Vec<(i64, &'a pb::RunStep)>,
    episodes: EpisodeCols<'a>,
    events: EventCols<'a>,
    scalars: ScalarCols<'a>,
    runs: BTreeMap<&'a str, RunDelta>,
    agents: BTreeSet<(&'a str, &'a str, &'a str)>,
    tags: BTreeMap<(&'a str, &'a str, &'a str), SeriesDelta>,
}

impl<'a> Batch<'a> {
    fn next_seq(&mut self, stream: usize) -> i64 {
        self.last[stream] += 1;
        self.last[stream]
    }

    fn saw_scalar(&mut self, s: &'a Scalar, seq: u64) {
        self.tags
            .entry((&s.run_id, &s.tag, &s.agent_id))
            .and_modify(|d| d.add(s, seq))
            .or_insert_with(|| SeriesDelta::new(s, seq));
    }

    /// Numbers and collects one new record; returns its seq.
    fn add(&mut self, record: &'a Record, kind: &'a Kind) -> u64 {
        let stream = stream_of(kind);
        let seq = self.next_seq(stream);
        let useq = u64_from_sql(seq);
        match kind {
            Kind::Step(s) => {
                self.steps.push((seq, s));
                let run = self.runs.entry(&s.run_id).or_default();
                run.steps += 1;
                run.last_step_seq = useq;
                run.saw_ts(ts_of(s.timestamp.as_ref()));
                self.agents
                    .insert((&s.run_id, &s.agent_id, canonical_mode(&s.control_mode)));
            }
            Kind::Episode(e) => {
                self.episodes.push(seq, e);
                let run = self.runs.entry(&e.run_id).or_default();
                run.episodes += 1;
                run.last_episode_seq = useq;
                run.saw_ts(ts_of(e.timestamp.as_ref()));
                self.agents
                    .insert((&e.run_id, &e.agent_id, canonical_mode(&e.control_mode)));
            }
            Kind::Scalar(v) => {
                let c = &mut self.scalars;
                c.seq.push(seq);
                c.run_id.push(&v.run_id);
                c.agent_id.push(&v.agent_id);
                c.tag.push(&v.tag);
                c.step.push(v.step);
                c.value.push(v.value);
                c.ts.push(ts_of(v.timestamp.as_ref()));
                c.producer_id.push(&v.producer_id);
                c.producer_seq.push(u64_to_sql(v.producer_seq));
                self.runs
                    .entry(&v.run_id)
                    .or_default()
                    .saw_ts(ts_of(v.timestamp.as_ref()));
                self.saw_scalar(v, useq);
            }
            Kind::RunStarted(_) | Kind::RunCompleted(_) | Kind::Artifact(_) => {
                let (name, ts) = match kind {
                    Kind::RunStarted(r) => ("run_started", r.timestamp.as_ref()),
                    Kind::RunCompleted(r) => ("run_completed", r.timestamp.as_ref()),
                    Kind::Artifact(r) => ("artifact", r.timestamp.as_ref()),
                    Kind::Step(_) | Kind::Episode(_) | Kind::Scalar(_) => ("", None),
                };
                let ts = ts_of(ts);
                let (producer_id, producer_seq) = record.producer();
                let c = &mut self.events;
                c.seq.push(seq);
                c.kind.push(name);
                c.run_id.push(record.run_id());
                c.ts.push(ts);
                c.producer_id.push(producer_id);
                c.producer_seq.push(u64_to_sql(producer_seq));
                c.body.push(record.encode_to_vec());
                let run = self.runs.entry(record.run_id()).or_default();
                run.last_event_seq = useq;
                run.saw_ts(ts);
            }
        }
        useq
    }
}

/// `run_stats` columns of one upsert.
type RunStatsCols<'a> = (
    Vec<&'a str>,
    Vec<i64>,
    Vec<i64>,
    Vec<Option<i64>>,
    Vec<Option<i64>>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
);

/// `scalar_tags` columns of one upsert.
type ScalarTagCols<'a> = (
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<f64>,
    Vec<Option<i64>>,
    Vec<i64>,
);

/// A statement sent in a pipeline (see [`append_tx`]).
type InFlight<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// One attempt at an append, in one transaction (see the module doc for its steps).
///
/// Round trips, not the server's work, are most of what a batch costs beyond its `COPY`, so
/// the statements of each phase are *pipelined* (tokio-postgres sends every request of a
/// `try_join` before it waits for the first reply; the server still runs them one by one, in
/// the order sent, which is the lock order). A batch takes five round trips: `BEGIN`; the
/// counter and producer locks; the `COPY` (two); the rows, counters, watermarks, summaries and
/// notify; `COMMIT`. If a statement fails, those after it fail too and the transaction rolls
/// back when `tx` drops.
async fn append_tx(
    client: &mut Object,
    records: &[Record],
    rejected: &[(String, u64)],
    channel: &str,
) -> Result<Appended, StoreError> {
    let tx = client.transaction().await.map_err(classify)?;
    let mut batch = Batch {
        outcomes: Vec::with_capacity(records.len()),
        ..Batch::default()
    };

    // 1 and 2. The counters of the streams this call may write and the producers' rows
    // (created if missing), locked until commit: three statements, one round trip.
    for kind in records.iter().filter_map(|r| r.kind.as_ref()) {
        batch.used[stream_of(kind)] = true;
    }
    let names: Vec<&str> = STREAMS
        .iter()
        .zip(batch.used)
        .filter_map(|(n, used)| used.then_some(*n))
        .collect();
    for id in records
        .iter()
        .map(|r| r.producer().0)
        .chain(rejected.iter().map(|(p, _)| p.as_str()))
        .filter(|p| !p.is_empty())
    {
        batch
            .producers
            .entry(id)
            .or_insert((Watermark::NONE, false));
    }
    let ids: Vec<&str> = batch.producers.keys().copied().collect();
    let lock_streams = tx.prepare_cached(LOCK_STREAMS).await.map_err(classify)?;
    let add_producers = tx.prepare_cached(ADD_PRODUCERS).await.map_err(classify)?;
    let lock_producers = tx.prepare_cached(LOCK_PRODUCERS).await.map_err(classify)?;
    let (counters, (), producers) = futures::try_join!(
        async {
            if names.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(&lock_streams, &[&names]).await
        },
        async {
            if !ids.is_empty() {
                tx.execute(&add_producers, &[&ids]).await?;
            }
            Ok(())
        },
        async {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(&lock_producers, &[&ids]).await
        },
    )
    .map_err(classify)?;
    for row in counters {
        let name: &str = row.try_get(0).map_err(classify)?;
        let last: i64 = row.try_get(1).map_err(classify)?;
        if let Some(i) = STREAMS.iter().position(|s| *s == name) {
            batch.last[i] = last;
        }
    }
    for row in producers {
        let id: &str = row.try_get(0).map_err(classify)?;
        let stored: Option<i64> = row.try_get(1).map_err(classify)?;
        if let Some(p) = batch.producers.get_mut(id) {
            p.0 = Watermark::from_stored(stored.map(u64_from_sql));
        }
    }

    // 3. Duplicates out, new rows numbered and collected.
    for record in records {
        let Some(kind) = record.kind.as_ref() else {
            continue; // `append` refuses empty records before any transaction.
        };
        let (producer_id, producer_seq) = record.producer();
        if let Some((wm, _)) = batch.producers.get(producer_id) {
            if wm.is_duplicate(producer_seq) {
                batch.outcomes.push(AppendOutcome::Duplicate);
                continue;
            }
        }
        let seq = batch.add(record, kind);
        if let Some((wm, dirty)) = batch.producers.get_mut(producer_id) {
            *dirty |= wm.advance(producer_seq);
        }
        batch.outcomes.push(AppendOutcome::Stored { seq });
    }
    for (producer_id, producer_seq) in rejected {
        if let Some((wm, dirty)) = batch.producers.get_mut(producer_id.as_str()) {
            // A rejected record still advances its producer's watermark.
            *dirty |= wm.advance(*producer_seq);
        }
    }

    // 4a. The step rows, by binary COPY.
    if !batch.steps.is_empty() {
        let stmt = tx.prepare_cached(COPY_STEPS).await.map_err(classify)?;
        let sink = tx.copy_in(&stmt).await.map_err(classify)?;
        let writer = BinaryCopyInWriter::new(sink, &STEP_COPY_TYPES);
        futures::pin_mut!(writer);
        for (seq, s) in &batch.steps {
            let computed = StepComputed::of(s);
            writer
                .as_mut()
                .write(&step_row(seq, s, &computed))
                .await
                .map_err(classify)?;
        }
        writer.finish().await.map_err(classify)?;
    }

    // 4b and 5. The other rows, the counters, the watermarks, the summaries (in lock order)
    // and the notify: one pipeline.
    let written = [
        !batch.episodes.seq.is_empty(),
        !batch.events.seq.is_empty(),
        !batch.scalars.seq.is_empty(),
        !batch.steps.is_empty(),
    ];
    let (moved, lasts): (Vec<&str>, Vec<i64>) = (0..STREAMS.len())
        .filter(|&i| written[i])
        .map(|i| (STREAMS[i], batch.last[i]))
        .unzip();
    let (moved_ids, moved_seqs): (Vec<&str>, Vec<i64>) = batch
        .producers
        .iter()
        .filter(|(_, (_, dirty))| *dirty)
        .map(|(id, (wm, _))| (*id, u64_to_sql(wm.durable_seq())))
        .unzip();
    let mut runs: RunStatsCols<'_> = Default::default();
    for (run, d) in &batch.runs {
        runs.0.push(run);
        runs.1.push(u64_to_sql(d.steps));
        runs.2.push(u64_to_sql(d.episodes));
        runs.3.push(d.first_ts);
        runs.4.push(d.last_ts);
        runs.5.push(u64_to_sql(d.last_step_seq));
        runs.6.push(u64_to_sql(d.last_episode_seq));
        runs.7.push(u64_to_sql(d.last_event_seq));
    }
    let mut agents: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for (run, agent, mode) in &batch.agents {
        agents.0.push(run);
        agents.1.push(agent);
        agents.2.push(mode);
    }
    let mut tags: ScalarTagCols<'_> = Default::default();
    for ((run, tag, agent), d) in &batch.tags {
        tags.0.push(run);
        tags.1.push(tag);
        tags.2.push(agent);
        tags.3.push(u64_to_sql(d.points));
        tags.4.push(d.first_step);
        tags.5.push(d.last_step);
        tags.6.push(d.last_value);
        tags.7.push(d.last_ts);
        tags.8.push(u64_to_sql(d.last_seq));
    }
    // One hint for the other daemons' change feeds, delivered at commit (feed.rs): the last
    // seq of each stream this batch wrote, nothing else.
    let hint = batch
        .outcomes
        .iter()
        .any(|o| matches!(o, AppendOutcome::Stored { .. }))
        .then(|| {
            let written: Vec<(&str, i64)> = STREAMS
                .iter()
                .zip(batch.used.iter().zip(batch.last))
                .filter_map(|(name, (used, last))| (*used && last > 0).then_some((*name, last)))
                .collect();
            crate::feed::payload(&written)
        });

    {
        let tx = &tx;
        let mut pipeline: Vec<InFlight<'_>> = Vec::new();
        if !batch.episodes.seq.is_empty() {
            let stmt = tx.prepare_cached(INSERT_EPISODES).await.map_err(classify)?;
            let c = &batch.episodes;
            pipeline.push(Box::pin(
                async move { tx.execute(&stmt, &c.params()).await },
            ));
        }
        if !batch.events.seq.is_empty() {
            let stmt = tx.prepare_cached(INSERT_EVENTS).await.map_err(classify)?;
            let c = &batch.events;
            pipeline.push(Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 7] = [
                    &c.seq,
                    &c.kind,
                    &c.run_id,
                    &c.ts,
                    &c.producer_id,
                    &c.producer_seq,
                    &c.body,
                ];
                tx.execute(&stmt, &params).await
            }));
        }
        if !batch.scalars.seq.is_empty() {
            let stmt = tx.prepare_cached(INSERT_SCALARS).await.map_err(classify)?;
            let c = &batch.scalars;
            pipeline.push(Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 9] = [
                    &c.seq,
                    &c.run_id,
                    &c.agent_id,
                    &c.tag,
                    &c.step,
                    &c.value,
                    &c.ts,
                    &c.producer_id,
                    &c.producer_seq,
                ];
                tx.execute(&stmt, &params).await
            }));
        }
        if !moved.is_empty() {
            let stmt = tx.prepare_cached(MOVE_STREAMS).await.map_err(classify)?;
            let (moved, lasts) = (&moved, &lasts);
            pipeline.push(Box::pin(
                async move { tx.execute(&stmt, &[moved, lasts]).await },
            ));
        }
        if !moved_ids.is_empty() {
            let stmt = tx.prepare_cached(MOVE_PRODUCERS).await.map_err(classify)?;
            let (ids, seqs) = (&moved_ids, &moved_seqs);
            pipeline.push(Box::pin(
                async move { tx.execute(&stmt, &[ids, seqs]).await },
            ));
        }
        if !runs.0.is_empty() {
            let stmt = tx
                .prepare_cached(UPSERT_RUN_STATS)
                .await
                .map_err(classify)?;
            let c = &runs;
            pipeline.push(Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 8] =
                    [&c.0, &c.1, &c.2, &c.3, &c.4, &c.5, &c.6, &c.7];
                tx.execute(&stmt, &params).await
            }));
        }
        if !agents.0.is_empty() {
            let stmt = tx
                .prepare_cached(INSERT_RUN_AGENTS)
                .await
                .map_err(classify)?;
            let c = &agents;
            pipeline.push(Box::pin(async move {
                tx.execute(&stmt, &[&c.0, &c.1, &c.2]).await
            }));
        }
        if !tags.0.is_empty() {
            let stmt = tx
                .prepare_cached(UPSERT_SCALAR_TAGS)
                .await
                .map_err(classify)?;
            let c = &tags;
            pipeline.push(Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 9] =
                    [&c.0, &c.1, &c.2, &c.3, &c.4, &c.5, &c.6, &c.7, &c.8];
                tx.execute(&stmt, &params).await
            }));
        }
        if let Some(hint) = &hint {
            let stmt = tx.prepare_cached(NOTIFY).await.map_err(classify)?;
            pipeline.push(Box::pin(async move {
                tx.execute(&stmt, &[&channel, hint]).await
            }));
        }
        // `try_join_all` polls its futures in order the first time (for fewer than 30, which
        // these always are), so they are sent in the order above.
        futures::future::try_join_all(pipeline)
            .await
            .map_err(classify)?;
    }

    // Producers in order of first appearance, as the SQLite store reports them.
    let mut seen = BTreeSet::new();
    let watermarks = records
        .iter()
        .map(|r| r.producer().0)
        .chain(rejected.iter().map(|(p, _)| p.as_str()))
        .filter(|p| !p.is_empty() && seen.insert(*p))
        .filter_map(|p| {
            batch
                .producers
                .get(p)
                .map(|(wm, _)| (p.to_owned(), wm.durable_seq()))
        })
        .collect();
    tx.commit().await.map_err(classify)?;
    Ok((batch.outcomes, watermarks))
}
