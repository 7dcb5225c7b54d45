//! Benchmarks of the PostgreSQL store (telemetry-store-pg), each against a baseline run in the
//! same process on the same database. Configurations alternate in chunks of five batches and
//! each is scored by its median chunk: the machines are shared and noisy, and a neighbour's
//! burst then lands on a few chunks of every configuration, not on one configuration's run.
//!
//! - `pg_ingest_b1024`: `BackendWriter::append` of batches of 1,024 steps (watermarks, seqs in
//!   commit order, run summaries, one `pg_notify` per batch), against a plain binary `COPY` of
//!   the same rows (all 22 columns, same values) into a table with the same columns and
//!   indexes, one transaction per batch. Goal (issue 20): ratio >= 0.7.
//! - `pg_ingest_vs_sqlite_b1024`: the same PostgreSQL appends against the embedded SQLite
//!   store's `Store::append` of the same batches (ratio = PostgreSQL / SQLite).
//! - `pg_two_writers_b1024`: two writers (two daemons' worth) appending concurrently to one
//!   schema, each its own producer, against one writer alone (ratio = combined rate / one
//!   writer's rate), chunks of one writer alone alternating with chunks of both at once.
//!   Appends to one stream commit one at a time (the seq-order lock), so expect about 1: a
//!   second daemon adds availability and viewers, not ingest.
//!
//! Needs a database: GYM_TELEMETRY_TEST_PG (scripts/bench.sh starts a throwaway cluster when it
//! is unset). `--quick` writes fewer rows.

use std::time::{Duration, Instant};

use gym_telemetry_benches::{fresh, rate, template, AnyResult};
use telemetry_core::{
    pb::{record::Kind, Record},
    timestamp::to_unix_nanos,
};
use telemetry_store::{Backend, BackendWriter, Store, StoreConfig};
use telemetry_store_pg::{testing, PgBackend};
use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type, NoTls};

const BATCH: usize = 1024;
/// Batches per timed chunk. Configurations alternate chunk by chunk and each is scored by its
/// median chunk, so a neighbour's burst on the shared machine lands on a few chunks of every
/// configuration rather than on one configuration's whole run.
const CHUNK: usize = 5;

/// Batches of [`BATCH`] steps as one producer sends them: [`template`] rows, renumbered batch
/// after batch (producer seq, episode and step index).
struct Batches {
    records: Vec<Record>,
    producer: String,
    seq: u64,
}

impl Batches {
    fn new(producer: &str) -> Self {
        Batches {
            records: (0..BATCH as u64).map(|i| template(i).into()).collect(),
            producer: producer.to_owned(),
            seq: 0,
        }
    }

    fn next(&mut self) -> &mut [Record] {
        for r in &mut self.records {
            self.seq += 1;
            if let Some(Kind::Step(s)) = &mut r.kind {
                s.producer_id.clone_from(&self.producer);
                s.producer_seq = self.seq;
                s.episode_index = self.seq / 500;
                s.step_index = self.seq % 500;
            }
        }
        &mut self.records
    }
}

/// Appends `n` batches of `b` through `w`.
fn append_batches(w: &mut dyn BackendWriter, b: &mut Batches, n: usize) -> AnyResult<Duration> {
    let started = Instant::now();
    for _ in 0..n {
        let records = b.next();
        let report = w.append(records, &[])?;
        if report.stored != records.len() {
            return Err(format!("stored {} of {}", report.stored, records.len()).into());
        }
    }
    Ok(started.elapsed())
}

fn backend(url: &str, prefix: &str) -> AnyResult<PgBackend> {
    Ok(PgBackend::new(testing::fresh_config(url, prefix))?)
}

/// The baseline: a plain binary COPY of the same rows (every column the store writes, with
/// the same values) into a copy of the `steps` table (same columns and indexes), one
/// transaction per batch. It shares no code with the store's writer on purpose.
struct PlainCopy {
    client: tokio_postgres::Client,
    table: String,
    batches: Batches,
    seq: i64,
}

