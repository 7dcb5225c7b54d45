//! Scenario `queue-full` (issue 13, scenario 5): the shim's disk queue at its byte limit while
//! the daemon is unreachable, once under each full policy, then the daemon back.
//!
//! A worker whose daemon is away long enough fills the queue; from then on its full policy
//! decides what is lost (`Block`: the caller waits, then the new record; `DropOldest`: whole
//! oldest segments; `DropNewest`: the new record), and every loss must be counted. The shim's
//! tests check each policy against a fake daemon with a queue of a few records; this file
//! exists to check them at a realistic size, through the real daemon binary and its store:
//!
//! - the queue's segment files never exceed `queue_max_bytes`, and it was full (within one
//!   segment of the limit, and records were dropped);
//! - every record offered is either stored or counted in `ShimStats::dropped`, exactly:
//!   `stored + dropped == offered`, and `accepted` + the calls refused == offered;
//! - nothing is stored twice, the shim's close is `Acked` once the daemon is back;
//! - the survivors are the ones the policy promises: `Block` all accepted records, `DropNewest`
//!   the oldest (seqs `1..=stored`), `DropOldest` the newest (the last accepted seq survives).
//!
//! `runs` = policies tried; `lost` = records neither stored nor counted as dropped.

use std::{collections::HashSet, path::Path, time::Duration};

use gym_telemetry_benches::{template, AnyResult};
use telemetry_shim::{FlushOutcome, FullPolicy, ShimConfig, Telemetry};

use super::{stored_seqs, work_dir, Daemon, Opts, Outcome, WAIT};

/// How long a blocked caller waits for room before its record is dropped.
const BLOCK_TIMEOUT: Duration = Duration::from_millis(20);
/// Calls `Block` refuses once the queue is full before the scenario moves on.
const BLOCK_REFUSALS: u64 = 50;

/// Records the shim's inbox holds between the caller and the sender.
const BUFFER_RECORDS: usize = 4096;

