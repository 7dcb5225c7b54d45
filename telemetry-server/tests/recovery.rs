//! Crash recovery: what a server finds when it starts where a dead one left off.
//!
//! - A worker the dead server spawned that is still alive is stopped, and its run ends with a
//!   stored `RunCompleted` (failed, interrupted), so every live view of it ends.
//! - A run fed by a worker started by hand is left running (that worker reconnects and goes on)
//!   until its heartbeat times out; then it too gets a stored `RunCompleted`.
//! - Queue dirs that spawned workers left are delivered through the shim code, exactly once,
//!   and removed.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, time::Duration};

use common::{bounded, config, WAIT};
use telemetry_core::pb::{CompletionStatus, RunInfo, RunState, RunStep};
use telemetry_shim::{ShimConfig, Telemetry};
use telemetry_store::{Filter, Store, StoreConfig, StoreReader};

fn put_runs(var: &Path, runs: &[RunInfo]) {
    let mut store = Store::open(StoreConfig::in_var_dir(var)).unwrap();
    for r in runs {
        store.put_run_info(r).unwrap();
    }
}

fn completion(var: &Path, run: &str) -> Option<telemetry_core::pb::RunCompleted> {
    StoreReader::open(&StoreConfig::in_var_dir(var).path)
        .unwrap()
        .run_completion(run)
        .unwrap()
}

/// `/proc/<pid>/stat` field 22 of a process.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_outlived_its_server_is_stopped_and_its_run_completed() {
    let var = tempfile::tempdir().unwrap();
    // What a server killed with -9 leaves: its worker, alive in its own process group.
    let mut orphan = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut orphan, 0);
    let mut orphan = orphan.arg("600").spawn().unwrap();
    let pid = orphan.id();
    put_runs(
        var.path(),
        &[
            RunInfo {
                run_id: "spawned".into(),
                state: RunState::Running as i32,
                worker_pid: Some(pid),
                worker_start_ticks: Some(start_ticks(pid)),
                ..Default::default()
            },
            // A pid that is not (or no longer) that process: never signalled.
            RunInfo {
                run_id: "reused".into(),
                state: RunState::Running as i32,
                worker_pid: Some(std::process::id()),
                worker_start_ticks: Some(1),
                ..Default::default()
            },
        ],
    );
    let d = telemetry_server::start(config(var.path())).await.unwrap();
    let mut interrupted = d.interrupted_runs.clone();
    interrupted.sort();
    assert_eq!(interrupted, vec!["reused".to_owned(), "spawned".to_owned()]);
    // The orphan was stopped before the server started serving.
    let status = orphan.try_wait().unwrap().expect("the orphan was stopped");
    assert!(!status.success());
    let done = completion(var.path(), "spawned").expect("a stored RunCompleted");
    assert_eq!(done.status, CompletionStatus::Failed as i32);
    assert!(done.error.contains("outlived"), "{done:?}");
    let reused = completion(var.path(), "reused").expect("a stored RunCompleted");
    assert!(
        !reused.error.contains("outlived"),
        "this process was not touched: {reused:?}"
    );
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_fed_by_hand_goes_on_until_its_heartbeat_times_out() {
    let var = tempfile::tempdir().unwrap();
    put_runs(
        var.path(),
        &[RunInfo {
            run_id: "by-hand".into(),
            state: RunState::Running as i32,
            ..Default::default()
        }],
    );
    let mut cfg = config(var.path());
    cfg.heartbeat_timeout = Duration::from_millis(400);
    let d = telemetry_server::start(cfg).await.unwrap();
    assert!(d.interrupted_runs.is_empty(), "not failed at restart");
    assert_eq!(completion(var.path(), "by-hand"), None);
    // Nothing arrives for it: the heartbeat timeout fails it, with a stored completion.
    let done = bounded("heartbeat timeout", async {
        loop {
            if let Some(c) = completion(var.path(), "by-hand") {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(done.status, CompletionStatus::Failed as i32);
    assert!(done.error.contains("no heartbeat"), "{done:?}");
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_left_by_spawned_workers_are_delivered_once_at_start_up() {
    let var = tempfile::tempdir().unwrap();
    let queue = var.path().join("queues").join("left");
    // A worker that queued 40 steps while no server was there, then died.
    let nobody_listens = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", nobody_listens.local_addr().unwrap());
    drop(nobody_listens);
    let t = Telemetry::new(ShimConfig {
        endpoint,
        run_id: Some("left".into()),
        agent_id: Some("a".into()),
        queue_dir: Some(queue.clone()),
        auth_token: Some("unused".into()),
        ..ShimConfig::default()
    })
    .unwrap();
    for i in 0..40 {
        t.step(RunStep {
            step_index: i,
            ..Default::default()
        })
        .unwrap();
    }
    let report = t.flush(Duration::from_millis(200));
    assert!(report.is_ok(), "{report:?}");
    t.abandon();
    assert!(queue.is_dir());

    let d = telemetry_server::start(config(var.path())).await.unwrap();
    let stored = bounded("drained", async {
        loop {
            let n = StoreReader::open(&StoreConfig::in_var_dir(var.path()).path)
                .unwrap()
                .stream_steps_since(0, &Filter::run("left"))
                .count();
            if n >= 40 && !queue.exists() {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(stored, 40, "each queued record exactly once");
    let _ = WAIT;
    d.shutdown().await.unwrap();
}
