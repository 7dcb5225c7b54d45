//! Scenario `wal-bounded` (issue 13, scenario 9): a long-lived reader under ingest must not
//! grow the store's WAL.
//!
//! In WAL mode SQLite cannot copy back, or restart, the frames newer than the oldest open read
//! transaction's snapshot; a viewer that held one for as long as it reads would grow the
//! `-wal` file without bound. The store reads in keyset pages, each its own short read
//! transaction, and the server checkpoints on its own thread (`telemetry-server`'s
//! `checkpointer.rs`: `PASSIVE` every `checkpoint_interval`, 500 ms, then `TRUNCATE` when no
//! reader is in the WAL; the writer's automatic checkpoint is off). This file exists to check
//! that on the real daemon binary with the reader that lasts longest in practice: a viewer
//! that follows a run from its start (catch-up from the store) and reads slowly, so it stays
//! in catch-up for the whole phase while a shim keeps ingesting.
//!
//! The bound follows from those settings: the WAL only grows between two checkpoints, so with
//! no reader pinning it its size is what about one interval of commits writes. That is
//! measured in the same run, with the same ingest and no reader (`peak without reader`, the
//! file's high-water mark). A checkpoint that meets a page read in progress cannot restart the
//! log, which then grows on to the next one; the promise allows three such misses in a row:
//! `peak with the reader <= 4 x that + 1 MiB`, and at most `journal_size_limit` (64 MiB). A
//! held snapshot grows the WAL by one interval's worth every interval, without end.
//! To show the bound can be broken, a third phase pins a snapshot (a read transaction held
//! open in this process, what a reader without short transactions would do) and the WAL must
//! then cross it; otherwise the check could not have told, and the scenario fails.
//!
//! The slow viewer is also held to exact accounting: steps received + `Lagged` == stored, and
//! no `Gap`. `runs` = 1 (the reader); `sent` / `stored` / `lost` / `duplicated` count the
//! ingested records.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use gym_telemetry_benches::{template, AnyResult};
use telemetry_core::pb::{
    query_client::QueryClient, stream_notice::Kind as Notice, CompletionStatus, RunCompleted,
    StreamRequest,
};
use telemetry_shim::{FlushOutcome, Telemetry};
use telemetry_store::{Filter, StoreConfig};
use tonic::metadata::{Ascii, MetadataValue};

use super::{shim, stored_seqs, tally, work_dir, Daemon, Opts, Outcome, WAIT};

const RUN: &str = "chaos-wal-bounded";
/// Steps per second offered to the shim.
const RATE: f64 = 5000.0;
/// `StoreConfig::journal_size_limit` of the daemon's store.
const JOURNAL_SIZE_LIMIT: u64 = 64 << 20;
/// The slow viewer: this many steps per message, one message per [`READ_PAUSE`] (~2,000
/// steps/s, well under [`RATE`], so it never catches up while ingest goes on).
const READ_BATCH: u32 = 512;
const READ_PAUSE: Duration = Duration::from_millis(250);
/// How often the WAL's size is sampled.
const SAMPLE: Duration = Duration::from_millis(20);

/// What the slow viewer saw.
#[derive(Debug, Default)]
struct Seen {
    received: u64,
    lagged: u64,
    gaps: u64,
    /// `CaughtUp` came while it was still reading slowly.
    caught_up: bool,
    completed: bool,
}

