//! Benchmarks of telemetry-hub, each against a baseline measured in the same process.
//!
//! The hub does more than a broadcast channel (per-run rings, seq chains for gap detection,
//! per-subscriber filters, exact per-kind drop accounting); these figures show what it costs:
//!
//! - `hub_fanout_s{1,8,64}`: events/s published and delivered to every one of 1, 8 or 64
//!   subscribers, against `tokio::sync::broadcast` doing the same fan-out with the same queue
//!   capacity (1024). The publisher keeps at most 1024 events outstanding behind its slowest
//!   consumer, so neither side drops: both are measured lossless, end to end (a channel that
//!   drops is not faster). Goal: ratio >= 0.8.
//! - `hub_runs_256`: the same total events spread over 256 concurrent runs (one subscriber
//!   each) on one hub, against one run with one subscriber.
//! - `hub_stalled_rss`: RSS after 10M events (quick: 2M) into a run with one subscriber that
//!   never reads, against RSS after the first 1M. Goal: ratio <= 1.1 (memory is bounded).
//!
//! Records are small steps built in the timed loop for hub and baseline alike. The hub gets
//! them through `publish_batch` (256 at a time; 16 per run in the many-runs part), as the
//! daemon publishes each committed batch; broadcast has no batch send. The runtime has 2
//! worker threads.
//! `--quick` keeps each part well under a minute.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use telemetry_core::pb::{Record, RunStep};
use telemetry_hub::{Delivery, Hub, HubConfig, NoCatchUp, StreamKind, SubscribeOptions};
use tokio::{runtime::Runtime, sync::broadcast, task::JoinSet};

const QUEUE: usize = 1024;
/// Events published at once (one committed batch).
const BATCH: u64 = 256;
/// Events the publisher may be ahead of its slowest consumer before a batch, so that at most
/// `QUEUE` are ever outstanding.
const WINDOW: u64 = QUEUE as u64 - BATCH;
/// Records per batch of one run in the many-runs part.
const RUN_BATCH: u64 = 16;

fn step(run_id: &str, seq: u64) -> Record {
    RunStep {
        run_id: run_id.to_owned(),
        episode_index: seq / 500,
        step_index: seq % 500,
        reward: 1.0,
        seq_id: seq,
        ..Default::default()
    }
    .into()
}

fn hub() -> Hub {
    let config = HubConfig {
        subscriber_queue: QUEUE,
        ..Default::default()
    };
    Hub::new(config, Arc::new(NoCatchUp))
}

/// How far each consumer has got (delivered + reported lost), for the publisher's window.
type Progress = Arc<Vec<AtomicU64>>;

fn progress(subs: usize) -> Progress {
    Arc::new((0..subs).map(|_| AtomicU64::new(0)).collect())
}

