//! Benchmarks of telemetry-store, each against a plain-SQLite baseline run in the same process.
//!
//! The store does more than an INSERT loop (watermarks, run summaries, seq bookkeeping) and
//! reads through keyset pages rather than one cursor; these figures show what that costs:
//!
//! - `store_ingest_b{1,64,1024}`: `Store::append` at a batch size, against a prepared-statement
//!   INSERT loop into the same `steps` table (same columns, indexes and pragmas, one
//!   transaction per batch). Goal: b1024 >= 0.8 of plain.
//! - `store_read`: `stream_steps_since` over the whole table, against one
//!   `SELECT ... ORDER BY seq` decoding the same rows. Goal: > 2M rows/s.
//! - `store_dump_rss`: peak RSS of a child process dumping N rows as JSONL, against one
//!   dumping N/5 (quick: N/5 as well). Goal: ratio ~1 (flat memory).
//! - `dump_parquet_rss`: the same for the Parquet export (`telemetry_export::export_parquet`,
//!   row groups of 65,536 rows) of the same store. Goal: ratio <= 1.1.
//!
//! - `scalar_read_1m`: `read_scalars` of 1M stored points of one tag down to 2,000 buckets
//!   (min/max/last each), against a plain `SELECT step, value ... ORDER BY step` of the same
//!   rows collected into memory. ratio = plain time / downsampled time: 1.0 means the
//!   downsampling costs nothing over merely reading the rows, while the answer is 2,000
//!   buckets instead of 1M points (the encoded sizes are printed on stderr).
//!
//! `--quick` keeps each part well under a minute; `--only ingest|dump|scalar` runs one part
//! (`ingest` includes `store_read`). The hidden `__dump-child <db> <since>` and
//! `__dump-parquet-child <db> <since>` subcommands are the children of the RSS measurements.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use rusqlite::Connection;
use telemetry_core::{
    pb::{record::Kind, Record, RunStep},
    timestamp::from_unix_nanos,
};
use telemetry_store::{
    dump::{dump_jsonl, DumpOptions},
    Filter, Store, StoreConfig, StoreReader,
};

use gym_telemetry_benches::{fresh, ingest_plain, rate, template, AnyResult};

struct Sizes {
    ingest: [(usize, u64); 3],
    dump_small: u64,
    dump_big: u64,
}

fn config(path: &Path) -> StoreConfig {
    StoreConfig::new(path)
}

/// Store::append in batches of `batch`, reusing one batch vector (no allocation per record).
/// Returns the time taken and the steps stored (`total` rounded up to whole batches).
fn ingest_store(path: &Path, batch: usize, total: u64) -> AnyResult<(Duration, u64)> {
    let mut store = Store::open(config(path))?;
    let mut records: Vec<Record> = (0..batch as u64).map(|i| template(i).into()).collect();
    let mut seq = 0u64;
    let started = Instant::now();
    while seq < total {
        for r in &mut records {
            seq += 1;
            if let Some(Kind::Step(s)) = &mut r.kind {
                s.producer_seq = seq;
                s.episode_index = seq / 500;
                s.step_index = seq % 500;
            }
        }
        let report = store.append(&mut records, &[])?;
        if report.stored != records.len() {
            return Err(format!("stored {} of {}", report.stored, records.len()).into());
        }
    }
    Ok((started.elapsed(), seq))
}

/// Plain and store runs in ABBA order on fresh files, best of two each, so drift on a
/// shared machine does not favour either side.
fn bench_ingest(dir: &Path, sizes: &Sizes) -> AnyResult<PathBuf> {
    let mut last = PathBuf::new();
    for (batch, total) in sizes.ingest {
        let total = total - total % batch as u64;
        let (mut plain, mut store) = (Duration::MAX, Duration::MAX);
        for round in 0..4 {
            if round == 0 || round == 3 {
                let path = fresh(dir, &format!("plain-b{batch}.sqlite"));
                plain = plain.min(ingest_plain(&path, batch, total)?);
            } else {
                let path = fresh(dir, &format!("store-b{batch}-{round}.sqlite"));
                store = store.min(ingest_store(&path, batch, total)?.0);
                last = path;
            }
        }
        let (s, p) = (rate(total, store), rate(total, plain));
        eprintln!("   b{batch}: {total} steps, store {s:.0}/s, plain {p:.0}/s (best of 2)");
        println!(
            "BENCH store_ingest_b{batch} {s:.0} steps/s ratio={:.2}",
            s / p
        );
    }
    Ok(last)
}

