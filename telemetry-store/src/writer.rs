//! The single writer: exactly-once appends in one transaction per call.
//!
//! Everything that must agree after a crash moves in the same transaction: the rows (and the
//! seqs they get), the producers' watermarks and the per-run summaries. Seqs are written into
//! the caller's records only after the commit, so a failed call leaves the records as they were
//! and nothing of it is visible to any reader.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use prost::Message;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use telemetry_core::{
    pb::{self, record::Kind, Record, Scalar},
    Watermark,
};

use crate::{
    checkpoint::{self, CheckpointState, CheckpointStats},
    error::classify,
    open,
    rows::{self, canonical_mode, u64_from_sql, u64_to_sql},
    AppendOutcome, AppendReport, SeriesDelta, StoreConfig, StoreError, StoreReader,
};

/// The one writer of a store file. Owns one connection; `Send`, not `Sync`.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    cfg: StoreConfig,
    checkpoint: CheckpointState,
    event_buf: Vec<u8>,
}

/// What one transaction reports: an outcome per record, the watermark of every producer.
type Appended = (Vec<AppendOutcome>, Vec<(String, u64)>);

/// A producer's watermark as the transaction moves it.
struct Producer<'a> {
    id: &'a str,
    /// The producer's watermark (from its row, or set in this call).
    watermark: Watermark,
    dirty: bool,
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

const SELECT_WATERMARK: &str = "SELECT durable_seq FROM producers WHERE producer_id = ?1";
const UPSERT_WATERMARK: &str = "INSERT INTO producers (producer_id, durable_seq) VALUES (?1, ?2) \
     ON CONFLICT (producer_id) DO UPDATE SET durable_seq = excluded.durable_seq";
const UPSERT_RUN_STATS: &str = "INSERT INTO run_stats (run_id, step_count, episode_count, \
     first_ts_ns, last_ts_ns, last_step_seq, last_episode_seq, last_event_seq) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (run_id) DO UPDATE SET \
     step_count = step_count + excluded.step_count, \
     episode_count = episode_count + excluded.episode_count, \
     first_ts_ns = min(coalesce(first_ts_ns, excluded.first_ts_ns), \
                       coalesce(excluded.first_ts_ns, first_ts_ns)), \
     last_ts_ns = max(coalesce(last_ts_ns, excluded.last_ts_ns), \
                      coalesce(excluded.last_ts_ns, last_ts_ns)), \
     last_step_seq = max(last_step_seq, excluded.last_step_seq), \
     last_episode_seq = max(last_episode_seq, excluded.last_episode_seq), \
     last_event_seq = max(last_event_seq, excluded.last_event_seq)";
const INSERT_RUN_AGENT: &str =
    "INSERT OR IGNORE INTO run_agents (run_id, agent_id, control_mode) VALUES (?1, ?2, ?3)";
const UPSERT_RUN_INFO: &str = "INSERT INTO runs (run_id, state, updated_ns, info) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, \
     updated_ns = excluded.updated_ns, info = excluded.info";

const UPSERT_SCALAR_TAG: &str = "INSERT INTO scalar_tags (run_id, tag, agent_id, points, \
     first_step, last_step, last_value, last_ts_ns, last_seq) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (run_id, tag, agent_id) DO UPDATE SET points = points + excluded.points, \
     first_step = min(first_step, excluded.first_step), \
     last_value = CASE WHEN excluded.last_step >= last_step THEN excluded.last_value \
                  ELSE last_value END, \
     last_ts_ns = CASE WHEN excluded.last_step >= last_step THEN excluded.last_ts_ns \
                  ELSE last_ts_ns END, \
     last_step = max(last_step, excluded.last_step), \
     last_seq = max(last_seq, excluded.last_seq)";