/// Follows `RUN` from seq 0, one message per [`READ_PAUSE`] until `fast` is set, then as fast
/// as it can to the end of the stream.
async fn slow_viewer(endpoint: String, token: String, fast: Arc<AtomicBool>) -> AnyResult<Seen> {
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
    // HTTP/2's own default windows (64 KiB) rather than the client library's 2 MiB: the
    // reader's transport then holds a few hundred steps, not thousands, and cannot swallow
    // the stored past in one go (the quick run's past is small).
    let channel = tonic::transport::Endpoint::from_shared(endpoint)?
        .initial_stream_window_size(Some(64 * 1024))
        .initial_connection_window_size(Some(64 * 1024))
        .connect()
        .await?;
    let mut query = QueryClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let mut stream = query
        .stream_run_steps(StreamRequest {
            run_id: RUN.into(),
            since_seq: 0,
            follow: true,
            max_batch: READ_BATCH,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut seen = Seen::default();
    while let Some(msg) = tokio::time::timeout(WAIT, stream.message()).await?? {
        seen.received += msg.steps.len() as u64;
        match msg.notice.and_then(|n| n.kind) {
            Some(Notice::CaughtUp(_)) => seen.caught_up |= !fast.load(Ordering::Relaxed),
            Some(Notice::Lagged(l)) => seen.lagged += l.dropped_steps,
            Some(Notice::Gap(_)) => seen.gaps += 1,
            Some(Notice::RunCompleted(_)) => seen.completed = true,
            _ => {}
        }
        if !fast.load(Ordering::Relaxed) {
            // The slow reader is the scenario: a bounded pause per message.
            tokio::time::sleep(READ_PAUSE).await;
        }
    }
    Ok(seen)
}

fn wal_path(var: &Path) -> PathBuf {
    let db = StoreConfig::in_var_dir(var).path;
    let mut wal = db.into_os_string();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// The WAL's size now (0 when it does not exist: truncated and removed, or not made yet).
fn wal_size(wal: &Path) -> AnyResult<u64> {
    match std::fs::metadata(wal) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The largest WAL size sampled over `phase`, stopping early once it passes `stop_above`.
fn peak_wal(wal: &Path, phase: Duration, stop_above: u64) -> AnyResult<(u64, Duration)> {
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < phase {
        peak = peak.max(wal_size(wal)?);
        if peak > stop_above {
            break;
        }
        std::thread::sleep(SAMPLE);
    }
    Ok((peak, start.elapsed()))
}

pub(super) fn wal_bounded(o: &Opts, _rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let (baseline, reading, pinned) = if o.quick {
        (
            Duration::from_secs(3),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
    } else {
        (
            Duration::from_secs(15),
            Duration::from_secs(90),
            Duration::from_secs(30),
        )
    };
    let work = work_dir(o, "wal-bounded")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    d.start()?;
    let token = d.token()?;
    let wal = wal_path(&d.var);

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

    // 1. No reader: what the checkpointer holds the WAL to.
    let (peak_a, _) = peak_wal(&wal, baseline, u64::MAX)?;
    let bound = (4 * peak_a + (1 << 20)).min(JOURNAL_SIZE_LIMIT);

    // 2. The slow viewer, from the start of the run, in catch-up all along.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let fast = Arc::new(AtomicBool::new(false));
    let view = rt.spawn(slow_viewer(d.endpoint(), token, Arc::clone(&fast)));
    let (peak_b, _) = peak_wal(&wal, reading, u64::MAX)?;

    // 3. A pinned snapshot: the WAL must cross the bound, or the check could not tell.
    let (peak_c, pinned_for) = {
        let pin = rusqlite::Connection::open_with_flags(
            StoreConfig::in_var_dir(&d.var).path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        pin.execute_batch("BEGIN")?;
        let _: Option<i64> = pin.query_row("SELECT max(seq) FROM steps", [], |r| r.get(0))?;
        let peak = peak_wal(&wal, pinned, bound)?;
        pin.execute_batch("COMMIT")?;
        peak
    };

    // The end: the viewer reads the rest at full speed, the run completes.
    fast.store(true, Ordering::Relaxed);
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
    let stored_steps = store
        .stream_steps_since(0, &Filter::run(RUN))
        .try_fold(0u64, |n, s| s.map(|_| n + 1))?;
    let sent = steps + 1; // the steps and the run's completion
    let (stored, lost, duplicated) = tally(&stored_seqs(&store, RUN)?, sent);

    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    eprintln!(
        "wal-bounded: WAL peak without reader {:.2} MiB, with the slow viewer {:.2} MiB over \
         {:.0} s (bound {:.2} MiB), with a pinned snapshot {:.2} MiB after {:.1} s; viewer \
         received {} + missed {} of {stored_steps} stored (caught up while slow: {}), gaps \
         {}",
        mib(peak_a),
        mib(peak_b),
        reading.as_secs_f64(),
        mib(bound),
        mib(peak_c),
        pinned_for.as_secs_f64(),
        seen.received,
        seen.lagged,
        seen.caught_up,
        seen.gaps,
    );

    let mut broken = vec![];
    if peak_b > bound {
        broken.push(format!(
            "the WAL reached {:.2} MiB under the slow viewer (bound {:.2} MiB)",
            mib(peak_b),
            mib(bound)
        ));
    }
    if peak_c <= bound {
        broken.push(format!(
            "a pinned snapshot kept the WAL at {:.2} MiB, under the bound: the check could not \
             tell a held read transaction",
            mib(peak_c)
        ));
    }
    if seen.received + seen.lagged != stored_steps {
        broken.push(format!(
            "viewer accounting: received {} + missed {} != stored {stored_steps}",
            seen.received, seen.lagged
        ));
    }
    if seen.caught_up {
        broken.push("the slow viewer caught up: it was not a long catch-up read".into());
    }
    if seen.gaps > 0 {
        broken.push(format!("{} gaps reported to the viewer", seen.gaps));
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
        name: "wal-bounded",
        runs: 1,
        sent,
        stored,
        lost,
        duplicated,
        broken,
    })
}