fn decode_plain(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunStep> {
    Ok(RunStep {
        seq_id: row.get::<_, i64>(0)? as u64,
        run_id: row.get(1)?,
        episode_index: row.get::<_, i64>(2)? as u64,
        step_index: row.get::<_, i64>(3)? as u64,
        action_json: row.get(4)?,
        observation_json: row.get(5)?,
        reward: row.get::<_, Option<f64>>(6)?.unwrap_or(f64::NAN),
        terminated: row.get(7)?,
        truncated: row.get(8)?,
        timestamp: row.get::<_, Option<i64>>(9)?.map(from_unix_nanos),
        policy_label: row.get(10)?,
        backend: row.get(11)?,
        agent_id: row.get(12)?,
        render_hint_json: row.get(13)?,
        frame_ref: row.get(14)?,
        payload_version: row.get(15)?,
        control_mode: row.get(16)?,
        producer_id: row.get(17)?,
        producer_seq: row.get::<_, i64>(18)? as u64,
        info_json: row.get(19)?,
        policy_id: row.get(20)?,
        policy_digest: row.get(21)?,
    })
}

fn read_plain(path: &Path) -> AnyResult<(u64, Duration)> {
    let conn = Connection::open(path)?;
    let started = Instant::now();
    let mut stmt = conn.prepare(
        "SELECT seq, run_id, episode_index, step_index, action_json, observation_json, reward, \
         terminated, truncated, ts_ns, policy_label, backend, agent_id, render_hint_json, \
         frame_ref, payload_version, control_mode, producer_id, producer_seq, info_json, \
         policy_id, policy_digest FROM steps ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    let mut check = 0u64;
    while let Some(row) = rows.next()? {
        let step = decode_plain(row)?;
        check = check.wrapping_add(step.seq_id);
        n += 1;
    }
    std::hint::black_box(check);
    Ok((n, started.elapsed()))
}

fn read_store(path: &Path) -> AnyResult<(u64, Duration)> {
    let reader = StoreReader::open(path)?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut check = 0u64;
    for step in reader.stream_steps_since(0, &Filter::default()) {
        check = check.wrapping_add(step?.seq_id);
        n += 1;
    }
    std::hint::black_box(check);
    Ok((n, started.elapsed()))
}

fn bench_read(path: &Path) -> AnyResult<()> {
    // Best of two, alternating, so neither side pays for a cold page cache alone.
    let mut best = (f64::MIN, f64::MIN);
    let mut rows = 0;
    for _ in 0..2 {
        let (n, d) = read_plain(path)?;
        best.1 = best.1.max(rate(n, d));
        let (m, d) = read_store(path)?;
        best.0 = best.0.max(rate(m, d));
        if n != m {
            return Err(format!("plain read {n} rows, store {m}").into());
        }
        rows = n;
    }
    eprintln!(
        "   read {rows} rows: store {:.0}/s, plain {:.0}/s",
        best.0, best.1
    );
    println!(
        "BENCH store_read {:.0} rows/s ratio={:.2}",
        best.0,
        best.0 / best.1
    );
    Ok(())
}

/// Peak RSS (KiB) of a child (`__dump-child` or `__dump-parquet-child`) dumping every step
/// with seq > `since`.
fn dump_child_rss(child: &str, db: &Path, since: u64) -> AnyResult<(u64, u64)> {
    let out = Command::new(std::env::current_exe()?)
        .arg(child)
        .arg(db)
        .arg(since.to_string())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "dump child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let mut fields = text.split_whitespace();
    let rss = fields.next().ok_or("no rss")?.parse()?;
    let records = fields.next().ok_or("no count")?.parse()?;
    Ok((rss, records))
}

fn dump_child(args: &[String], parquet: bool) -> AnyResult<()> {
    let db = PathBuf::from(args.first().ok_or("missing db")?);
    let since: u64 = args.get(1).ok_or("missing since")?.parse()?;
    let reader = StoreReader::open(&db)?;
    let opts = DumpOptions {
        since_seq: since,
        ..DumpOptions::default()
    };
    let records = if parquet {
        let p = telemetry_export::ParquetOptions::default();
        telemetry_export::export_parquet(&reader, &opts, &p, std::io::sink())?.rows
    } else {
        dump_jsonl(&reader, &opts, std::io::sink())?.records
    };
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .ok_or("no VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .to_owned();
    println!("{hwm} {records}");
    Ok(())
}

fn bench_dump_rss(dir: &Path, sizes: &Sizes) -> AnyResult<()> {
    let path = fresh(dir, "dump.sqlite");
    let (fill, total) = ingest_store(&path, 1024, sizes.dump_big)?;
    eprintln!("   filled {total} rows in {:.1}s", fill.as_secs_f64());
    for (child, name, what) in [
        ("__dump-child", "store_dump_rss", "dump"),
        ("__dump-parquet-child", "dump_parquet_rss", "parquet export"),
    ] {
        let (small_kb, small_n) = dump_child_rss(child, &path, total - sizes.dump_small)?;
        let (big_kb, big_n) = dump_child_rss(child, &path, 0)?;
        eprintln!("   {what} {small_n} rows: {small_kb} KiB peak; {big_n} rows: {big_kb} KiB peak");
        println!(
            "BENCH {name} {:.1} MiB ratio={:.2}",
            big_kb as f64 / 1024.0,
            big_kb as f64 / small_kb.max(1) as f64
        );
    }
    Ok(())
}

fn bench_scalar_read(dir: &Path) -> AnyResult<()> {
    const POINTS: i64 = 1_000_000;
    let path = fresh(dir, "scalars.sqlite");
    let mut store = Store::open(config(&path))?;
    let started = Instant::now();
    let mut step = 0i64;
    while step < POINTS {
        let mut batch: Vec<Record> = (0..4096)
            .map(|i| {
                let s = step + i;
                Record::from(telemetry_core::pb::Scalar {
                    run_id: "bench".into(),
                    tag: "losses/value_loss".into(),
                    step: s * 8,
                    value: ((s % 977) as f64).sin(),
                    producer_id: "p".into(),
                    producer_seq: s as u64 + 1,
                    ..Default::default()
                })
            })
            .take_while(|r| match &r.kind {
                Some(Kind::Scalar(v)) => v.step < POINTS * 8,
                _ => false,
            })
            .collect();
        step += batch.len() as i64;
        store.append(&mut batch, &[])?;
    }
    eprintln!(
        "   filled {POINTS} scalars in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let reader = store.reader()?;
    let q = telemetry_store::ScalarQuery {
        run_id: "bench".into(),
        max_points: 2000,
        ..Default::default()
    };
    let (mut best_ours, mut best_plain) = (Duration::MAX, Duration::MAX);
    let (mut buckets, mut answer_bytes, mut rows) = (0, 0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        let plain = reader.scalar_points("bench", "losses/value_loss", "")?;
        best_plain = best_plain.min(t.elapsed());
        rows = plain.len();
        std::hint::black_box(plain);
        let t = Instant::now();
        let series = reader.read_scalars(&q)?;
        best_ours = best_ours.min(t.elapsed());
        let s = series.first().ok_or("no series")?;
        if s.points != POINTS as u64 {
            return Err(format!("read {} points, stored {POINTS}", s.points).into());
        }
        buckets = s.buckets.len();
        answer_bytes = prost::Message::encoded_len(s);
    }
    if rows != POINTS as usize {
        return Err(format!("plain read {rows} rows, stored {POINTS}").into());
    }
    eprintln!(
        "   1M points -> {buckets} buckets ({answer_bytes} bytes encoded, vs ~{} bytes as points): \
         downsampled {:.0} ms, plain SELECT {:.0} ms",
        rows * 20,
        best_ours.as_secs_f64() * 1e3,
        best_plain.as_secs_f64() * 1e3
    );
    println!(
        "BENCH scalar_read_1m {:.1} ms ratio={:.2}",
        best_ours.as_secs_f64() * 1e3,
        best_plain.as_secs_f64() / best_ours.as_secs_f64()
    );
    Ok(())
}

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("__dump-child") => return dump_child(&args[1..], false),
        Some("__dump-parquet-child") => return dump_child(&args[1..], true),
        _ => {}
    }
    let only = args
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].clone());
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            ingest: [(1, 10_000), (64, 100_000), (1024, 300_000)],
            dump_small: 100_000,
            dump_big: 500_000,
        }
    } else {
        Sizes {
            ingest: [(1, 50_000), (64, 500_000), (1024, 1_000_000)],
            dump_small: 1_000_000,
            dump_big: 5_000_000,
        }
    };
    let dir = tempfile::tempdir()?;
    if part("ingest") {
        eprintln!("== store ingest");
        let read_db = bench_ingest(dir.path(), &sizes)?;
        eprintln!("== store read");
        bench_read(&read_db)?;
    }
    if part("dump") {
        eprintln!("== store dump rss (JSONL and Parquet)");
        bench_dump_rss(dir.path(), &sizes)?;
    }
    if part("scalar") {
        eprintln!("== scalar read");
        bench_scalar_read(dir.path())?;
    }
    Ok(())
}