/// Waits until no consumer is more than `WINDOW` events behind `published`, so that neither
/// side ever drops: both are measured lossless, at the pace of their slowest consumer.
async fn wait_for_window(progress: &Progress, published: u64) {
    loop {
        let slowest = progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(published);
        if published - slowest <= WINDOW {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Receives until `n` events are delivered or reported lost; returns (delivered, lost).
async fn drain_hub(
    mut sub: telemetry_hub::Subscription,
    n: u64,
    progress: Progress,
    me: usize,
) -> (u64, u64) {
    let (mut got, mut lost) = (0, 0);
    while got + lost < n {
        match sub.next().await {
            Some(Delivery::Records(rs)) => got += rs.len() as u64,
            Some(Delivery::Lagged {
                dropped_steps,
                dropped_episodes,
                dropped_lifecycle,
                dropped_scalars,
            }) => lost += dropped_steps + dropped_episodes + dropped_lifecycle + dropped_scalars,
            Some(_) => {}
            None => break,
        }
        progress[me].store(got + lost, Ordering::Release);
    }
    (got, lost)
}

async fn drain_broadcast(
    mut rx: broadcast::Receiver<Arc<Record>>,
    n: u64,
    progress: Progress,
    me: usize,
) -> (u64, u64) {
    let (mut got, mut lost) = (0, 0);
    while got + lost < n {
        match rx.recv().await {
            Ok(_) => got += 1,
            Err(broadcast::error::RecvError::Lagged(k)) => lost += k,
            Err(broadcast::error::RecvError::Closed) => break,
        }
        progress[me].store(got + lost, Ordering::Release);
    }
    (got, lost)
}

/// Events/s (delivered to every subscriber) and the delivered fraction of a fan-out to
/// `subs` subscribers through the hub.
fn fanout_hub(rt: &Runtime, subs: usize, n: u64) -> (f64, f64) {
    rt.block_on(async {
        let hub = hub();
        let progress = progress(subs);
        let mut set = JoinSet::new();
        for me in 0..subs {
            let sub = hub.subscribe(SubscribeOptions::run("bench", StreamKind::Steps));
            set.spawn(drain_hub(sub, n, Arc::clone(&progress), me));
        }
        let start = Instant::now();
        let publisher = hub.clone();
        set.spawn(async move {
            // The daemon publishes each committed batch at once.
            let mut seq = 1;
            while seq <= n {
                wait_for_window(&progress, seq - 1).await;
                let end = (seq + BATCH).min(n + 1);
                publisher.publish_batch((seq..end).map(|s| step("bench", s)));
                seq = end;
            }
            (0, 0)
        });
        let (got, lost) = join_all(&mut set).await;
        let rate = got as f64 / subs as f64 / start.elapsed().as_secs_f64();
        hub.shutdown().await;
        (rate, got as f64 / (got + lost).max(1) as f64)
    })
}

fn fanout_broadcast(rt: &Runtime, subs: usize, n: u64) -> (f64, f64) {
    rt.block_on(async {
        let (tx, _) = broadcast::channel::<Arc<Record>>(QUEUE);
        let progress = progress(subs);
        let mut set = JoinSet::new();
        for me in 0..subs {
            set.spawn(drain_broadcast(
                tx.subscribe(),
                n,
                Arc::clone(&progress),
                me,
            ));
        }
        let start = Instant::now();
        set.spawn(async move {
            let mut seq = 1;
            while seq <= n {
                wait_for_window(&progress, seq - 1).await;
                let end = (seq + BATCH).min(n + 1);
                for s in seq..end {
                    let _ = tx.send(Arc::new(step("bench", s)));
                }
                seq = end;
            }
            (0, 0)
        });
        let (got, lost) = join_all(&mut set).await;
        let rate = got as f64 / subs as f64 / start.elapsed().as_secs_f64();
        (rate, got as f64 / (got + lost).max(1) as f64)
    })
}

async fn join_all(set: &mut JoinSet<(u64, u64)>) -> (u64, u64) {
    let (mut got, mut lost) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r {
            Ok((g, l)) => {
                got += g;
                lost += l;
            }
            Err(e) => eprintln!("bench task failed: {e}"),
        }
    }
    (got, lost)
}

/// Events/s publishing `n` events over `runs` runs, one subscriber per run, lossless (the
/// same window as the fan-out part, per run).
fn runs_hub(rt: &Runtime, runs: usize, n: u64) -> f64 {
    rt.block_on(async {
        let hub = hub();
        let ids: Vec<String> = (0..runs).map(|i| format!("run-{i:03}")).collect();
        let per_run = n / runs as u64;
        let progress = progress(runs);
        let mut set = JoinSet::new();
        for (me, id) in ids.iter().enumerate() {
            let sub = hub.subscribe(SubscribeOptions::run(id.clone(), StreamKind::Steps));
            set.spawn(drain_hub(sub, per_run, Arc::clone(&progress), me));
        }
        let start = Instant::now();
        let publisher = hub.clone();
        set.spawn(async move {
            // Each run's worker sends batches of RUN_BATCH; the batches of all runs
            // interleave (seqs are global per stream, as in the store).
            let mut seq = 1;
            let mut sent = 0;
            while sent < per_run {
                wait_for_window(&progress, sent).await;
                let k = RUN_BATCH.min(per_run - sent);
                for (i, run) in ids.iter().enumerate() {
                    publisher.publish_batch((seq..seq + k).map(|s| step(run, s)));
                    seq += k;
                    if (i + 1) % (BATCH / RUN_BATCH) as usize == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                sent += k;
                tokio::task::yield_now().await;
            }
            (0, 0)
        });
        let (got, _) = join_all(&mut set).await;
        let rate = got as f64 / start.elapsed().as_secs_f64();
        hub.shutdown().await;
        rate
    })
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// (RSS after the first 1M events, RSS at the end) with one stalled subscriber.
fn stalled_rss(rt: &Runtime, n: u64) -> (f64, f64) {
    let _guard = rt.enter();
    let hub = hub();
    let stalled = hub.subscribe(SubscribeOptions::run("bench", StreamKind::Steps));
    let mut after_first = 0.0;
    let mut seq = 1;
    while seq <= n {
        let end = (seq + BATCH).min(n + 1);
        hub.publish_batch((seq..end).map(|s| step("bench", s)));
        if seq <= 1_000_000 && end > 1_000_000 {
            after_first = rss_mib();
        }
        seq = end;
    }
    let end = rss_mib();
    let m = hub.metrics();
    let s = m.subscribers.iter().find(|s| s.id == stalled.id());
    eprintln!(
        "  stalled subscriber: queue {} / dropped {}; ring {} records {} bytes",
        s.map_or(0, |s| s.queue_depth),
        s.map_or(0, |s| s.dropped_steps_total),
        m.ring_records,
        m.ring_bytes
    );
    (after_first, end)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only fanout|fanout1|fanout8|fanout64|runs|rss` runs one part (for profiling).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub_bench: cannot start a tokio runtime: {e}");
            std::process::exit(1);
        }
    };

    if part("rss") {
        // First, while the process is small: later parts leave freed memory in the allocator.
        let n = if quick { 2_000_000 } else { 10_000_000 };
        let start = Instant::now();
        let (first, end) = stalled_rss(&rt, n);
        eprintln!(
            "  {n} events with a stalled subscriber in {:.1?}: RSS {first:.1} MiB after 1M, {end:.1} MiB at the end",
            start.elapsed()
        );
        println!(
            "BENCH hub_stalled_rss {end:.1} MiB ratio={:.3}",
            end / first.max(f64::MIN_POSITIVE)
        );
    }

    for (subs, n_full, n_quick) in [
        (1usize, 10_000_000u64, 2_000_000u64),
        (8, 4_000_000, 1_000_000),
        (64, 1_000_000, 200_000),
    ] {
        if !part("fanout") && !part(&format!("fanout{subs}")) {
            continue;
        }
        let n = if quick { n_quick } else { n_full };
        // Warm-up, then alternate (best of 5 each) to spread machine noise over both sides.
        let _ = fanout_hub(&rt, subs, n / 10);
        let _ = fanout_broadcast(&rt, subs, n / 10);
        let (mut hub_best, mut bc_best, mut hub_frac, mut bc_frac) = (0f64, 0f64, 0f64, 0f64);
        for _ in 0..5 {
            let (r, f) = fanout_hub(&rt, subs, n);
            if r > hub_best {
                (hub_best, hub_frac) = (r, f);
            }
            let (r, f) = fanout_broadcast(&rt, subs, n);
            if r > bc_best {
                (bc_best, bc_frac) = (r, f);
            }
        }
        eprintln!(
            "  s{subs}: hub {hub_best:.0} ev/s ({:.1}% delivered), broadcast {bc_best:.0} ev/s ({:.1}% delivered)",
            hub_frac * 100.0,
            bc_frac * 100.0
        );
        println!(
            "BENCH hub_fanout_s{subs} {hub_best:.0} events/s ratio={:.2}",
            hub_best / bc_best
        );
    }

    if !part("runs") {
        return;
    }
    let n = if quick { 2_048_000 } else { 8_192_000 };
    let _ = runs_hub(&rt, 256, n / 10);
    let (mut many, mut one) = (0f64, 0f64);
    for _ in 0..5 {
        many = many.max(runs_hub(&rt, 256, n));
        one = one.max(runs_hub(&rt, 1, n));
    }
    eprintln!("  256 runs {many:.0} ev/s, 1 run {one:.0} ev/s");
    println!(
        "BENCH hub_runs_256 {many:.0} events/s ratio={:.2}",
        many / one
    );
}