/// The per-call state of an append, borrowing ids from the caller's records.
struct Batch<'a> {
    outcomes: Vec<AppendOutcome>,
    /// In order of first appearance.
    producers: Vec<Producer<'a>>,
    producer_index: HashMap<&'a str, usize>,
    last_producer: usize,
    runs: Vec<(&'a str, RunDelta)>,
    run_index: HashMap<&'a str, usize>,
    last_run: usize,
    agents: HashSet<(&'a str, &'a str, &'a str)>,
    last_agent: Option<(&'a str, &'a str, &'a str)>,
    /// Keyed by (run, tag, agent).
    tags: HashMap<(&'a str, &'a str, &'a str), SeriesDelta>,
}

impl<'a> Batch<'a> {
    fn new(len: usize) -> Self {
        Batch {
            outcomes: Vec::with_capacity(len),
            producers: Vec::new(),
            producer_index: HashMap::new(),
            last_producer: 0,
            runs: Vec::new(),
            run_index: HashMap::new(),
            last_run: 0,
            agents: HashSet::new(),
            last_agent: None,
            tags: HashMap::new(),
        }
    }

    /// The producer's state, loading its watermark on first sight.
    fn producer(&mut self, conn: &Connection, id: &'a str) -> rusqlite::Result<&mut Producer<'a>> {
        let hit = self
            .producers
            .get(self.last_producer)
            .is_some_and(|p| p.id == id);
        if !hit {
            self.last_producer = match self.producer_index.get(id) {
                Some(&i) => i,
                None => {
                    let stored: Option<i64> = conn
                        .prepare_cached(SELECT_WATERMARK)?
                        .query_row([id], |r| r.get(0))
                        .optional()?;
                    self.producers.push(Producer {
                        id,
                        watermark: Watermark::from_stored(stored.map(u64_from_sql)),
                        dirty: false,
                    });
                    self.producer_index.insert(id, self.producers.len() - 1);
                    self.producers.len() - 1
                }
            };
        }
        Ok(&mut self.producers[self.last_producer])
    }

    fn run(&mut self, run_id: &'a str) -> &mut RunDelta {
        let hit = self
            .runs
            .get(self.last_run)
            .is_some_and(|(r, _)| *r == run_id);
        if !hit {
            let runs = &mut self.runs;
            self.last_run = *self.run_index.entry(run_id).or_insert_with(|| {
                runs.push((run_id, RunDelta::default()));
                runs.len() - 1
            });
        }
        &mut self.runs[self.last_run].1
    }

    fn saw_scalar(&mut self, s: &'a Scalar, seq: u64) {
        self.tags
            .entry((&s.run_id, &s.tag, &s.agent_id))
            .and_modify(|d| d.add(s, seq))
            .or_insert_with(|| SeriesDelta::new(s, seq));
    }

    fn saw_agent(&mut self, run_id: &'a str, agent_id: &'a str, mode: &'a str) {
        let triple = (run_id, agent_id, mode);
        if self.last_agent != Some(triple) {
            self.agents.insert(triple);
            self.last_agent = Some(triple);
        }
    }
}

fn ts_of(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(telemetry_core::timestamp::to_unix_nanos)
}

impl Store {
    /// Opens (creating the file and its directory if needed) and migrates the store.
    ///
    /// An existing file that is not an SQLite database, is corrupt, belongs to another
    /// application or was written by a newer build is refused with a typed error and left
    /// untouched; a directory that cannot be written is [`StoreError::ReadOnly`].
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let conn = open::open_writer(&cfg)?;
        Ok(Store {
            conn,
            cfg,
            checkpoint: CheckpointState::default(),
            event_buf: Vec::new(),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.cfg.path
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Appends a batch in one transaction and writes each stored record's seq into its
    /// `seq_id`.
    ///
    /// A record whose `producer_seq` is at or below its producer's watermark is a
    /// [`AppendOutcome::Duplicate`] and is not stored; records with an empty `producer_id` are
    /// always stored. A producer with no watermark yet has seen nothing, so its first
    /// `producer_seq` may be 0. `rejected` holds the stamps of records the caller refused: they only
    /// advance watermarks (after the records of this call are considered). On any error the
    /// whole call rolls back and the records are unchanged. The call makes one attempt (each
    /// SQLite statement waits up to [`StoreConfig::busy_timeout`] for a lock): a lock held
    /// longer is [`StoreError::Busy`], which [`StoreError::is_retryable`] says is worth another
    /// try. The retry policy is the caller's (the server has one, for every backend).
    pub fn append(
        &mut self,
        records: &mut [Record],
        rejected: &[(String, u64)],
    ) -> Result<AppendReport, StoreError> {
        if let Some(index) = records.iter().position(|r| r.kind.is_none()) {
            return Err(StoreError::EmptyRecord { index });
        }
        let (outcomes, watermarks) = self
            .try_append(records, rejected)
            .map_err(|e| classify(&self.cfg.path, e))?;
        let mut stored = 0;
        for (record, outcome) in records.iter_mut().zip(&outcomes) {
            if let AppendOutcome::Stored { seq } = outcome {
                record.set_seq_id(*seq);
                stored += 1;
            }
        }
        Ok(AppendReport {
            duplicates: outcomes.len() - stored,
            stored,
            outcomes,
            watermarks,
        })
    }

    /// One attempt: returns the outcomes and watermarks after the commit.
    fn try_append(
        &mut self,
        records: &[Record],
        rejected: &[(String, u64)],
    ) -> rusqlite::Result<Appended> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = append_in(&tx, records, rejected, &mut self.event_buf)?;
        tx.commit()?;
        Ok(result)
    }

    /// The durable watermark of a producer (0 when it has none).
    pub fn watermark(&self, producer_id: &str) -> Result<u64, StoreError> {
        let stored: Option<i64> = self
            .conn
            .prepare_cached(SELECT_WATERMARK)
            .and_then(|mut s| s.query_row([producer_id], |r| r.get(0)).optional())
            .map_err(|e| classify(&self.cfg.path, e))?;
        Ok(stored.map_or(0, u64_from_sql))
    }

    /// A new read-only connection on the same file.
    pub fn reader(&self) -> Result<StoreReader, StoreError> {
        StoreReader::open_with(
            &self.cfg.path,
            self.cfg.busy_timeout,
            self.cfg.clamped_page_size(),
        )
    }

    /// Copies the WAL back into the database (see [`CheckpointStats`]).
    pub fn checkpoint(&mut self) -> Result<CheckpointStats, StoreError> {
        checkpoint::run(&self.conn, &self.cfg, &mut self.checkpoint)
            .map_err(|e| classify(&self.cfg.path, e))
    }

    /// Inserts or replaces the registry entry of `info.run_id`.
    pub fn put_run_info(&mut self, info: &pb::RunInfo) -> Result<(), StoreError> {
        let updated = ts_of(info.updated_at.as_ref().or(info.created_at.as_ref()));
        self.conn
            .prepare_cached(UPSERT_RUN_INFO)
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    info.run_id,
                    info.state,
                    updated,
                    info.encode_to_vec()
                ])
            })
            .map(drop)
            .map_err(|e| classify(&self.cfg.path, e))
    }

    /// Runs `PRAGMA quick_check` (reads the whole file: for tooling, not the ingest path) and
    /// returns its findings, empty when the file is sound.
    pub fn quick_check(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA quick_check(100)")
            .map_err(|e| classify(&self.cfg.path, e))?;
        let lines = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| classify(&self.cfg.path, e))?;
        Ok(lines.into_iter().filter(|l| l != "ok").collect())
    }
}

