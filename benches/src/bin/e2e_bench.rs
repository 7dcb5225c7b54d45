//! End-to-end figures of the real daemon (in process, loopback gRPC), each against a baseline
//! measured in the same run. The unit benches measure one crate each; these show what the whole
//! path (tonic, validation, the writer thread, SQLite, the hub, the live stream) costs together.
//!
//! - `e2e_durable_ack`: steps/s from a tonic client to durable acknowledgement. One
//!   `Ingest.Publish` stream, as the shim uses it: batches of 1024 steps, 4 batches in flight,
//!   one producer id with an increasing `producer_seq`; only records the acks report as stored
//!   count. Ratio: against a plain rusqlite prepared-statement INSERT loop at batch 1024 into the
//!   store's `steps` table (same columns, indexes and pragmas: store_bench's
//!   `store_ingest_b1024` baseline). Plain and daemon runs alternate ABBA, best of two each.
//!   Goal: ratio >= 0.5.
//! - `e2e_durable_ack_4streams` (informative): the same with 4 producers on 4 concurrent
//!   streams (2 batches in flight each), so the writer can merge their batches (group commit).
//! - `e2e_shim_durable` (informative): the same steps through `telemetry_shim::Telemetry` (connected,
//!   1024-record batches, `FullPolicy::Block` so none is dropped), timed until `flush` reports
//!   every record acked. Ratio against the same plain baseline.
//! - `e2e_latency_p50_ms` / `e2e_latency_p99_ms`: publish-to-subscriber latency at 10k steps/s.
//!   A subscriber follows `Query.StreamRunSteps` (own connection, `follow`, `since_seq` 0 on an
//!   empty run) while a publisher sends 100 steps every 10 ms on a `Publish` stream, each step
//!   stamped with its send time in `timestamp`; latency = receive time - send time (same process,
//!   same clock). **Ratio: against the same percentile of a plain tonic round trip to the same
//!   daemon, measured in the same run just before: a unary `PublishBatch` of one small step until
//!   its (durable) ack.** Goal: p99 < 20 ms.
//!
//! `--quick` keeps the whole binary well under a minute (300k steps per throughput run, 3 s of
//! paced publishing); without it, 1M steps and 10 s. For investigating the latency tail:
//! `--latency-only` skips the throughput part and `--trace-slow` lists every live message later
//! than 10 ms with its wall-clock receive time (to line up with `strace -f -ttt -T -e
//! trace=fsync` of the same process).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use telemetry_core::{
    pb::{
        ingest_client::IngestClient, query_client::QueryClient, stream_notice::Kind as Notice,
        CompletionStatus, IngestBatch, RunCompleted, StreamRequest,
    },
    timestamp::to_unix_nanos,
};
use telemetry_shim::{FlushOutcome, FullPolicy, ShimConfig, Telemetry};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use gym_telemetry_benches::{
    e2e::{connect, daemon, now_ns, percentile, publish_stream, small_step, BATCH, WAIT},
    fresh, ingest_plain, rate, template, AnyError, AnyResult,
};

const IN_FLIGHT: usize = 4;
/// Paced publishing for the latency part: 100 steps every 10 ms = 10k steps/s.
const PACE_STEPS: u64 = 100;
const PACE_EVERY: Duration = Duration::from_millis(10);
/// Live messages with a step later than this are counted (and listed with `--trace-slow`).
const SLOW_MS: f64 = 10.0;

struct Sizes {
    /// Steps per throughput run.
    steps: u64,
    /// Paced publishing time of the latency part.
    paced: Duration,
    /// Unary round trips of the latency baseline.
    round_trips: usize,
}

// ---------------------------------------------------------------- throughput

/// `streams` producers, each on its own `Publish` stream of one connection, `total` steps in
/// all. Returns the time from the first send to the last ack, on a fresh daemon.
async fn e2e_ack(total: u64, streams: usize, in_flight: usize) -> AnyResult<(Duration, u64)> {
    let dir = tempfile::tempdir()?;
    let d = daemon(dir.path(), None).await?;
    let channel = connect(&d).await?;
    // Warm-up (not timed): the run exists, the connection is up.
    publish_stream(IngestClient::new(channel.clone()), "warm-up".into(), 2, 2).await?;
    let per_stream = total / BATCH as u64 / streams as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..streams {
        tasks.push(tokio::spawn(publish_stream(
            IngestClient::new(channel.clone()),
            format!("bench-producer-{p}"),
            per_stream,
            in_flight,
        )));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await??;
    }
    let elapsed = started.elapsed();
    d.shutdown().await?;
    Ok((elapsed, stored))
}

