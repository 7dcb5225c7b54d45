//! Scenario `viewer-stall` (issue 13, scenario 4): a live viewer that stops reading for a long
//! time while a worker keeps ingesting.
//!
//! The daemon must never wait for a viewer: each subscriber has a bounded hub queue that drops
//! its oldest records and tells the subscriber how many (`Lagged`) before its next record.
//! This file exists to check that promise end to end on the real daemon binary, over gRPC, as
//! `telemetry-viewer` follows a run (`Query.StreamRunSteps`, `follow`), which the hub's unit
//! tests and `e2e_ingest_query.rs` only check in-process and briefly:
//!
//! - the ingest rate (records acked per second, the shim offered [`RATE`]) while the viewer
//!   stalls is at least [`MIN_RATE_RATIO`] of the rate measured in the same run before the
//!   viewer subscribed;
//! - the daemon's resident memory (`VmRSS`) stays flat during the stall: it grows by at most
//!   [`RSS_GROWTH_BOUND`] from the start of the stall to its end (a queue that kept
//!   everything would grow with every record ingested, printed for comparison);
//! - the viewer is told exactly what it missed: steps received + `Lagged.dropped_steps` ==
//!   steps stored after its resume point, with no `Gap`, and the stream ends with the run's
//!   `RunCompleted`.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use gym_telemetry_benches::{template, AnyResult};
use telemetry_core::pb::{
    query_client::QueryClient, stream_notice::Kind as Notice, CompletionStatus, Record,
    RunCompleted, StreamRequest,
};
use telemetry_shim::{FlushOutcome, Telemetry};
use telemetry_store::Filter;
use tonic::metadata::{Ascii, MetadataValue};

use super::{shim, stored_seqs, tally, work_dir, Daemon, Opts, Outcome, WAIT};

/// The ingest rate during the stall, as a share of the rate without a viewer, below which the
/// viewer is taken to slow ingest down.
const MIN_RATE_RATIO: f64 = 0.7;
/// The daemon's `VmRSS` may grow by at most this much from the start of the stall to its end.
/// What a stalled viewer may hold in the daemon: its hub queue (4096 records, ~1.3 MiB of
/// these steps), 16 stream messages of up to 512 steps (~2.5 MiB), and what HTTP/2 flow
/// control lets the daemon write ahead (the client's 2 MiB stream window): ~6 MiB, the rest
/// is allocator slack. The daemon's other memory (SQLite's page caches, the hub's per-run ring
/// of 1 MiB) is bounded by its configuration and reached before the stall. A queue that kept
/// every record would grow by the figure printed next to it (90 MiB in a full run).
const RSS_GROWTH_BOUND: u64 = 16 << 20;

const RUN: &str = "chaos-viewer-stall";
/// Steps per second offered to the shim (a debug daemon on 2 cores keeps up with it).
const RATE: f64 = 5000.0;

/// What the viewer saw.
#[derive(Debug, Default)]
struct Seen {
    received: u64,
    lagged: u64,
    lagged_notices: u64,
    gaps: u64,
    completed: bool,
}

