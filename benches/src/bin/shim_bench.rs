//! What one `Telemetry::step` costs the training loop, against what a legacy worker pays to print the
//! same step as a JSON line (`telemetry_core::jsonl::write_record` into a `BufWriter<File>`),
//! measured in the same process.
//!
//! - `shim_step_connected`: a daemon is connected (an in-process fake Ingest server that acks
//!   at once); ns per `step()` call on the worker's thread. Goal: ratio < 1.0.
//! - `shim_step_connected_e2e`: the same loop plus the final `flush()` until every record is
//!   acked, per step (the sender's work included).
//! - `shim_step_spilling`: the daemon is down, records go to the disk queue (default config:
//!   fsync every batch); ns per `step()` call.
//! - `shim_step_spilling_e2e`: plus the final flush (synced to disk), per step.
//!
//! Both loops build the step they emit (a worker has to), so the ratio compares the whole
//! per-step cost. The shims run the default configuration except `FullPolicy::Block`, so no step
//! is dropped (asserted): the figures are lossless rates, and once a run outgrows the inbox
//! (65 536 records) the caller's figure converges to the sender's throughput. The fake daemon
//! only counts (no validation, no storage) but still decodes every batch on the same machine,
//! inside the e2e figures. `--quick` uses 200k steps per part, otherwise 1M.

use std::{
    fs::File,
    io::{BufWriter, Write},
    time::{Duration, Instant},
};
use telemetry_core::{
    jsonl,
    pb::{Record, RunStep},
    timestamp,
};
use telemetry_shim::{
    fake_ingest::{reserve_port, FakeIngest, FakeState},
    FlushOutcome, FullPolicy, ShimConfig, Telemetry,
};

fn make_step(i: u64) -> RunStep {
    RunStep {
        run_id: "bench-run".into(),
        episode_index: i / 1000,
        step_index: i % 1000,
        action_json: "2".into(),
        observation_json: r#"{"position":[0.125,-0.5],"velocity":[0.25,0.75],"goal":[7,7]}"#.into(),
        reward: (i % 7) as f64 * 0.25,
        terminated: i % 1000 == 999,
        agent_id: "agent-0".into(),
        timestamp: Some(timestamp::from_unix_nanos(
            1_795_914_168_000_000_000 + (i as i64) * 1_000_000,
        )),
        ..Default::default()
    }
}

/// The default configuration, except that a full buffer makes the caller wait instead of
/// dropping: every step is kept, so ns/step is a lossless rate (dropping is cheaper than
/// storing and would flatter the figure).
fn lossless() -> ShimConfig {
    ShimConfig {
        full_policy: FullPolicy::Block {
            timeout: Duration::from_secs(10),
        },
        ..ShimConfig::default()
    }
}

fn baseline(n: u64, dir: &std::path::Path) -> f64 {
    let file = File::create(dir.join("baseline.jsonl")).expect("baseline file");
    let mut out = BufWriter::new(file);
    let start = Instant::now();
    for i in 0..n {
        let r: Record = make_step(i).into();
        jsonl::write_record(&mut out, &r).expect("write");
    }
    out.flush().expect("flush");
    start.elapsed().as_nanos() as f64 / n as f64
}

/// (caller ns/step, caller+flush ns/step). A flush waits out its timeout while the daemon is
/// unreachable, so the spilling run flushes with a zero timeout: answered once all is on disk.
fn run_shim(n: u64, shim: &Telemetry, expect: FlushOutcome) -> (f64, f64) {
    let timeout = if expect == FlushOutcome::OnDisk {
        Duration::ZERO
    } else {
        Duration::from_secs(120)
    };
    let start = Instant::now();
    for i in 0..n {
        let _ = shim.step(make_step(i));
    }
    let caller = start.elapsed();
    let report = shim.flush(timeout).expect("flush");
    let total = start.elapsed();
    assert_eq!(report.outcome, expect, "{report:?}");
    (
        caller.as_nanos() as f64 / n as f64,
        total.as_nanos() as f64 / n as f64,
    )
}

fn print(name: &str, ns: f64, base: f64) {
    println!("BENCH {name} {ns:.0} ns/step ratio={:.3}", ns / base);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u64 = if quick { 200_000 } else { 1_000_000 };
    let dir = tempfile::tempdir().expect("tempdir");

    // Warm the allocator and the file system a little, then measure the baseline.
    baseline(n / 10, dir.path());
    let base = baseline(n, dir.path());
    eprintln!("baseline (write_record into BufWriter<File>): {base:.0} ns/step");

    // Connected.
    let fake = FakeIngest::start_with(([127, 0, 0, 1], 0).into(), FakeState::counting())
        .expect("fake daemon");
    let shim = Telemetry::new(ShimConfig {
        endpoint: fake.endpoint(),
        ..lossless()
    })
    .expect("shim");
    run_shim(n / 10, &shim, FlushOutcome::Acked);
    let (caller, e2e) = run_shim(n, &shim, FlushOutcome::Acked);
    let stats = shim.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    eprintln!(
        "connected: accepted={} acked={} dropped={} stored_by_daemon={}",
        stats.accepted,
        stats.acked,
        stats.dropped,
        fake.state().stored()
    );
    print("shim_step_connected", caller, base);
    print("shim_step_connected_e2e", e2e, base);
    drop(shim);
    drop(fake);

    // Spilling: the daemon is down, records go to the disk queue.
    let addr = reserve_port().expect("port");
    let shim = Telemetry::new(ShimConfig {
        endpoint: format!("http://{addr}"),
        queue_dir: Some(dir.path().join("queue")),
        ..lossless()
    })
    .expect("shim");
    let (caller, e2e) = run_shim(n, &shim, FlushOutcome::OnDisk);
    let stats = shim.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    eprintln!(
        "spilling: accepted={} spilled={} dropped={} queue_bytes={}",
        stats.accepted, stats.spilled, stats.dropped, stats.queue_bytes
    );
    print("shim_step_spilling", caller, base);
    print("shim_step_spilling_e2e", e2e, base);
    shim.abandon();
}
