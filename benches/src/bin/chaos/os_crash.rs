//! Scenario 8, `os-crash`: machine crashes (OS crash, power loss) under a shim queue, for each
//! fsync policy.
//!
//! A killed worker loses nothing its queue wrote; a crashed machine keeps only what was synced,
//! and that difference is what the fsync policy is about. A real power cut cannot be staged on
//! loopback, so the harness uses the shim's `fault-injection` feature: the queue reports each
//! sync, and `fault_injection::crash_image` rebuilds the directory as a crash would leave it
//! (segments cut to their synced length, half the time plus a random part of the unsynced
//! bytes, torn frames included; the last synced `state.json`).
//!
//! One lineage of queue dirs per policy (`EveryBatch`, `Interval(200 ms)`, `Never`), one
//! producer id throughout, the real daemon. Per crash:
//! 1. records A go through with the daemon up (unsynced under `Interval`/`Never`);
//! 2. the daemon is SIGKILLed, records B are accepted and flushed: `OnDisk`, which syncs;
//! 3. the daemon is back, records C go out (sent before their sync under `Interval`/`Never`)
//!    until the daemon has acked a quarter of them, and at once the worker "crashes"
//!    (`Telemetry::abandon`, the queue dropped unsynced) and the machine with it (the crash
//!    image);
//! 4. a new shim on the image, records D, close.
//!
//! Promise (what the policy documents): A and B are stored (acked, or synced by the flush);
//! under `EveryBatch` nothing the queue had written was unsynced at the crash and the lost C
//! records are only the newest (those still in the shim's memory); D are all stored: a
//! reopened queue never reuses a seq the daemon may hold (else they are dropped as
//! duplicates); no record stored twice (acked records whose `state.json` update was not
//! synced come back and the daemon counts them as duplicates). Records are identified by
//! their content (episode and step index), not their seq. `runs` = crashes; `sent` = records
//! promised (A, B, D, and C where the policy keeps it); C records the crash took are printed
//! on stderr.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use gym_telemetry_benches::{template, AnyResult};
use telemetry_shim::{
    disk_queue::fault_injection, FlushOutcome, FsyncPolicy, FullPolicy, ShimConfig, Telemetry,
};
use telemetry_store::Filter;

use super::{work_dir, Daemon, Opts, Outcome, WAIT};

/// Records per phase of one crash.
const PHASE: u64 = 1_000;

fn shim(
    d: &Daemon,
    token: &str,
    run: &str,
    queue: &Path,
    fsync: FsyncPolicy,
) -> AnyResult<Telemetry> {
    Ok(Telemetry::new(ShimConfig {
        endpoint: d.endpoint(),
        run_id: Some(run.into()),
        agent_id: Some("chaos-agent".into()),
        queue_dir: Some(queue.to_path_buf()),
        auth_token: Some(token.into()),
        full_policy: FullPolicy::Block { timeout: WAIT },
        fsync,
        // Default segments (16 MiB): a segment is rarely deleted, so `state.json` is rarely
        // synced and an acked watermark is rarely durable: the widest seq-reuse window.
        reconnect_max: Duration::from_millis(200),
        ..ShimConfig::default()
    })?)
}

fn produce(t: &Telemetry, run: &str, ids: std::ops::Range<u64>) -> AnyResult<()> {
    for i in ids {
        let mut s = template(i);
        s.run_id = run.into();
        t.step(s)?;
    }
    Ok(())
}

/// How many times each record (by its content id, `template`'s `i`) is stored for `run`.
fn stored_ids(d: &Daemon, run: &str) -> AnyResult<HashMap<u64, u64>> {
    let store = d.store()?;
    let mut ids = HashMap::new();
    for s in store.stream_steps_since(0, &Filter::run(run)) {
        let s = s?;
        *ids.entry(s.episode_index * 500 + s.step_index).or_default() += 1;
    }
    Ok(ids)
}