/// The daemon's resident set, in bytes, from `/proc/<pid>/status`.
pub(super) fn vm_rss(pid: u32) -> AnyResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line in /proc/<pid>/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// The viewer: follows `RUN` from `since`, reads until `CaughtUp`, says so on `live`, reads
/// nothing more until `resume` (the fault), then reads everything to the end of the stream.
async fn viewer(
    endpoint: String,
    token: String,
    since: u64,
    live: mpsc::Sender<()>,
    resume: tokio::sync::oneshot::Receiver<()>,
) -> AnyResult<Seen> {
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
    let channel = tonic::transport::Endpoint::from_shared(endpoint)?
        .connect()
        .await?;
    let mut query = QueryClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let mut stream = query
        .stream_run_steps(StreamRequest {
            run_id: RUN.into(),
            since_seq: since,
            follow: true,
            // What telemetry-viewer asks for (`app/pane.rs`): at most 512 steps per 50 ms.
            min_interval_ms: 50,
            max_batch: 512,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut seen = Seen::default();
    let mut resume = Some(resume);
    loop {
        let Some(msg) = tokio::time::timeout(WAIT, stream.message()).await?? else {
            break;
        };
        seen.received += msg.steps.len() as u64;
        match msg.notice.and_then(|n| n.kind) {
            Some(Notice::CaughtUp(_)) => {
                if let Some(r) = resume.take() {
                    let _ = live.send(());
                    // The fault: the stream is not read until the harness says so.
                    tokio::time::timeout(WAIT, r).await??;
                }
            }
            Some(Notice::Lagged(l)) => {
                seen.lagged += l.dropped_steps;
                seen.lagged_notices += 1;
            }
            Some(Notice::Gap(_)) => seen.gaps += 1,
            Some(Notice::RunCompleted(_)) => seen.completed = true,
            _ => {}
        }
    }
    Ok(seen)
}

/// Acked records per second over a window.
fn rate(from: (Instant, u64), to: (Instant, u64)) -> f64 {
    let secs = to.0.duration_since(from.0).as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        to.1.saturating_sub(from.1) as f64 / secs
    }
}

pub(super) fn viewer_stall(o: &Opts, _rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let (warm_up, baseline, stall) = if o.quick {
        (
            Duration::from_millis(500),
            Duration::from_millis(1500),
            Duration::from_secs(6),
        )
    } else {
        (
            Duration::from_secs(2),
            Duration::from_secs(15),
            Duration::from_secs(60),
        )
    };
    let work = work_dir(o, "viewer-stall")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    d.start()?;
    let token = d.token()?;
    let pid = d.child.as_ref().map(|c| c.id()).ok_or("no daemon child")?;

    // Paced: on 2 cores an unpaced producer takes a core from the daemon, and the shim's
    // sender then spends its time spilling to the disk queue instead of sending; the promise
    // is about the daemon keeping the rate it is offered.
    let s = Arc::new(shim(&d.endpoint(), RUN, &work.path().join("q"), &token)?);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || {
            let start = Instant::now();
            let (mut sent, mut refused) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let mut step = template(sent);
                step.run_id = RUN.into();
                if s.step(step).is_err() {
                    refused += 1;
                }
                sent += 1;
                if sent % 50 == 0 {
                    let due = Duration::from_secs_f64(sent as f64 / RATE);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            (sent, refused)
        })
    };
    let mark = || (Instant::now(), s.stats().acked);

    // The rate with no viewer.
    std::thread::sleep(warm_up);
    let b0 = mark();
    std::thread::sleep(baseline);
    let b1 = mark();

    // The viewer subscribes from what is stored now, reads up to `CaughtUp`, then stalls.
    let since = d.store()?.last_seqs()?.steps;
    let (live_tx, live_rx) = mpsc::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let view = rt.spawn(viewer(d.endpoint(), token, since, live_tx, resume_rx));
    live_rx
        .recv_timeout(WAIT)
        .map_err(|e| format!("the viewer never caught up: {e}"))?;

    // The stall: the ingest rate and the daemon's memory, sampled until it ends.
    let stall_start = Instant::now();
    let settle = Duration::from_secs(1).min(stall / 3);
    let mut rss = Vec::new();
    let mut s0 = None;
    while stall_start.elapsed() < stall {
        if s0.is_none() && stall_start.elapsed() >= settle {
            s0 = Some(mark());
        }
        rss.push(vm_rss(pid)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let s1 = mark();
    let s0 = s0.ok_or("the stall was too short to measure")?;
    let _ = resume_tx.send(());

    stop.store(true, Ordering::Relaxed);
    let (steps, refused) = producer.join().map_err(|_| "producer panicked")?;
    let completed = s.run_completed(RunCompleted {
        run_id: RUN.into(),
        status: CompletionStatus::Succeeded as i32,
        ..Default::default()
    });
    let shim: Telemetry = Arc::try_unwrap(s).map_err(|_| "shim still shared")?;
    let closed = shim.close(WAIT);
    let seen = rt.block_on(view)??;
    d.stop()?;

    let store = d.store()?;
    let after_since = store
        .stream_steps_since(since, &Filter::run(RUN))
        .try_fold(0u64, |n, s| s.map(|_| n + 1))?;
    let sent = steps + 1; // the steps and the run's completion
    let (stored, lost, duplicated) = tally(&stored_seqs(&store, RUN)?, sent);

    let (base_rate, stall_rate) = (rate(b0, b1), rate(s0, s1));
    let ratio = if base_rate > 0.0 {
        stall_rate / base_rate
    } else {
        0.0
    };
    let rss_first = rss.first().copied().unwrap_or(0);
    let rss_max = rss.iter().copied().max().unwrap_or(0);
    let growth = rss_max.saturating_sub(rss_first);
    // What a queue that kept every record would have held (the hub's own measure of a record).
    let footprint = telemetry_hub::record_footprint(&Record::from(template(0))) as u64;
    let stall_bytes = s1.1.saturating_sub(s0.1) * footprint;
    eprintln!(
        "viewer-stall: rate without viewer {base_rate:.0}/s, while stalled {stall_rate:.0}/s, \
         ratio {ratio:.2} (>= {MIN_RATE_RATIO}); daemon VmRSS {:.1} -> max {:.1} MiB, growth \
         {:.1} MiB (bound {} MiB) while {:.1} MiB of records (hub footprint) were ingested; viewer received \
         {} + missed {} (in {} Lagged notices) of {after_since} stored after seq {since}, gaps {}",
        mib(rss_first),
        mib(rss_max),
        mib(growth),
        RSS_GROWTH_BOUND >> 20,
        mib(stall_bytes),
        seen.received,
        seen.lagged,
        seen.lagged_notices,
        seen.gaps,
    );

    let mut broken = vec![];
    if ratio < MIN_RATE_RATIO {
        broken.push(format!(
            "ingest slowed by the stalled viewer: ratio {ratio:.2} < {MIN_RATE_RATIO}"
        ));
    }
    if growth > RSS_GROWTH_BOUND {
        broken.push(format!(
            "daemon memory grew {:.1} MiB during the stall (bound {} MiB)",
            mib(growth),
            RSS_GROWTH_BOUND >> 20
        ));
    }
    if seen.received + seen.lagged != after_since {
        broken.push(format!(
            "viewer accounting: received {} + missed {} != stored {after_since}",
            seen.received, seen.lagged
        ));
    }
    if seen.lagged == 0 {
        broken.push("the viewer never fell behind: the stall tested nothing".into());
    }
    if seen.gaps > 0 {
        broken.push(format!("{} gaps (uncounted losses) reported", seen.gaps));
    }
    if !seen.completed {
        broken.push("the viewer's stream ended without RunCompleted".into());
    }
    if let Err(e) = completed {
        broken.push(format!("run_completed refused: {e}"));
    }
    match &closed {
        Ok(r) if r.outcome == FlushOutcome::Acked => {}
        other => broken.push(format!("shim close: {other:?}")),
    }
    if refused > 0 {
        broken.push(format!("{refused} steps refused by the shim"));
    }
    Ok(Outcome {
        name: "viewer-stall",
        runs: 1,
        sent,
        stored,
        lost,
        duplicated,
        broken,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}