/// The real shim, connected to a fresh daemon: `total` steps, then `flush` until acked.
fn shim_run(endpoint: String, total: u64) -> AnyResult<Duration> {
    let shim = Telemetry::new(ShimConfig {
        endpoint,
        batch_max_records: BATCH,
        full_policy: FullPolicy::Block {
            timeout: Duration::from_secs(30),
        },
        ..ShimConfig::default()
    })?;
    // Warm-up (not timed): connected, the run exists.
    for i in 0..BATCH as u64 {
        shim.step(template(i))?;
    }
    let report = shim.flush(WAIT)?;
    if report.outcome != FlushOutcome::Acked {
        return Err(format!("warm-up flush: {report:?}").into());
    }
    let before = shim.stats().acked;
    let started = Instant::now();
    for i in 0..total {
        shim.step(template(i))?;
    }
    let report = shim.flush(Duration::from_secs(300))?;
    let elapsed = started.elapsed();
    let stats = shim.stats();
    if report.outcome != FlushOutcome::Acked || stats.dropped != 0 || stats.acked - before != total
    {
        return Err(format!("shim run incomplete: {report:?} {stats:?}").into());
    }
    shim.close(WAIT)?;
    Ok(elapsed)
}

async fn e2e_shim(total: u64) -> AnyResult<Duration> {
    let dir = tempfile::tempdir()?;
    let d = daemon(dir.path(), None).await?;
    let endpoint = d.endpoint();
    let elapsed = tokio::task::spawn_blocking(move || shim_run(endpoint, total)).await??;
    d.shutdown().await?;
    Ok(elapsed)
}

// ---------------------------------------------------------------- latency

struct Latency {
    /// Per-step publish-to-subscriber latencies, ms, sorted.
    live: Vec<f64>,
    /// Unary PublishBatch round trips, ms, sorted.
    baseline: Vec<f64>,
    /// Steps the subscriber was told it lost (Lagged).
    lagged: u64,
    published: u64,
    /// Stream messages holding a step later than [`SLOW_MS`].
    slow: Vec<SlowMessage>,
}

/// A late live message, listed by `--trace-slow` to correlate with `strace -ttt` of the daemon's
/// store-writer thread (WAL checkpoints: fsync of the WAL and the database file).
struct SlowMessage {
    received_ns: i64,
    worst_ms: f64,
    steps: usize,
    first_seq: u64,
}