fn append_in(
    conn: &Connection,
    records: &[Record],
    rejected: &[(String, u64)],
    event_buf: &mut Vec<u8>,
) -> rusqlite::Result<Appended> {
    let mut batch = Batch::new(records.len());
    let mut steps = conn.prepare_cached(rows::INSERT_STEP)?;
    let mut episodes = conn.prepare_cached(rows::INSERT_EPISODE)?;
    let mut events = conn.prepare_cached(rows::INSERT_EVENT)?;
    let mut scalars = conn.prepare_cached(rows::INSERT_SCALAR)?;
    for record in records {
        let (producer_id, producer_seq) = record.producer();
        if !producer_id.is_empty() {
            let p = batch.producer(conn, producer_id)?;
            if p.watermark.is_duplicate(producer_seq) {
                batch.outcomes.push(AppendOutcome::Duplicate);
                continue;
            }
        }
        let Some(kind) = record.kind.as_ref() else {
            continue; // `append` refuses empty records before any transaction.
        };
        let seq = match kind {
            Kind::Step(s) => {
                rows::insert_step(&mut steps, s)?;
                let seq = u64_from_sql(conn.last_insert_rowid());
                let run = batch.run(&s.run_id);
                run.steps += 1;
                run.last_step_seq = seq;
                run.saw_ts(ts_of(s.timestamp.as_ref()));
                batch.saw_agent(&s.run_id, &s.agent_id, canonical_mode(&s.control_mode));
                seq
            }
            Kind::Episode(e) => {
                rows::insert_episode(&mut episodes, e)?;
                let seq = u64_from_sql(conn.last_insert_rowid());
                let run = batch.run(&e.run_id);
                run.episodes += 1;
                run.last_episode_seq = seq;
                run.saw_ts(ts_of(e.timestamp.as_ref()));
                batch.saw_agent(&e.run_id, &e.agent_id, canonical_mode(&e.control_mode));
                seq
            }
            Kind::Scalar(v) => {
                rows::insert_scalar(&mut scalars, v)?;
                let seq = u64_from_sql(conn.last_insert_rowid());
                batch.run(&v.run_id).saw_ts(ts_of(v.timestamp.as_ref()));
                batch.saw_scalar(v, seq);
                seq
            }
            Kind::RunStarted(_) | Kind::RunCompleted(_) | Kind::Artifact(_) => {
                let Some((kind, ts)) = rows::event_columns(record) else {
                    continue;
                };
                rows::insert_event(&mut events, record, kind, ts, event_buf)?;
                let seq = u64_from_sql(conn.last_insert_rowid());
                let run = batch.run(record.run_id());
                run.last_event_seq = seq;
                run.saw_ts(ts);
                seq
            }
        };
        if !producer_id.is_empty() {
            let p = batch.producer(conn, producer_id)?;
            p.dirty |= p.watermark.advance(producer_seq);
        }
        batch.outcomes.push(AppendOutcome::Stored { seq });
    }
    for (producer_id, producer_seq) in rejected {
        if producer_id.is_empty() {
            continue;
        }
        let p = batch.producer(conn, producer_id)?;
        // A rejected record still advances its producer's watermark.
        p.dirty |= p.watermark.advance(*producer_seq);
    }
    drop((steps, episodes, events, scalars));
    finish(conn, batch)
}

