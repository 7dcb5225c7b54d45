//! Scenario 6, `disk-full`: the store's disk and then the shim queue's disk run out of space
//! while records keep coming, and come back.
//!
//! A full disk is the one fault the other scenarios cannot reach: every write path (SQLite's
//! WAL and checkpoints, the queue's segments and `state.json`) meets `ENOSPC` at a point of its
//! own. The harness makes each disk small on purpose: a tmpfs of its own (`mount -t tmpfs -o
//! size=...`, so it needs root, or `CAP_SYS_ADMIN`; without it the scenario is reported SKIPPED
//! and the harness exits 2, "cannot run"), unmounted at the end and on every error path.
//!
//! - (a) the daemon's var dir (the store) on a tmpfs. Per cycle: records acked, then a filler
//!   file takes every free byte, records go on until the shim sees the daemon fail (the store
//!   cannot commit), more go on while it is full, then the filler is deleted and records go
//!   on. The shim's own queue is on the work disk, `Block` policy (lossless). Promise: the
//!   daemon never exits, the close is `Acked` (service resumed), every accepted seq is stored
//!   exactly once.
//! - (b) the shim's queue dir on a tmpfs, the daemon fine. Per cycle: a filler takes the free
//!   space, records go on until the shim reports `ENOSPC` from its queue, records go on (the
//!   inbox fills; `DropNewest` refuses the rest), then space returns, alternately by deleting
//!   the filler and by `mount -o remount,size=` to a larger size. Promise: every refused call
//!   is counted in `ShimStats::dropped` (exactly), refusals take no seq, every accepted seq is
//!   stored exactly once, the close is `Acked`.
//!
//! `runs` = fill-and-free cycles over both parts; `sent` = records the shims accepted (the
//! refused ones are printed on stderr).

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use gym_telemetry_benches::{template, AnyResult};
use nix::{
    errno::Errno,
    mount::{mount, umount2, MntFlags, MsFlags},
};
use telemetry_shim::{FlushOutcome, FullPolicy, ShimConfig, ShimError, Telemetry};

use super::{stored_seqs, tally, work_dir, Daemon, Opts, Outcome, Skipped, WAIT};

/// Why a tmpfs could not be mounted or resized.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TmpfsError {
    /// Mounting is not allowed here (not root, no `CAP_SYS_ADMIN`, a container without it).
    #[error("mounting a tmpfs at {dir} is not permitted ({errno}); run as root")]
    NotPermitted { dir: PathBuf, errno: Errno },
    /// Any other failure of mount(2).
    #[error("mount -t tmpfs {dir}: {errno}")]
    Mount { dir: PathBuf, errno: Errno },
}

/// A tmpfs of the harness at `dir`, unmounted when dropped (also on every error path).
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs, TmpfsError> {
        let data = format!("size={bytes},mode=0700");
        match mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        ) {
            Ok(()) => Ok(Tmpfs {
                dir: dir.to_owned(),
            }),
            Err(errno @ (Errno::EPERM | Errno::EACCES)) => Err(TmpfsError::NotPermitted {
                dir: dir.to_owned(),
                errno,
            }),
            Err(errno) => Err(TmpfsError::Mount {
                dir: dir.to_owned(),
                errno,
            }),
        }
    }

    /// `mount -o remount,size=bytes`.
    pub(crate) fn resize(&self, bytes: u64) -> Result<(), TmpfsError> {
        let data = format!("size={bytes}");
        mount(
            None::<&str>,
            &self.dir,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|errno| TmpfsError::Mount {
            dir: self.dir.clone(),
            errno,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file still open (a daemon being reaped) cannot keep the mount alive.
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            eprintln!("chaos: umount {}: {e}", self.dir.display());
        }
    }
}

/// Mounts, turning "not permitted" into a skip of the scenario.
fn tmpfs(dir: &Path, bytes: u64) -> AnyResult<Tmpfs> {
    std::fs::create_dir_all(dir)?;
    match Tmpfs::mount(dir, bytes) {
        Ok(t) => Ok(t),
        Err(e @ TmpfsError::NotPermitted { .. }) => Err(Box::new(Skipped(e.to_string()))),
        Err(e) => Err(e.into()),
    }
}

/// Writes a file in `dir` until the file system refuses (`ENOSPC`); returns its path and size.
fn fill(dir: &Path) -> AnyResult<(PathBuf, u64)> {
    let path = dir.join("filler");
    let mut f = File::create(&path)?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => return Err(format!("filling {}: {e}", path.display()).into()),
        }
        if written > 1 << 30 {
            return Err("the filler passed 1 GiB: not a small tmpfs".into());
        }
    }
    // Small writes may still fit in the last partial page.
    for _ in 0..64 {
        if f.write(&[0x5a; 512]).is_err() {
            break;
        }
    }
    if written < 256 << 10 {
        return Err(format!(
            "{} had only {written} B free: the tmpfs is too small for the scenario",
            dir.display()
        )
        .into());
    }
    Ok((path, written))
}