/// Bytes of the queue's segment files (`seg-*.log`) in `dir`.
///
/// The shim deletes segments while this runs (DropOldest evicts the head segment, an ack
/// trims it), so a file listed by `read_dir` may be gone by the time it is measured: it then
/// holds no bytes, and is not a harness error.
fn segment_bytes(dir: &Path) -> AnyResult<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("seg-") && name.ends_with(".log") {
            match e.metadata() {
                Ok(m) => n += m.len(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(n)
}

/// What one policy did.
struct Tried {
    offered: u64,
    refused_calls: u64,
    accepted: u64,
    dropped: u64,
    /// Producer seqs stored for the policy's run.
    seqs: Vec<u64>,
    broken: Vec<String>,
}

/// Fills the queue of a shim whose daemon (`d`, stopped) is away, past its limit, under
/// `policy`; then starts the daemon and closes the shim.
fn try_policy(
    d: &mut Daemon,
    token: &str,
    queue: &Path,
    run: &str,
    policy: FullPolicy,
    queue_max_bytes: u64,
) -> AnyResult<Tried> {
    let segment = queue_max_bytes / 8;
    let shim = Telemetry::new(ShimConfig {
        endpoint: d.endpoint(),
        run_id: Some(run.into()),
        agent_id: Some("chaos-agent".into()),
        queue_dir: Some(queue.to_path_buf()),
        auth_token: Some(token.into()),
        full_policy: policy,
        queue_max_bytes,
        segment_max_bytes: segment,
        max_record_bytes: 16 * 1024,
        // The inbox in front of the queue (65,536 records by default) is held to a few
        // batches, so that `Block` waits on the disk queue's limit rather than on the inbox.
        buffer_max_records: BUFFER_RECORDS,
        reconnect_max: Duration::from_millis(200),
        ..ShimConfig::default()
    })?;
    let mut broken = vec![];
    let (mut offered, mut refused_calls) = (0u64, 0u64);
    // Until the queue is within a segment of its limit, then past it: as many again as it
    // holds (Block: until BLOCK_REFUSALS calls were refused, each after its timeout). A pause
    // every 256 calls lets the sender keep up, so the drops are the disk queue's, not only
    // the inbox's. Bounded: a queue that never fills is a failure, not a hang.
    let per_record = 200u64;
    let limit = 20 * queue_max_bytes / per_record + 200_000;
    let block = matches!(policy, FullPolicy::Block { .. });
    let mut past_full: Option<u64> = None;
    let mut peak_segments = 0u64;
    loop {
        match past_full {
            Some(0) => break,
            None if offered >= limit => {
                broken.push(format!("the queue never filled in {offered} records"));
                break;
            }
            _ => {}
        }
        let mut step = template(offered);
        step.run_id = run.into();
        offered += 1;
        let ok = shim.step(step).is_ok();
        if !ok {
            refused_calls += 1;
        }
        if let Some(n) = past_full.as_mut() {
            if !block || !ok {
                *n -= 1;
            }
        }
        if offered % 256 == 0 {
            peak_segments = peak_segments.max(segment_bytes(queue)?);
            if past_full.is_none() && shim.stats().queue_bytes >= queue_max_bytes - segment {
                past_full = Some(if block {
                    BLOCK_REFUSALS
                } else {
                    queue_max_bytes / per_record
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The sender drains what the calls handed it into the queue (or drops it) before the daemon
    // is back: a flush with the daemon down says `OnDisk` once everything is on disk.
    let flushed = shim.flush(Duration::from_millis(500));
    peak_segments = peak_segments.max(segment_bytes(queue)?);
    let before = shim.stats();
    if peak_segments > queue_max_bytes {
        broken.push(format!(
            "segment files reached {peak_segments} bytes (limit {queue_max_bytes})"
        ));
    }
    d.start()?;
    let delivered = shim.flush(WAIT);
    let after = shim.stats();
    let closed = shim.close(WAIT);
    d.stop()?;
    let seqs = stored_seqs(&d.store()?, run)?;
    for (what, r) in [("flush", &delivered), ("close", &closed)] {
        match r {
            Ok(r) if r.outcome == FlushOutcome::Acked => {}
            other => broken.push(format!("{what} with the daemon back: {other:?}")),
        }
    }
    eprintln!(
        "queue-full: {policy:?}: offered {offered}, refused at the call {refused_calls}, \
         accepted {}, dropped {} (at the daemon's return {}), stored {}; queue at the fill's \
         end {} bytes (peak segment files {peak_segments}, limit {queue_max_bytes}); flush with \
         the daemon down: {:?}",
        after.accepted,
        after.dropped,
        before.dropped,
        seqs.len(),
        before.queue_bytes,
        flushed.as_ref().map(|r| r.outcome),
    );
    if after.dropped != before.dropped {
        broken.push(format!(
            "{} records dropped after the daemon came back",
            after.dropped - before.dropped
        ));
    }
    if after.accepted + refused_calls != offered {
        broken.push(format!(
            "accepted {} + refused {refused_calls} != offered {offered}",
            after.accepted
        ));
    }
    Ok(Tried {
        offered,
        refused_calls,
        accepted: after.accepted,
        dropped: after.dropped,
        seqs,
        broken,
    })
}

pub(super) fn queue_full(o: &Opts, _rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let queue_max_bytes: u64 = if o.quick { 1 << 20 } else { 16 << 20 };
    let work = work_dir(o, "queue-full")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    // Started once for its token (a worker of the same user reads it), then away.
    d.start()?;
    let token = d.token()?;
    d.stop()?;

    let policies = [
        (
            "block",
            FullPolicy::Block {
                timeout: BLOCK_TIMEOUT,
            },
        ),
        ("drop-oldest", FullPolicy::DropOldest),
        ("drop-newest", FullPolicy::DropNewest),
    ];
    let mut out = Outcome {
        name: "queue-full",
        runs: 0,
        sent: 0,
        stored: 0,
        lost: 0,
        duplicated: 0,
        broken: vec![],
    };
    for (name, policy) in policies {
        let run = format!("chaos-queue-full-{name}");
        let queue = work.path().join(format!("q-{name}"));
        let t = try_policy(&mut d, &token, &queue, &run, policy, queue_max_bytes)?;
        let distinct: HashSet<u64> = t.seqs.iter().copied().collect();
        let stored = t.seqs.len() as u64;
        let survived = distinct.len() as u64;
        let mut broken: Vec<String> = t.broken;
        if t.dropped == 0 {
            broken.push("nothing was dropped: the queue never reached its limit".into());
        }
        if survived + t.dropped != t.offered {
            broken.push(format!(
                "stored {survived} + dropped {} != offered {}",
                t.dropped, t.offered
            ));
        }
        if distinct.iter().any(|&s| s == 0 || s > t.accepted) {
            broken.push("a stored seq the shim never gave out".into());
        }
        let max = distinct.iter().copied().max().unwrap_or(0);
        let min = distinct.iter().copied().min().unwrap_or(0);
        let contiguous = max - min + 1 == survived;
        match policy {
            FullPolicy::Block { .. } if !(min == 1 && max == t.accepted && contiguous) => {
                broken.push(format!(
                    "block: stored seqs {min}..={max} ({survived}), not every accepted 1..={}",
                    t.accepted
                ));
            }
            FullPolicy::DropNewest if !(min == 1 && contiguous) => {
                broken.push(format!(
                    "drop-newest: stored seqs {min}..={max} ({survived}), not the oldest"
                ));
            }
            FullPolicy::DropOldest if max != t.accepted || min <= 1 => {
                broken.push(format!(
                    "drop-oldest: stored seqs {min}..={max}, not the newest of 1..={}",
                    t.accepted
                ));
            }
            _ => {}
        }
        // DropOldest makes room by dropping the inbox's oldest record; when every record of
        // the inbox is already with the sender (taken, not yet in the disk queue: a loaded
        // machine makes that window long), there is nothing older to drop and the call is
        // refused, counted in `dropped` like any drop. So refusals are allowed here, and the
        // accounting checks above (accepted + refused == offered, stored + dropped == offered)
        // still hold them to the count; seen in CI with both cores busy (9,955 of 53,882 calls).
        if t.refused_calls > 0 && matches!(policy, FullPolicy::DropOldest) {
            eprintln!(
                "queue-full: drop-oldest refused {} calls while the whole inbox was with the sender",
                t.refused_calls
            );
        }
        out.runs += 1;
        out.sent += t.offered;
        out.stored += stored;
        out.lost += t.offered.saturating_sub(survived + t.dropped);
        out.duplicated += stored - survived;
        out.broken
            .extend(broken.into_iter().map(|b| format!("{name}: {b}")));
    }
    Ok(out)
}
