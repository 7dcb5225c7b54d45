//! Benchmarks of the PostgreSQL store (telemetry-store-pg), each against a baseline run in the
//! same process on the same database:
//!
//! - `pg_ingest_b1024`: `BackendWriter::append` of batches of 1,024 steps (watermarks, seqs in
//!   commit order, run summaries, one `pg_notify` per batch), against a plain binary `COPY` of
//!   the same rows into a table with the same columns and indexes, one transaction per batch.
//!   Goal (issue 20): ratio >= 0.7.
//! - `pg_ingest_vs_sqlite_b1024`: the same PostgreSQL appends against the embedded SQLite
//!   store's `Store::append` of the same batches (ratio = PostgreSQL / SQLite).
//! - `pg_two_writers_b1024`: two writers (two daemons' worth) appending concurrently to one
//!   schema, each its own producer, against one writer alone (ratio = combined rate / one
//!   writer's rate). Appends to one stream commit one at a time (the seq-order lock), so
//!   expect about 1: a second daemon adds availability and viewers, not ingest.
//!
//! Needs a database: GYM_TELEMETRY_TEST_PG (scripts/bench.sh starts a throwaway cluster when it
//! is unset). `--quick` writes fewer rows.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use gym_telemetry_benches::{fresh, rate, template, AnyResult};
use telemetry_core::{
    pb::{record::Kind, Record},
    timestamp::to_unix_nanos,
};
use telemetry_store::{Backend, BackendWriter, Store, StoreConfig};
use telemetry_store_pg::{testing, PgBackend};
use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type, NoTls};

const BATCH: usize = 1024;

/// Appends `total` steps of `producer` through `w`, in batches of [`BATCH`].
fn ingest(w: &mut dyn BackendWriter, producer: &str, total: u64) -> AnyResult<Duration> {
    let mut records: Vec<Record> = (0..BATCH as u64).map(|i| template(i).into()).collect();
    let mut seq = 0u64;
    let started = Instant::now();
    while seq < total {
        for r in &mut records {
            seq += 1;
            if let Some(Kind::Step(s)) = &mut r.kind {
                s.producer_id = producer.to_owned();
                s.producer_seq = seq;
                s.episode_index = seq / 500;
                s.step_index = seq % 500;
            }
        }
        let report = w.append(&mut records, &[])?;
        if report.stored != records.len() {
            return Err(format!("stored {} of {}", report.stored, records.len()).into());
        }
    }
    Ok(started.elapsed())
}

fn backend(url: &str, prefix: &str) -> AnyResult<PgBackend> {
    Ok(PgBackend::new(testing::fresh_config(url, prefix))?)
}

const COPY_TYPES: [Type; 20] = [
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
];

/// The baseline: binary COPY of the same rows into a copy of the `steps` table (same columns
/// and indexes), one transaction per batch.
async fn copy_plain(url: &str, schema: &str, total: u64) -> AnyResult<Duration> {
    let (mut client, conn) = url
        .parse::<tokio_postgres::Config>()?
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.plain_steps (LIKE {schema}.steps INCLUDING ALL)"
        ))
        .await?;
    let templates: Vec<_> = (0..BATCH as u64).map(template).collect();
    let mut seq = 0i64;
    let started = Instant::now();
    while (seq as u64) < total {
        let tx = client.transaction().await?;
        let sink = tx
            .copy_in(&format!(
                "COPY {schema}.plain_steps (seq, run_id, episode_index, step_index, \
                 action_json, observation_json, reward, terminated, truncated, ts_ns, \
                 policy_label, backend, agent_id, render_hint_json, frame_ref, payload_version, \
                 control_mode, producer_id, producer_seq, info_json) FROM STDIN BINARY"
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
        futures::pin_mut!(writer);
        for s in &templates {
            seq += 1;
            let ts = s.timestamp.as_ref().map(to_unix_nanos);
            let (ep, st, pv) = (seq / 500, seq % 500, s.payload_version as i64);
            writer
                .as_mut()
                .write(&[
                    &seq,
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
                    &seq,
                    &s.info_json,
                ])
                .await?;
        }
        writer.finish().await?;
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

fn sqlite_ingest(dir: &Path, total: u64) -> AnyResult<Duration> {
    let path = fresh(dir, "sqlite-b1024.sqlite");
    let mut store = Store::open(StoreConfig::new(&path))?;
    ingest(&mut store, "bench-producer", total)
}

fn main() -> AnyResult<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let Ok(url) = std::env::var(testing::TEST_URL_VAR) else {
        return Err(format!("{} is unset", testing::TEST_URL_VAR).into());
    };
    let total: u64 = if quick { 40 * 1024 } else { 200 * 1024 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;

    // ABBA rounds, best of two each.
    let (mut store_t, mut copy_t, mut sqlite_t) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..4 {
        if round == 0 || round == 3 {
            let b = backend(&url, "bcopy")?;
            drop(b.open_writer()?); // the schema, for LIKE
            let schema = b.config().schema().to_owned();
            copy_t = copy_t.min(rt.block_on(copy_plain(&url, &schema, total))?);
            sqlite_t = sqlite_t.min(sqlite_ingest(dir.path(), total)?);
        } else {
            let b = backend(&url, "bstore")?;
            let mut w = b.open_writer()?;
            store_t = store_t.min(ingest(w.as_mut(), "bench-producer", total)?);
        }
    }
    let (s, c, q) = (
        rate(total, store_t),
        rate(total, copy_t),
        rate(total, sqlite_t),
    );
    eprintln!(
        "   b1024: {total} steps, pg store {s:.0}/s, plain COPY {c:.0}/s, sqlite store {q:.0}/s"
    );
    println!("BENCH pg_ingest_b1024 {s:.0} steps/s ratio={:.2}", s / c);
    println!(
        "BENCH pg_ingest_vs_sqlite_b1024 {s:.0} steps/s ratio={:.2}",
        s / q
    );

    // Two writers on one schema against one.
    let one = {
        let b = backend(&url, "bone")?;
        let mut w = b.open_writer()?;
        rate(total, ingest(w.as_mut(), "solo", total)?)
    };
    let b = Arc::new(backend(&url, "btwo")?);
    drop(b.open_writer()?);
    let started = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|i| {
            // Each its own backend: its own pool and connection, as two daemons would have.
            let cfg = b.config().clone();
            std::thread::spawn(move || -> Result<(), String> {
                let own = PgBackend::new(cfg).map_err(|e| e.to_string())?;
                let mut w = own.open_writer().map_err(|e| e.to_string())?;
                ingest(w.as_mut(), &format!("writer-{i}"), total)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "writer panicked")??;
    }
    let two = rate(2 * total, started.elapsed());
    eprintln!("   two writers: {two:.0}/s combined, one writer {one:.0}/s");
    println!(
        "BENCH pg_two_writers_b1024 {two:.0} steps/s ratio={:.2}",
        two / one
    );
    Ok(())
}