const COPY_TYPES: [Type; 22] = [
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

impl PlainCopy {
    async fn connect(url: &str, schema: &str) -> AnyResult<PlainCopy> {
        let (client, conn) = url
            .parse::<tokio_postgres::Config>()?
            .connect(NoTls)
            .await?;
        tokio::spawn(conn);
        let table = format!("{schema}.plain_steps");
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (LIKE {schema}.steps INCLUDING ALL)"
            ))
            .await?;
        Ok(PlainCopy {
            client,
            table,
            batches: Batches::new("bench-producer"),
            seq: 0,
        })
    }

    async fn chunk(&mut self, n: usize) -> AnyResult<Duration> {
        let started = Instant::now();
        for _ in 0..n {
            let tx = self.client.transaction().await?;
            let sink = tx
                .copy_in(&format!(
                    "COPY {} (seq, run_id, episode_index, step_index, action_json, \
                     observation_json, reward, terminated, truncated, ts_ns, policy_label, \
                     backend, agent_id, render_hint_json, frame_ref, payload_version, \
                     control_mode, producer_id, producer_seq, info_json, policy_id, \
                     policy_digest) FROM STDIN BINARY",
                    self.table
                ))
                .await?;
            let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
            futures::pin_mut!(writer);
            for r in self.batches.next().iter() {
                let Some(Kind::Step(s)) = &r.kind else {
                    continue;
                };
                self.seq += 1;
                let ts = s.timestamp.as_ref().map(to_unix_nanos);
                let (ep, st) = (s.episode_index as i64, s.step_index as i64);
                let (pv, pseq) = (i64::from(s.payload_version), s.producer_seq as i64);
                writer
                    .as_mut()
                    .write(&[
                        &self.seq,
                        &s.run_id,
                        &ep,
                        &st,
                        &s.action_json,
                        &s.observation_json,
                        &s.reward,
                        &s.terminated,
                        &s.truncated,
                        &ts,
                        &s.policy_label,
                        &s.backend,
                        &s.agent_id,
                        &s.render_hint_json,
                        &s.frame_ref,
                        &pv,
                        &s.control_mode,
                        &s.producer_id,
                        &pseq,
                        &s.info_json,
                        &s.policy_id,
                        &s.policy_digest,
                    ])
                    .await?;
            }
            writer.finish().await?;
            tx.commit().await?;
        }
        Ok(started.elapsed())
    }
}

/// The rate of `CHUNK` batches (per writer) done in the median of `chunks`.
fn median_rate(chunks: &mut [Duration], writers: u64) -> f64 {
    chunks.sort();
    let mid = chunks
        .get(chunks.len() / 2)
        .copied()
        .unwrap_or(Duration::MAX);
    rate(writers * (CHUNK * BATCH) as u64, mid)
}

fn main() -> AnyResult<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let Ok(url) = std::env::var(testing::TEST_URL_VAR) else {
        return Err(format!("{} is unset", testing::TEST_URL_VAR).into());
    };
    // 200 batches (204,800 steps) per configuration; 40 with --quick.
    let rounds: usize = if quick { 8 } else { 40 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;

    // The store, the plain COPY and SQLite, chunk by chunk, the order rotating each round.
    let store = backend(&url, "bstore")?;
    let mut writer = store.open_writer()?;
    let mut store_batches = Batches::new("bench-producer");
    let copy_schema = backend(&url, "bcopy")?;
    drop(copy_schema.open_writer()?); // the schema, for LIKE
    let mut copy = rt.block_on(PlainCopy::connect(&url, copy_schema.config().schema()))?;
    let mut sqlite = Store::open(StoreConfig::new(fresh(dir.path(), "sqlite-b1024.sqlite")))?;
    let mut sqlite_batches = Batches::new("bench-producer");
    let (mut store_t, mut copy_t, mut sqlite_t) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for k in 0..3 {
            match (round + k) % 3 {
                0 => store_t.push(append_batches(writer.as_mut(), &mut store_batches, CHUNK)?),
                1 => copy_t.push(rt.block_on(copy.chunk(CHUNK))?),
                _ => sqlite_t.push(append_batches(&mut sqlite, &mut sqlite_batches, CHUNK)?),
            }
        }
    }
    let (s, c, q) = (
        median_rate(&mut store_t, 1),
        median_rate(&mut copy_t, 1),
        median_rate(&mut sqlite_t, 1),
    );
    let total = rounds * CHUNK * BATCH;
    eprintln!(
        "   b1024: {total} steps each, median chunk of {CHUNK} batches: pg store {s:.0}/s, \
         plain COPY {c:.0}/s, sqlite store {q:.0}/s"
    );
    println!("BENCH pg_ingest_b1024 {s:.0} steps/s ratio={:.2}", s / c);
    println!(
        "BENCH pg_ingest_vs_sqlite_b1024 {s:.0} steps/s ratio={:.2}",
        s / q
    );

    // Two writers on one schema against one, alternating chunks: one writer alone, then two
    // at once (each its own backend, pool and connection, as two daemons would have).
    let two = backend(&url, "btwo")?;
    drop(two.open_writer()?);
    let mut writers = Vec::new();
    for i in 0..2 {
        let own = PgBackend::new(two.config().clone())?;
        writers.push((own.open_writer()?, Batches::new(&format!("writer-{i}"))));
    }
    let (mut solo_t, mut duo_t) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for k in 0..2 {
            if (round + k) % 2 == 0 {
                let (w, b) = &mut writers[0];
                solo_t.push(append_batches(w.as_mut(), b, CHUNK)?);
                continue;
            }
            let started = Instant::now();
            std::thread::scope(|scope| -> AnyResult<()> {
                let handles: Vec<_> = writers
                    .iter_mut()
                    .map(|(w, b)| {
                        scope.spawn(move || {
                            append_batches(w.as_mut(), b, CHUNK)
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().map_err(|_| "writer panicked")??;
                }
                Ok(())
            })?;
            duo_t.push(started.elapsed());
        }
    }
    let (one, both) = (median_rate(&mut solo_t, 1), median_rate(&mut duo_t, 2));
    eprintln!("   two writers: {both:.0}/s combined, one writer {one:.0}/s");
    println!(
        "BENCH pg_two_writers_b1024 {both:.0} steps/s ratio={:.2}",
        both / one
    );
    Ok(())
}