/// Writes the watermarks and run summaries of the call.
fn finish(conn: &Connection, batch: Batch<'_>) -> rusqlite::Result<Appended> {
    if batch.producers.iter().any(|p| p.dirty) {
        let mut stmt = conn.prepare_cached(UPSERT_WATERMARK)?;
        for p in batch.producers.iter().filter(|p| p.dirty) {
            stmt.execute(rusqlite::params![
                p.id,
                u64_to_sql(p.watermark.durable_seq())
            ])?;
        }
    }
    let watermarks = batch
        .producers
        .iter()
        .map(|p| (p.id.to_owned(), p.watermark.durable_seq()))
        .collect();
    if !batch.runs.is_empty() {
        let mut stmt = conn.prepare_cached(UPSERT_RUN_STATS)?;
        for (run_id, d) in &batch.runs {
            stmt.execute(rusqlite::params![
                run_id,
                u64_to_sql(d.steps),
                u64_to_sql(d.episodes),
                d.first_ts,
                d.last_ts,
                u64_to_sql(d.last_step_seq),
                u64_to_sql(d.last_episode_seq),
                u64_to_sql(d.last_event_seq),
            ])?;
        }
    }
    if !batch.agents.is_empty() {
        let mut stmt = conn.prepare_cached(INSERT_RUN_AGENT)?;
        for (run_id, agent_id, mode) in &batch.agents {
            stmt.execute([run_id, agent_id, mode])?;
        }
    }
    if !batch.tags.is_empty() {
        let mut stmt = conn.prepare_cached(UPSERT_SCALAR_TAG)?;
        for ((run_id, tag, agent_id), d) in &batch.tags {
            stmt.execute(rusqlite::params![
                run_id,
                tag,
                agent_id,
                u64_to_sql(d.points),
                d.first_step,
                d.last_step,
                (!d.last_value.is_nan()).then_some(d.last_value),
                d.last_ts,
                u64_to_sql(d.last_seq),
            ])?;
        }
    }
    Ok((batch.outcomes, watermarks))
}