fn libc_enospc() -> i32 {
    Errno::ENOSPC as i32
}

/// Waits (bounded) until `cond` holds, producing a step between checks with `step`.
fn until(
    what: &str,
    mut step: impl FnMut() -> AnyResult<()>,
    mut cond: impl FnMut() -> AnyResult<bool>,
) -> AnyResult<()> {
    let deadline = Instant::now() + WAIT;
    while !cond()? {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        step()?;
    }
    Ok(())
}

fn daemon_alive(d: &mut Daemon, broken: &mut Vec<String>, when: &str) -> AnyResult<()> {
    if let Some(c) = d.child.as_mut() {
        if let Some(status) = c.try_wait()? {
            broken.push(format!("the daemon exited {when}: {status}"));
            d.child = None;
        }
    }
    Ok(())
}

/// Part (a): the store's disk.
fn store_full(o: &Opts, cycles: u64, per: u64, work: &Path) -> AnyResult<(Outcome, String)> {
    let var = work.join("var");
    // Room for every record of the scenario (~360 B a row with indexes and WAL), so the
    // filler, not the store's own data, is what fills it.
    let fs = tmpfs(&var, (16 << 20) + cycles * 3 * per * 1024)?;
    let mut d = Daemon::new(&o.bin_dir, work)?;
    d.var = var.clone();
    d.start()?;
    let token = d.token()?;
    let run = "chaos-disk-full-store";
    let shim = Telemetry::new(ShimConfig {
        endpoint: d.endpoint(),
        run_id: Some(run.into()),
        agent_id: Some("chaos-agent".into()),
        queue_dir: Some(work.join("q-store")),
        auth_token: Some(token),
        full_policy: FullPolicy::Block { timeout: WAIT },
        reconnect_max: Duration::from_millis(200),
        ..ShimConfig::default()
    })?;
    let mut i = 0u64;
    let mut step = |shim: &Telemetry| -> AnyResult<()> {
        let mut s = template(i);
        s.run_id = run.into();
        i += 1;
        Ok(shim.step(s)?)
    };
    let mut broken = vec![];
    let mut notes = vec![];
    for cycle in 0..cycles {
        for _ in 0..per {
            step(&shim)?;
        }
        let r = shim.flush(WAIT)?;
        if r.outcome != FlushOutcome::Acked {
            broken.push(format!("cycle {cycle}: flush before the fill: {r:?}"));
        }
        let (filler, filled) = fill(&var)?;
        // Until the daemon fails a batch: the shim's stream errors while acks stop.
        let errors_before = shim.stats().reconnects;
        let acked_at_fill = shim.stats().acked;
        let mut during = 0u64;
        until(
            "the store to refuse a commit",
            || {
                for _ in 0..200 {
                    step(&shim)?;
                    during += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            },
            || Ok(shim.stats().reconnects > errors_before),
        )?;
        let error = shim.stats().last_error.unwrap_or_default();
        // Full for a while more: records keep coming, the daemon keeps failing them.
        for _ in 0..per {
            step(&shim)?;
            during += 1;
        }
        daemon_alive(&mut d, &mut broken, "while the store's disk was full")?;
        notes.push(format!(
            "cycle {cycle}: filler {filled} B, acked {} more while full, {during} records sent into it, the shim saw: {error}",
            shim.stats().acked - acked_at_fill
        ));
        std::fs::remove_file(&filler)?;
        let r = shim.flush(WAIT)?;
        if r.outcome != FlushOutcome::Acked {
            broken.push(format!("cycle {cycle}: flush after space returned: {r:?}"));
        }
        daemon_alive(&mut d, &mut broken, "after space returned")?;
    }
    let closed = shim.close(WAIT);
    match &closed {
        Ok(r) if r.outcome == FlushOutcome::Acked => {}
        other => broken.push(format!("store part: close: {other:?}")),
    }
    daemon_alive(&mut d, &mut broken, "at the end")?;
    d.stop()?;
    let (stored, lost, duplicated) = tally(&stored_seqs(&d.store()?, run)?, i);
    drop(d);
    drop(fs);
    let out = Outcome {
        name: "disk-full",
        runs: cycles,
        sent: i,
        stored,
        lost,
        duplicated,
        broken,
    };
    Ok((out, notes.join("; ")))
}

/// Part (b): the shim queue's disk.
fn queue_full(o: &Opts, cycles: u64, per: u64, work: &Path) -> AnyResult<(Outcome, String)> {
    let mut d = Daemon::new(&o.bin_dir, work)?;
    d.var = work.join("var-b");
    d.start()?;
    let token = d.token()?;
    let queue = work.join("q-tmpfs");
    let mut size = 2u64 << 20;
    let fs = tmpfs(&queue, size)?;
    let run = "chaos-disk-full-queue";
    let shim = Arc::new(Telemetry::new(ShimConfig {
        endpoint: d.endpoint(),
        run_id: Some(run.into()),
        agent_id: Some("chaos-agent".into()),
        queue_dir: Some(queue.clone()),
        auth_token: Some(token),
        // Refusals at once once the inbox is full: every one must be counted.
        full_policy: FullPolicy::DropNewest,
        buffer_max_records: 5000,
        segment_max_bytes: 64 << 10,
        max_record_bytes: 32 << 10,
        reconnect_max: Duration::from_millis(200),
        ..ShimConfig::default()
    })?);
    let mut i = 0u64;
    let mut refused = 0u64;
    let mut step = |shim: &Telemetry| -> AnyResult<()> {
        let mut s = template(i);
        s.run_id = run.into();
        i += 1;
        match shim.step(s) {
            Ok(()) => Ok(()),
            Err(ShimError::QueueFull { .. }) => {
                refused += 1;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    };
    let mut broken = vec![];
    let mut notes = vec![];
    for cycle in 0..cycles {
        for _ in 0..per {
            step(&shim)?;
        }
        let r = shim.flush(WAIT)?;
        if r.outcome != FlushOutcome::Acked {
            broken.push(format!("cycle {cycle}: flush before the fill: {r:?}"));
        }
        let (filler, filled) = fill(&queue)?;
        let dropped_before = shim.stats().dropped;
        // Full: the queue's writes fail, the inbox fills behind them, then calls are refused
        // (the signal: refusals, with the queue's ENOSPC as the shim's last error).
        until(
            "refusals while the queue's disk is full",
            || {
                for _ in 0..100 {
                    step(&shim)?;
                }
                Ok(())
            },
            || Ok(shim.stats().dropped > dropped_before + 100),
        )?;
        let error = shim.stats().last_error.unwrap_or_default();
        if !error.contains("No space left") {
            broken.push(format!(
                "cycle {cycle}: refusals, but the last error is not ENOSPC: {error}"
            ));
        }
        daemon_alive(&mut d, &mut broken, "while the queue's disk was full")?;
        let how = if cycle % 2 == 0 {
            std::fs::remove_file(&filler)?;
            "filler deleted"
        } else {
            size += 2 << 20;
            fs.resize(size)?;
            std::fs::remove_file(&filler)?;
            "remounted larger, filler deleted"
        };
        notes.push(format!(
            "cycle {cycle}: filler {filled} B, {} refused while full ({error}), then {how}",
            shim.stats().dropped - dropped_before
        ));
        // Space is back: the next records are taken again (the sender retries its write).
        let accepted = shim.stats().accepted;
        let r = shim.flush(WAIT)?;
        if r.outcome != FlushOutcome::Acked || r.accepted_through < accepted {
            broken.push(format!("cycle {cycle}: flush after space returned: {r:?}"));
        }
    }
    let stats = shim.stats();
    let shim = Arc::try_unwrap(shim).map_err(|_| "shim still shared")?;
    let closed = shim.close(WAIT);
    match &closed {
        Ok(r) if r.outcome == FlushOutcome::Acked => {}
        other => broken.push(format!("queue part: close: {other:?}")),
    }
    if stats.dropped != refused {
        broken.push(format!(
            "{refused} calls refused but the shim counted {} dropped",
            stats.dropped
        ));
    }
    if stats.accepted + refused != i {
        broken.push(format!(
            "{i} calls, {} accepted + {refused} refused",
            stats.accepted
        ));
    }
    daemon_alive(&mut d, &mut broken, "at the end")?;
    d.stop()?;
    // Refused calls take no seq: the accepted records are exactly 1..=accepted.
    let (stored, lost, duplicated) = tally(&stored_seqs(&d.store()?, run)?, stats.accepted);
    drop(fs);
    notes.push(format!(
        "calls {i}, accepted {}, refused {refused}",
        stats.accepted
    ));
    let out = Outcome {
        name: "disk-full",
        runs: cycles,
        sent: stats.accepted,
        stored,
        lost,
        duplicated,
        broken,
    };
    Ok((out, notes.join("; ")))
}

pub(crate) fn disk_full(o: &Opts, _rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let (cycles, per) = if o.quick { (2, 2_000) } else { (5, 10_000) };
    let work = work_dir(o, "disk-full")?;
    let (a, notes_a) = store_full(o, cycles, per, work.path())?;
    eprintln!(
        "disk-full (store): sent={} stored={} lost={} dup={}; {notes_a}",
        a.sent, a.stored, a.lost, a.duplicated
    );
    let (b, notes_b) = queue_full(o, cycles, per, work.path())?;
    eprintln!(
        "disk-full (queue): sent={} stored={} lost={} dup={}; {notes_b}",
        b.sent, b.stored, b.lost, b.duplicated
    );
    let mut broken = a.broken;
    broken.extend(b.broken);
    Ok(Outcome {
        name: "disk-full",
        runs: a.runs + b.runs,
        sent: a.sent + b.sent,
        stored: a.stored + b.stored,
        lost: a.lost + b.lost,
        duplicated: a.duplicated + b.duplicated,
        broken,
    })
}
