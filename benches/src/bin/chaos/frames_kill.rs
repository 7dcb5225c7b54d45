//! Scenario 10, `frames-kill`: a worker capturing frames while its daemon is SIGKILLed and
//! restarted mid-stream.
//!
//! Frames have their own path (`telemetry_shim::FrameSender`: raw buffer, PNG on the sender
//! thread, pending bytes in memory, then a spill directory; `Frames.Publish` acked batch by
//! batch; the daemon's frame store syncs segment bytes before it commits the index). A kill
//! can land anywhere in that path: a batch written to a segment but not indexed, indexed but
//! not acked, frames spilled while the daemon is away. Per run: a `FrameSender` with a spill
//! directory and a small in-memory budget (so every outage spills) captures paced frames whose
//! pixels encode their (episode, step); the real daemon is SIGKILLed and restarted `runs`
//! times at random capture counts. Then the sender flushes and closes, the daemon stops, and
//! the harness opens the frame store itself and reads every frame back.
//!
//! The capturer never runs more than half the raw budget ahead of the encoder (a worker
//! slower than its encoder, as most are), so the budgets are sized for the outages and not for
//! how fast the machine encodes.
//!
//! Promise: every captured frame (nothing may be dropped: the budgets are sized for the
//! outages) is in the index exactly once (`duplicated` = index rows beyond one per key) with
//! its own pixels (`lost` = frames missing or with other pixels); the flush succeeds, the spill
//! directory ends empty, the spill path was used (or the check is void), and the daemon
//! rejected nothing. `sent` = frames captured.

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use gym_telemetry_benches::AnyResult;
use telemetry_core::frames::FrameKey;
use telemetry_frames::{FrameStore, FrameStoreOptions, Lookup};
use telemetry_shim::{
    frames::{FrameFullPolicy, FrameOptions},
    FrameSender, ShimConfig,
};

use super::{kill_at, work_dir, Daemon, Opts, Outcome, WAIT};

const RUN: &str = "chaos-frames";
const AGENT: &str = "chaos-frames-agent";
const WIDTH: u32 = 160;
const HEIGHT: u32 = 120;
/// Steps per episode.
const EPISODE: u64 = 100;
/// The sender's budget of raw frames waiting for the encoder (~1,100 frames).
const MAX_RAW_BYTES: usize = 64 << 20;

/// The pixels of frame `i` (episode `i / EPISODE`, step `i % EPISODE`): a gradient that
/// compresses like a render, shifted by the frame's index so no two frames are alike.
fn pixels(i: u64) -> Vec<u8> {
    let (w, h) = (WIDTH as u64, HEIGHT as u64);
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            out.push((x + i) as u8);
            out.push((y + i / 256) as u8);
            out.push(((x ^ y) + i * 7) as u8);
        }
    }
    out
}

fn key(i: u64) -> FrameKey {
    FrameKey {
        run_id: RUN.into(),
        agent_id: AGENT.into(),
        episode_index: i / EPISODE,
        step_index: i % EPISODE,
    }
}