/// One policy's lineage of crashes; returns (promised, stored, lost, duplicated, taken by the
/// crash) and appends broken promises.
fn lineage(
    d: &mut Daemon,
    token: &str,
    root: &Path,
    fsync: FsyncPolicy,
    crashes: u64,
    rng: &mut fastrand::Rng,
    broken: &mut Vec<String>,
) -> AnyResult<(u64, u64, u64, u64, u64)> {
    let name = match fsync {
        FsyncPolicy::EveryBatch => "every-batch",
        FsyncPolicy::Interval(_) => "interval",
        FsyncPolicy::Never => "never",
    };
    let run = format!("chaos-os-crash-{name}");
    let mut dir: PathBuf = root.join(format!("{name}-0"));
    fault_injection::watch(&dir)?;
    let mut next = 0u64;
    // Content ids that must be stored exactly once, and those a crash may take (C).
    let mut promised: Vec<u64> = vec![];
    let mut at_risk: Vec<Vec<u64>> = vec![];
    for k in 0..crashes {
        let t = shim(d, token, &run, &dir, fsync)?;
        let a = next..next + PHASE;
        produce(&t, &run, a.clone())?;
        // Let some of A reach the daemon before it dies.
        let half = t.stats().accepted / 2;
        let deadline = std::time::Instant::now() + WAIT;
        while t.stats().acked < half && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        d.kill()?;
        let b = a.end..a.end + PHASE;
        produce(&t, &run, b.clone())?;
        let r = t.flush(Duration::from_millis(200))?;
        if r.outcome != FlushOutcome::OnDisk {
            broken.push(format!(
                "{name} crash {k}: flush with the daemon down: {r:?}"
            ));
        }
        d.start()?;
        let before_c = t.stats().accepted;
        // C goes out until the daemon holds a quarter of it (under Interval/Never: sent before
        // its sync), then the crash strikes at once, with the rest in flight.
        let target = before_c + PHASE / 4;
        let mut c = b.end..b.end;
        while c.end < b.end + PHASE * 4 {
            produce(&t, &run, c.end..c.end + 10)?;
            c.end += 10;
            if t.stats().acked >= target {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        t.abandon();
        let image_dir = root.join(format!("{name}-{}", k + 1));
        let seed = rng.bool().then(|| rng.u64(..));
        let image = fault_injection::crash_image(&dir, &image_dir, seed)?;
        fault_injection::unwatch(&dir);
        eprintln!(
            "os-crash: {name} crash {k}: image segments={} synced={} B unsynced={} B kept_unsynced={} B (torn: {})",
            image.segments,
            image.synced_bytes,
            image.unsynced_bytes,
            image.kept_unsynced_bytes,
            seed.is_some()
        );
        if fsync == FsyncPolicy::EveryBatch && image.unsynced_bytes > 0 {
            broken.push(format!(
                "{name} crash {k}: {} B written but not synced at a batch boundary",
                image.unsynced_bytes
            ));
        }
        dir = image_dir;
        fault_injection::watch(&dir)?;
        promised.extend(a.clone());
        promised.extend(b.clone());
        at_risk.push(c.clone().collect());
        next = c.end;
        let t = shim(d, token, &run, &dir, fsync)?;
        let dd = next..next + PHASE;
        produce(&t, &run, dd.clone())?;
        promised.extend(dd.clone());
        next = dd.end;
        let r = t.close(WAIT)?;
        if r.outcome != FlushOutcome::Acked {
            broken.push(format!("{name} crash {k}: close after the crash: {r:?}"));
        }
    }
    fault_injection::unwatch(&dir);
    let ids = stored_ids(d, &run)?;
    let mut lost = 0;
    let mut duplicated: u64 = ids.values().map(|&n| n.saturating_sub(1)).sum();
    for id in &promised {
        if !ids.contains_key(id) {
            lost += 1;
        }
    }
    let mut taken = 0;
    let mut promised_n = promised.len() as u64;
    for (k, c) in at_risk.iter().enumerate() {
        let missing: Vec<u64> = c
            .iter()
            .copied()
            .filter(|id| !ids.contains_key(id))
            .collect();
        taken += missing.len() as u64;
        if fsync == FsyncPolicy::EveryBatch {
            // Only the newest may be gone (still in the shim's memory at the crash).
            if let Some(&first) = missing.first() {
                let after: Vec<u64> = c.iter().copied().filter(|&id| id > first).collect();
                if after.iter().any(|id| ids.contains_key(id)) {
                    broken.push(format!(
                        "{name} crash {k}: record {first} lost though later ones survived"
                    ));
                }
            }
            promised_n += (c.len() - missing.len()) as u64;
        } else {
            promised_n += (c.len() - missing.len()) as u64;
        }
    }
    if ids.keys().any(|id| *id >= next) {
        broken.push(format!("{name}: records stored that were never produced"));
        duplicated += 1;
    }
    let stored: u64 = ids.values().sum();
    eprintln!(
        "os-crash: {name}: crashes={crashes} promised={promised_n} stored={stored} lost={lost} duplicated={duplicated} taken_by_crashes={taken}"
    );
    Ok((promised_n, stored, lost, duplicated, taken))
}

pub(crate) fn os_crash(o: &Opts, rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let crashes = if o.quick { 2 } else { 6 };
    let work = work_dir(o, "os-crash")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    d.start()?;
    let token = d.token()?;
    let mut broken = vec![];
    let mut total = (0, 0, 0, 0);
    let policies = [
        FsyncPolicy::EveryBatch,
        FsyncPolicy::Interval(Duration::from_millis(200)),
        FsyncPolicy::Never,
    ];
    for fsync in policies {
        let (p, s, l, dup, _taken) = lineage(
            &mut d,
            &token,
            work.path(),
            fsync,
            crashes,
            rng,
            &mut broken,
        )?;
        total = (total.0 + p, total.1 + s, total.2 + l, total.3 + dup);
    }
    d.stop()?;
    Ok(Outcome {
        name: "os-crash",
        runs: crashes * policies.len() as u64,
        sent: total.0,
        stored: total.1,
        lost: total.2,
        duplicated: total.3,
        broken,
    })
}
