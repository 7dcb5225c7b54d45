//! Whole daemons on one PostgreSQL (issue 20's figures), in process over loopback gRPC, each
//! against a baseline measured in the same run:
//!
//! - `pg_e2e_two_daemons`: 4 producers (one `Publish` stream and connection each, batches of
//!   1,024 steps, 2 in flight) split over two daemons on one schema, steps/s from the first send
//!   to the last durable ack. Ratio: against `pg_e2e_one_daemon`, the same 4 producers on one
//!   daemon of a fresh schema.
//! - `sqlite_e2e_saturation`: the same 4 producers on one daemon on its embedded SQLite, i.e.
//!   where one daemon saturates on this machine (4 streams are past the knee: e2e_bench's
//!   1-stream and 4-stream figures are within 10%). Ratio: PostgreSQL with two daemons ÷ this.
//! - `pg_cross_daemon_latency_p50_ms` / `_p99_ms`: a worker publishing 100 steps every 10 ms
//!   (10k steps/s) to daemon B while a viewer follows `Query.StreamRunSteps` on daemon A; each
//!   step carries its send time; latency = receive - send (one process, one clock). Ratio:
//!   against the same percentile with the worker and the viewer on one daemon of the same
//!   store (the cost of crossing daemons: NOTIFY, the follower's keyset read). Goal: p99 ≤ 100 ms.
//!
//! Everything shares this machine's cores with PostgreSQL itself (`fsync=off` on the throwaway
//! cluster): these are CPU and protocol costs, not disk. Needs GYM_TELEMETRY_TEST_PG
//! (scripts/bench.sh starts a cluster when it is unset). `--quick`: fewer steps, 3 s paced.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use gym_telemetry_benches::{
    e2e::{connect, daemon, now_ns, percentile, publish_stream, small_step, BATCH, WAIT},
    rate, AnyError, AnyResult,
};
use telemetry_core::{
    pb::{
        ingest_client::IngestClient, query_client::QueryClient, stream_notice::Kind as Notice,
        CompletionStatus, IngestBatch, RunCompleted, StreamRequest,
    },
    timestamp::to_unix_nanos,
};
use telemetry_server::{Backend, ServerHandle};
use telemetry_store_pg::{testing, PgBackend, PgConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const PRODUCERS: usize = 4;
const IN_FLIGHT: usize = 2;
const PACE_STEPS: u64 = 100;
const PACE_EVERY: Duration = Duration::from_millis(10);

/// A daemon on `var_dir` and the PostgreSQL store of `pg`.
async fn pg_daemon(var_dir: &Path, pg: &PgConfig) -> AnyResult<ServerHandle> {
    let backend: Arc<dyn Backend> = Arc::new(PgBackend::new(pg.clone())?);
    daemon(var_dir, Some(backend)).await
}

/// `PRODUCERS` producers spread round-robin over `daemons`; `total` steps in all. Returns the
/// rate from the first send to the last ack.
async fn ingest(daemons: &[ServerHandle], total: u64) -> AnyResult<f64> {
    let per = total / BATCH as u64 / PRODUCERS as u64;
    let mut channels = Vec::new();
    for p in 0..PRODUCERS {
        channels.push(connect(&daemons[p % daemons.len()]).await?);
    }
    // Warm-up (not timed): connections up, the run registered.
    for (p, c) in channels.iter().enumerate() {
        publish_stream(
            IngestClient::new(c.clone()),
            format!("warm-{p}"),
            1,
            IN_FLIGHT,
        )
        .await?;
    }
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .into_iter()
        .enumerate()
        .map(|(p, c)| {
            tokio::spawn(publish_stream(
                IngestClient::new(c),
                format!("producer-{p}"),
                per,
                IN_FLIGHT,
            ))
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        stored += t.await??;
    }
    Ok(rate(stored, started.elapsed()))
}

async fn pg_ingest(url: &str, n_daemons: usize, total: u64) -> AnyResult<f64> {
    let pg = testing::fresh_config(url, "e2e");
    let dirs: Vec<_> = (0..n_daemons)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut daemons = Vec::new();
    for d in &dirs {
        daemons.push(pg_daemon(d.path(), &pg).await?);
    }
    let r = ingest(&daemons, total).await?;
    for d in daemons {
        d.shutdown().await?;
    }
    Ok(r)
}

async fn sqlite_ingest(total: u64) -> AnyResult<f64> {
    let dir = tempfile::tempdir()?;
    let d = daemon(dir.path(), None).await?;
    let r = ingest(std::slice::from_ref(&d), total).await?;
    d.shutdown().await?;
    Ok(r)
}

// ---------------------------------------------------------------- latency

/// 100 steps every 10 ms on one `Publish` stream for `ticks` ticks, then the completion.
async fn paced(channel: Channel, run: String, ticks: u64) -> AnyResult<u64> {
    let producer = format!("paced-{run}");
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel::<IngestBatch>(8);
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
                small_step(&run, &producer, seq, sent)
            })
            .collect();
        tx.send(IngestBatch {
            batch_id: t + 1,
            records,
        })
        .await
        .map_err(|_| "the paced stream closed")?;
    }
    let done = RunCompleted {
        run_id: run.clone(),
        status: CompletionStatus::Succeeded as i32,
        producer_id: format!("paced-{run}"),
        producer_seq: seq + 1,
        ..Default::default()
    };
    tx.send(IngestBatch {
        batch_id: ticks + 1,
        records: vec![done.into()],
    })
    .await
    .map_err(|_| "the paced stream closed")?;
    drop(tx);
    let stored = drain.await??;
    if stored != seq + 1 {
        return Err(format!("paced: {stored} of {} stored", seq + 1).into());
    }
    Ok(seq)
}