pub(crate) fn frames_kill(o: &Opts, rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let (n, kills, over) = if o.quick {
        (1_500u64, 3usize, Duration::from_secs(6))
    } else {
        (10_000, 10, Duration::from_secs(40))
    };
    let work = work_dir(o, "frames-kill")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    d.start()?;
    let token = d.token()?;
    let spill_dir = work.path().join("frames-spill");
    let config = ShimConfig {
        endpoint: d.endpoint(),
        run_id: Some(RUN.into()),
        agent_id: Some(AGENT.into()),
        auth_token: Some(token),
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(300),
        ..ShimConfig::default()
    };
    let sender = Arc::new(FrameSender::new(
        &config,
        FrameOptions {
            // Raw frames wait for the encoder only: 64 MiB is ~1,100 of them, far more than
            // the encoder falls behind by. Encoded frames beyond 256 KiB (~a dozen) spill, so
            // every outage goes through the spill files.
            max_raw_bytes: MAX_RAW_BYTES,
            full_policy: FrameFullPolicy::DropNewest,
            max_pending_bytes: 256 << 10,
            spill_dir: Some(spill_dir.clone()),
            max_spill_bytes: 1 << 30,
            ..FrameOptions::default()
        },
    )?);

    let capturer = {
        let s = Arc::clone(&sender);
        std::thread::spawn(move || -> u64 {
            let start = std::time::Instant::now();
            let mut refused = 0;
            for i in 0..n {
                let r = s.capture(
                    None,
                    i / EPISODE,
                    i % EPISODE,
                    WIDTH,
                    HEIGHT,
                    pixels(i),
                    50.0,
                );
                if r.is_err() {
                    refused += 1;
                }
                // A worker no faster than its encoder: the scenario is about kills, not about
                // whether PNG encoding (a debug build here, on 2 shared cores) keeps up with
                // 250 fps. Past half the raw budget, wait for the encoder (bounded: if it
                // stalls for good, the refusals that follow fail the check).
                let backlog_until = std::time::Instant::now() + WAIT;
                while s.stats().raw_bytes > (MAX_RAW_BYTES / 2) as u64
                    && std::time::Instant::now() < backlog_until
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let due = over.mul_f64(i as f64 / n as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            refused
        })
    };
    let mut points: Vec<u64> = (0..kills).map(|_| rng.u64(n / 20..n * 19 / 20)).collect();
    points.sort_unstable();
    let watched = Arc::clone(&sender);
    kill_at(
        &mut d,
        || watched.stats().captured,
        &points,
        rng,
        Duration::from_millis(1500),
        || Ok(()),
    )?;
    drop(watched);
    let refused = capturer.join().map_err(|_| "capture thread panicked")?;
    let flushed = sender.flush(WAIT);
    let sender = Arc::try_unwrap(sender).map_err(|_| "frame sender still shared")?;
    let stats = sender.close(Duration::from_secs(5));
    d.stop()?;

    // Count what the store holds, reading it as the daemon would after a restart.
    let store = FrameStore::open(
        &telemetry_frames::frames_dir(&d.var),
        FrameStoreOptions::default(),
    )?;
    let mut lost = 0u64;
    let mut wrong_pixels = 0u64;
    for i in 0..n {
        match store.get(&key(i))? {
            Lookup::Found(f) => {
                let rgb = telemetry_frames::codec::decode_png(&f.data, 1 << 20)?;
                if (rgb.width, rgb.height) != (WIDTH, HEIGHT) || rgb.pixels != pixels(i) {
                    wrong_pixels += 1;
                    lost += 1;
                }
            }
            Lookup::Missing(_) => lost += 1,
        }
    }
    let (rows, distinct) = index_rows(&d.var)?;
    let duplicated = rows - distinct;
    let segments = store.verify()?;

    let mut broken = vec![];
    if refused > 0 || stats.dropped > 0 || stats.refused > 0 {
        broken.push(format!(
            "{refused} captures refused, {} frames dropped, {} refused by the sender",
            stats.dropped, stats.refused
        ));
    }
    if !flushed {
        broken.push(format!("flush did not finish: {stats:?}"));
    }
    if stats.rejected > 0 {
        broken.push(format!("the daemon rejected {} frames", stats.rejected));
    }
    if stats.spilled == 0 {
        broken.push("no frame was spilled: the spill path was not exercised".into());
    }
    let left = std::fs::read_dir(&spill_dir)?.count();
    if left > 0 {
        broken.push(format!("{left} spill files left after the flush"));
    }
    if wrong_pixels > 0 {
        broken.push(format!("{wrong_pixels} frames stored with other pixels"));
    }
    eprintln!(
        "frames-kill: daemon starts={} kill points={points:?}; captured={} encoded={} sent={} \
         stored-acked={} duplicates-acked={} spilled={} reconnects={}; index rows={rows}; \
         segments: {} good records, {} corrupt, {} torn tail bytes (unindexed bytes a kill left)",
        d.starts,
        stats.captured,
        stats.encoded,
        stats.sent,
        stats.stored,
        stats.duplicates,
        stats.spilled,
        stats.reconnects,
        segments.good,
        segments.corrupt,
        segments.torn_tail_bytes,
    );
    Ok(Outcome {
        name: "frames-kill",
        runs: kills as u64,
        sent: n,
        stored: rows,
        lost,
        duplicated,
        broken,
    })
}

/// Index rows of the run, and distinct keys among them (the index's UNIQUE constraint should
/// make them equal; counted anyway, since that constraint is what the promise rests on).
fn index_rows(var: &Path) -> AnyResult<(u64, u64)> {
    let db = rusqlite::Connection::open_with_flags(
        telemetry_frames::frames_dir(var).join("index.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut q = db.prepare("SELECT agent_id, episode, step FROM frames WHERE run_id = ?1")?;
    let mut rows = 0u64;
    let mut keys = HashSet::new();
    for r in q.query_map([RUN], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        rows += 1;
        keys.insert(r?);
    }
    Ok((rows, keys.len() as u64))
}
