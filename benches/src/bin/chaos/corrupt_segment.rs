//! Scenario 7, `corrupt-segment`: a shim queue left undelivered is damaged on disk, then
//! delivered by the command the proxy tells users to run.
//!
//! Disks rot and machines crash mid-write; the queue's CRC framing must confine the damage
//! and, as important, say how much was lost *in records*: a byte count tells a user nothing
//! about the telemetry that is gone. Per run: a shim with a queue dir and small segments
//! accepts records while the daemon is down and closes (`OnDisk`); the harness flips one byte
//! in a frame in the middle of a random segment (not the last) and truncates the last
//! segment's final frame mid-frame; with the daemon up, `gym-telemetry-proxy --queue-dir Q
//! --input /dev/null` delivers the queue. The damaged region is known exactly from the frames
//! the harness parsed before damaging them: from the flipped frame to the end of its segment
//! (a cut segment loses its tail), and the torn frame.
//!
//! Promise: the proxy exits 0; every record outside the damaged region is stored exactly once
//! (`lost` counts those missing); none inside it is stored; and the proxy's summary line
//! reports `lost_to_corruption=` exactly the number of missing seqs. `runs` = damaged queues.

use std::{
    collections::HashSet,
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use gym_telemetry_benches::{template, AnyResult};
use telemetry_shim::{FlushOutcome, FullPolicy, ShimConfig, Telemetry};

use super::{stored_seqs, wait_child, work_dir, Daemon, Opts, Outcome, WAIT};

/// One frame of a segment file: where it starts, its length, its producer seq.
struct Frame {
    offset: usize,
    len: usize,
    seq: u64,
}

/// The frames of a segment the harness just had the queue write (length walk; the format is
/// the queue's: `len u32 LE | crc u32 LE | seq u64 LE | record`).
fn frames(bytes: &[u8]) -> AnyResult<Vec<Frame>> {
    let mut out = Vec::new();
    let mut p = 0usize;
    while p < bytes.len() {
        let field = |at: usize, n: usize| {
            bytes
                .get(at..at + n)
                .ok_or_else(|| format!("a frame at {p} runs past the segment's end"))
        };
        let l = field(p, 4)?;
        let payload = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let s = field(p + 8, 8)?;
        let seq = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        field(p + 8, payload)?;
        out.push(Frame {
            offset: p,
            len: 8 + payload,
            seq,
        });
        p += 8 + payload;
    }
    Ok(out)
}

fn segments(dir: &Path) -> AnyResult<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Damages the queue in `dir`; returns the seqs destroyed with the damage.
fn damage(dir: &Path, rng: &mut fastrand::Rng) -> AnyResult<HashSet<u64>> {
    let segs = segments(dir)?;
    if segs.len() < 3 {
        return Err(format!("only {} segments to damage", segs.len()).into());
    }
    let mut gone = HashSet::new();
    // A byte in the record part of a frame in the middle of a middle segment: that frame and
    // the rest of its segment are cut off.
    let k = rng.usize(0..segs.len() - 1);
    let mut bytes = std::fs::read(&segs[k])?;
    let fr = frames(&bytes)?;
    let f = if fr.len() > 1 {
        rng.usize(1..fr.len())
    } else {
        0
    };
    let (hit, in_segment) = (&fr[f], fr.len());
    let at = hit.offset + 16 + rng.usize(0..hit.len - 16);
    bytes[at] ^= 1 << rng.u8(0..8);
    std::fs::write(&segs[k], &bytes)?;
    gone.extend(fr[f..].iter().map(|x| x.seq));
    let hit_seq = hit.seq;
    // The final frame of the last segment torn.
    let last = &segs[segs.len() - 1];
    let bytes = std::fs::read(last)?;
    let fr = frames(&bytes)?;
    let tail = fr.last().ok_or("the last segment is empty")?;
    let cut = tail.offset + rng.usize(1..tail.len);
    File::options()
        .write(true)
        .open(last)?
        .set_len(cut as u64)?;
    gone.insert(tail.seq);
    eprintln!(
        "corrupt-segment: flipped byte {at} of {} (frame {f} of {}, seq {}); cut {} at {cut} (seq {}); {} seqs destroyed",
        segs[k].display(),
        in_segment,
        hit_seq,
        last.display(),
        tail.seq,
        gone.len()
    );
    Ok(gone)
}

pub(crate) fn corrupt_segment(o: &Opts, rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let (runs, n) = if o.quick {
        (2u64, 3_000u64)
    } else {
        (6, 20_000)
    };
    let work = work_dir(o, "corrupt-segment")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    // The daemon is down while the queues fill: start it once to make its token, then stop.
    d.start()?;
    let token = d.token()?;
    d.stop()?;
    let mut queues = vec![];
    for r in 0..runs {
        let run = format!("chaos-corrupt-{r}");
        let queue = work.path().join(format!("q{r}"));
        let shim = Telemetry::new(ShimConfig {
            endpoint: d.endpoint(),
            run_id: Some(run.clone()),
            agent_id: Some("chaos-agent".into()),
            queue_dir: Some(queue.clone()),
            auth_token: Some(token.clone()),
            full_policy: FullPolicy::Block { timeout: WAIT },
            segment_max_bytes: 16 << 10,
            max_record_bytes: 8 << 10,
            ..ShimConfig::default()
        })?;
        for i in 0..n {
            let mut s = template(i);
            s.run_id = run.clone();
            shim.step(s)?;
        }
        let closed = shim.close(Duration::from_millis(300))?;
        if closed.outcome != FlushOutcome::OnDisk || closed.pending_records != n {
            return Err(format!("the undelivered queue: {closed:?}").into());
        }
        let gone = damage(&queue, rng)?;
        queues.push((run, queue, gone));
    }
    d.start()?;
    let mut broken = vec![];
    let (mut stored_total, mut lost_total, mut dup_total) = (0, 0, 0);
    for (run, queue, gone) in &queues {
        let log = queue.with_extension("proxy.log");
        let mut proxy = Command::new(o.bin_dir.join("gym-telemetry-proxy"))
            .arg("--queue-dir")
            .arg(queue)
            .args(["--input", "/dev/null", "--run-id", run])
            .args(["--endpoint", &d.endpoint(), "--flush-timeout-secs", "60"])
            .env("GYM_TELEMETRY_AUTH_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()?;
        let status = wait_child(&mut proxy, WAIT)?;
        if status.is_none() {
            let _ = proxy.kill();
        }
        let text = std::fs::read_to_string(&log)?;
        if status.map(|s| s.code()) != Some(Some(0)) {
            broken.push(format!("{run}: proxy exit {status:?}: {text}"));
        }
        let reported: Option<u64> = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("lost_to_corruption="))
            .and_then(|v| v.trim_end_matches(';').parse().ok());
        let seqs = stored_seqs(&d.store()?, run)?;
        let distinct: HashSet<u64> = seqs.iter().copied().collect();
        let missing: HashSet<u64> = (1..=n).filter(|s| !distinct.contains(s)).collect();
        let lost = missing.difference(gone).count() as u64;
        let resurrected = distinct.intersection(gone).count();
        let dup = (seqs.len() - distinct.len()) as u64;
        eprintln!(
            "corrupt-segment: {run}: stored {} of {n}, missing {} (destroyed {}), reported lost_to_corruption={reported:?}",
            distinct.len(),
            missing.len(),
            gone.len()
        );
        if reported != Some(missing.len() as u64) {
            broken.push(format!(
                "{run}: {} seqs missing but the proxy reported lost_to_corruption={reported:?}",
                missing.len()
            ));
        }
        if resurrected > 0 {
            broken.push(format!(
                "{run}: {resurrected} seqs of the damaged region were stored"
            ));
        }
        stored_total += seqs.len() as u64;
        lost_total += lost;
        dup_total += dup;
    }
    d.stop()?;
    Ok(Outcome {
        name: "corrupt-segment",
        runs,
        sent: runs * n,
        stored: stored_total,
        lost: lost_total,
        duplicated: dup_total,
        broken,
    })
}