/// Sorted per-step latencies (ms) of `run` published to `worker_side`, viewed on `viewer_side`.
async fn latency(
    worker_side: &ServerHandle,
    viewer_side: &ServerHandle,
    run: &str,
    ticks: u64,
) -> AnyResult<Vec<f64>> {
    let mut query = QueryClient::new(connect(viewer_side).await?);
    let mut stream = query
        .stream_run_steps(StreamRequest {
            run_id: run.into(),
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
        if matches!(msg.notice.and_then(|n| n.kind), Some(Notice::CaughtUp(_))) {
            break;
        }
    }
    let publisher = tokio::spawn(paced(connect(worker_side).await?, run.to_owned(), ticks));
    let warm_up = 20 * PACE_STEPS;
    let (mut live, mut received, mut lagged, mut completed) = (Vec::new(), 0u64, 0u64, false);
    while let Some(msg) = tokio::time::timeout(WAIT, stream.message()).await?? {
        let now = now_ns();
        for s in &msg.steps {
            received += 1;
            if s.producer_seq > warm_up {
                let sent = s.timestamp.as_ref().map_or(now, to_unix_nanos);
                live.push((now - sent) as f64 / 1e6);
            }
        }
        match msg.notice.and_then(|n| n.kind) {
            Some(Notice::Lagged(l)) => lagged += l.dropped_steps,
            Some(Notice::RunCompleted(_)) => completed = true,
            _ => {}
        }
    }
    let published = publisher.await??;
    if !completed || received + lagged != published || lagged != 0 {
        return Err(format!(
            "{run}: completed={completed}, received {received} + lagged {lagged} of {published}"
        )
        .into());
    }
    live.sort_by(f64::total_cmp);
    Ok(live)
}

fn main() -> AnyResult<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let Ok(url) = std::env::var(testing::TEST_URL_VAR) else {
        return Err(format!("{} is unset", testing::TEST_URL_VAR).into());
    };
    let total: u64 = if quick { 160 * 1024 } else { 800 * 1024 };
    let paced_for = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    eprintln!("== whole daemons: {PRODUCERS} producers, batches of {BATCH}, {total} steps");
    // ABBA over (one PG daemon, two PG daemons), best of two; SQLite twice, best of two.
    let (mut one, mut two, mut sqlite) = (0f64, 0f64, 0f64);
    for round in 0..4 {
        if round == 0 || round == 3 {
            one = one.max(rt.block_on(pg_ingest(&url, 1, total))?);
            sqlite = sqlite.max(rt.block_on(sqlite_ingest(total))?);
        } else {
            two = two.max(rt.block_on(pg_ingest(&url, 2, total))?);
        }
    }
    eprintln!(
        "   one PG daemon {one:.0}/s, two PG daemons {two:.0}/s, one SQLite daemon {sqlite:.0}/s"
    );
    println!("BENCH pg_e2e_one_daemon {one:.0} steps/s ratio=1.00");
    println!(
        "BENCH pg_e2e_two_daemons {two:.0} steps/s ratio={:.2}",
        two / one
    );
    println!(
        "BENCH sqlite_e2e_saturation {sqlite:.0} steps/s ratio={:.2}",
        two / sqlite
    );

    eprintln!("== live latency at 10k steps/s: worker -> B, viewer on A (vs both on A)");
    let ticks = (paced_for.as_nanos() / PACE_EVERY.as_nanos()) as u64;
    let (cross, same) = rt.block_on(async {
        let pg = testing::fresh_config(&url, "lat");
        let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let a = pg_daemon(da.path(), &pg).await?;
        let b = pg_daemon(db.path(), &pg).await?;
        let same = latency(&a, &a, "same-daemon", ticks).await?;
        let cross = latency(&b, &a, "cross-daemon", ticks).await?;
        a.shutdown().await?;
        b.shutdown().await?;
        Ok::<_, AnyError>((cross, same))
    })?;
    let (c50, c99, cmax) = (
        percentile(&cross, 0.5),
        percentile(&cross, 0.99),
        percentile(&cross, 1.0),
    );
    let (s50, s99) = (percentile(&same, 0.5), percentile(&same, 0.99));
    eprintln!(
        "   cross-daemon: p50 {c50:.2} ms, p99 {c99:.2} ms, max {cmax:.2} ms ({} steps); \
         same daemon: p50 {s50:.2} ms, p99 {s99:.2} ms",
        cross.len()
    );
    println!(
        "BENCH pg_cross_daemon_latency_p50_ms {c50:.2} ms ratio={:.2}",
        c50 / s50
    );
    println!(
        "BENCH pg_cross_daemon_latency_p99_ms {c99:.2} ms ratio={:.2}",
        c99 / s99
    );
    Ok(())
}