/// The baseline: sequential unary `PublishBatch` calls of one small step, each until its ack.
async fn round_trips(channel: Channel, n: usize) -> AnyResult<Vec<f64>> {
    let mut client = IngestClient::new(channel);
    let mut out = Vec::with_capacity(n);
    for i in 0..(n + 50) as u64 {
        let batch = IngestBatch {
            batch_id: i + 1,
            records: vec![small_step("rtt-run", "rtt-producer", i + 1, now_ns())],
        };
        let t0 = Instant::now();
        let ack = client.publish_batch(batch).await?.into_inner();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if ack.stored != 1 {
            return Err(format!("round trip {i}: stored {}", ack.stored).into());
        }
        if i >= 50 {
            out.push(ms); // the first 50 warm the connection up
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Publishes `ticks` batches of 100 steps every 10 ms on one `Publish` stream, then the run's
/// completion. Acks are drained (and checked) as they come.
async fn paced_publisher(channel: Channel, run: &'static str, ticks: u64) -> AnyResult<u64> {
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel::<IngestBatch>(IN_FLIGHT);
    let mut acks = client.publish(ReceiverStream::new(rx)).await?.into_inner();
    let drain = tokio::spawn(async move {
        let mut stored = 0u64;
        while let Some(ack) = tokio::time::timeout(WAIT, acks.message()).await?? {
            if !ack.rejected.is_empty() || ack.duplicates != 0 {
                return Err::<u64, AnyError>(format!("paced ack: {ack:?}").into());
            }
            stored += u64::from(ack.stored);
        }
        Ok(stored)
    });
    let mut interval = tokio::time::interval(PACE_EVERY);
    let mut seq = 0u64;
    for t in 0..ticks {
        interval.tick().await;
        let sent = now_ns();
        let records = (0..PACE_STEPS)
            .map(|_| {
                seq += 1;
                small_step(run, "paced-producer", seq, sent)
            })
            .collect();
        tx.send(IngestBatch {
            batch_id: t + 1,
            records,
        })
        .await
        .map_err(|_| "the paced Publish stream closed")?;
    }
    let done = RunCompleted {
        run_id: run.into(),
        status: CompletionStatus::Succeeded as i32,
        producer_id: "paced-producer".into(),
        producer_seq: seq + 1,
        ..Default::default()
    };
    tx.send(IngestBatch {
        batch_id: ticks + 1,
        records: vec![done.into()],
    })
    .await
    .map_err(|_| "the paced Publish stream closed")?;
    drop(tx);
    let stored = drain.await??;
    if stored != seq + 1 {
        return Err(format!("paced: {stored} of {} stored", seq + 1).into());
    }
    Ok(seq)
}

async fn e2e_latency(sizes: &Sizes) -> AnyResult<Latency> {
    const RUN: &str = "latency-run";
    let dir = tempfile::tempdir()?;
    let d = daemon(dir.path(), None).await?;
    let publish_channel = connect(&d).await?;
    let baseline = round_trips(publish_channel.clone(), sizes.round_trips).await?;

    // The viewer has its own connection.
    let mut query = QueryClient::new(connect(&d).await?);
    let mut stream = query
        .stream_run_steps(StreamRequest {
            run_id: RUN.into(),
            since_seq: 0,
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    loop {
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await??
            .ok_or("stream ended before CaughtUp")?;
        if !msg.steps.is_empty() {
            return Err("the run was expected to be empty".into());
        }
        if matches!(msg.notice.and_then(|n| n.kind), Some(Notice::CaughtUp(_))) {
            break;
        }
    }

    let ticks = (sizes.paced.as_nanos() / PACE_EVERY.as_nanos()) as u64;
    let publisher = tokio::spawn(paced_publisher(publish_channel, RUN, ticks));
    // The first 20 batches (200 ms) warm up and are not counted.
    let warm_up_seq = 20 * PACE_STEPS;
    let mut live = Vec::with_capacity((ticks * PACE_STEPS) as usize);
    let (mut lagged, mut received) = (0u64, 0u64);
    let mut completed = false;
    let mut slow = Vec::new();
    while let Some(msg) = tokio::time::timeout(WAIT, stream.message()).await?? {
        let now = now_ns();
        let mut worst = 0.0f64;
        for s in &msg.steps {
            received += 1;
            if s.producer_seq > warm_up_seq {
                let sent = s.timestamp.as_ref().map_or(now, to_unix_nanos);
                let ms = (now - sent) as f64 / 1e6;
                live.push(ms);
                worst = worst.max(ms);
            }
        }
        if worst > SLOW_MS {
            slow.push(SlowMessage {
                received_ns: now,
                worst_ms: worst,
                steps: msg.steps.len(),
                first_seq: msg.steps.first().map_or(0, |s| s.producer_seq),
            });
        }
        match msg.notice.and_then(|n| n.kind) {
            Some(Notice::Lagged(l)) => lagged += l.dropped_steps,
            Some(Notice::RunCompleted(_)) => completed = true,
            _ => {}
        }
    }
    let published = publisher.await??;
    if !completed || received + lagged != published {
        return Err(format!(
            "subscriber: completed={completed}, received {received} + lagged {lagged} of {published}"
        )
        .into());
    }
    d.shutdown().await?;
    live.sort_by(f64::total_cmp);
    Ok(Latency {
        live,
        baseline,
        lagged,
        published,
        slow,
    })
}

// ---------------------------------------------------------------- main

fn bench_ack(rt: &tokio::runtime::Runtime, dir: &Path, total: u64) -> AnyResult<f64> {
    let total = total - total % (BATCH as u64 * 4);
    let (mut plain, mut e2e) = (Duration::MAX, Duration::MAX);
    for round in 0..4 {
        if round == 0 || round == 3 {
            let path = fresh(dir, "plain-b1024.sqlite");
            plain = plain.min(ingest_plain(&path, BATCH, total)?);
        } else {
            let (d, stored) = rt.block_on(e2e_ack(total, 1, IN_FLIGHT))?;
            if stored != total {
                return Err(format!("e2e stored {stored} of {total}").into());
            }
            e2e = e2e.min(d);
        }
    }
    let (e, p) = (rate(total, e2e), rate(total, plain));
    eprintln!("   {total} steps: daemon {e:.0}/s, plain {p:.0}/s (best of 2)");
    println!("BENCH e2e_durable_ack {e:.0} steps/s ratio={:.2}", e / p);

    let (d, stored) = rt.block_on(e2e_ack(total, 4, 2))?;
    let four = rate(stored, d);
    eprintln!("   4 producers x 1 stream (2 in flight each): {four:.0}/s");
    println!(
        "BENCH e2e_durable_ack_4streams {four:.0} steps/s ratio={:.2}",
        four / p
    );

    let d = rt.block_on(e2e_shim(total))?;
    let shim = rate(total, d);
    eprintln!("   shim (1024/batch, 4 in flight), step..flush acked: {shim:.0}/s");
    println!(
        "BENCH e2e_shim_durable {shim:.0} steps/s ratio={:.2}",
        shim / p
    );
    Ok(p)
}

fn bench_latency(rt: &tokio::runtime::Runtime, sizes: &Sizes) -> AnyResult<()> {
    let l = rt.block_on(e2e_latency(sizes))?;
    let (p50, p99, max) = (
        percentile(&l.live, 0.50),
        percentile(&l.live, 0.99),
        percentile(&l.live, 1.0),
    );
    let (b50, b99) = (percentile(&l.baseline, 0.50), percentile(&l.baseline, 0.99));
    eprintln!(
        "   {} steps at 10k/s ({} measured, {} lagged): p50 {p50:.2} ms, p99 {p99:.2} ms, \
         max {max:.2} ms; unary PublishBatch(1 step) round trip: p50 {b50:.2} ms, p99 {b99:.2} ms",
        l.published,
        l.live.len(),
        l.lagged
    );
    let slow_steps: usize = l.slow.iter().map(|m| m.steps).sum();
    eprintln!(
        "   {} messages ({slow_steps} steps) later than {SLOW_MS} ms",
        l.slow.len()
    );
    if std::env::args().any(|a| a == "--trace-slow") {
        for m in &l.slow {
            let wall = Duration::from_nanos(m.received_ns.max(0) as u64);
            eprintln!(
                "     received at unix {}.{:06}: worst {:.1} ms, {} steps from producer_seq {}",
                wall.as_secs(),
                wall.subsec_micros(),
                m.worst_ms,
                m.steps,
                m.first_seq
            );
        }
    }
    // Ratio: against the same percentile of the unary PublishBatch(1 step) round trip.
    println!(
        "BENCH e2e_latency_p50_ms {p50:.2} ms ratio={:.2}",
        p50 / b50
    );
    println!(
        "BENCH e2e_latency_p99_ms {p99:.2} ms ratio={:.2}",
        p99 / b99
    );
    Ok(())
}

fn main() -> AnyResult<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            steps: 300_000,
            paced: Duration::from_secs(3),
            round_trips: 300,
        }
    } else {
        Sizes {
            steps: 1_000_000,
            paced: Duration::from_secs(10),
            round_trips: 1000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    if !std::env::args().any(|a| a == "--latency-only") {
        eprintln!("== e2e durable ack (batches of {BATCH})");
        bench_ack(&rt, dir.path(), sizes.steps)?;
    }
    eprintln!("== e2e publish-to-subscriber latency at 10k steps/s");
    bench_latency(&rt, &sizes)?;
    Ok(())
}
