//! Run control through the real daemon: a completed worker, a failing one, a spawn error, a
//! cancel (SIGTERM to the process group), the heartbeat timeout, WatchRuns, and a legacy JSONL
//! worker run under the proxy.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use telemetry_core::pb::{CancelRunRequest, RunState, StreamRequest, WatchRunsRequest};
use tokio_stream::StreamExt;

#[tokio::test]
async fn submitted_workers_complete_fail_or_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (_, _, mut control) = clients(&d).await;
    let mut watch = control
        .watch_runs(WatchRunsRequest {})
        .await
        .unwrap()
        .into_inner();

    // The worker sees where to send telemetry.
    control
        .submit_run(submit(
            "ok",
            &[
                "sh",
                "-c",
                "test \"$GYM_TELEMETRY_RUN_ID\" = ok && test -n \"$GYM_TELEMETRY_ENDPOINT\"",
            ],
        ))
        .await
        .unwrap();
    let ok = until_final(&mut watch, "ok").await;
    assert_eq!(ok.state, RunState::Completed as i32, "{ok:?}");
    assert_eq!(ok.exit_code, Some(0));

    control
        .submit_run(submit("bad", &["sh", "-c", "echo oops >&2; exit 3"]))
        .await
        .unwrap();
    let bad = until_final(&mut watch, "bad").await;
    assert_eq!(bad.state, RunState::Failed as i32);
    assert_eq!(bad.exit_code, Some(3));
    assert!(
        bad.failure_reason.contains("code 3"),
        "{}",
        bad.failure_reason
    );
    let log = std::fs::read_to_string(dir.path().join("runs/bad/worker.log")).unwrap();
    assert!(log.contains("oops"));

    control
        .submit_run(submit("nope", &["/nonexistent/worker"]))
        .await
        .unwrap();
    let nope = until_final(&mut watch, "nope").await;
    assert_eq!(nope.state, RunState::Failed as i32);
    assert!(
        nope.failure_reason.contains("spawn error"),
        "{}",
        nope.failure_reason
    );

    // Bad requests are refused before anything runs.
    let err = control
        .submit_run(submit("../x", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = control
        .submit_run(submit("ok", &["true"]))
        .await
        .unwrap_err();
    assert!(err.message().contains("already exists"));
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (_, mut query, mut control) = clients(&d).await;
    let mut watch = control
        .watch_runs(WatchRunsRequest {})
        .await
        .unwrap()
        .into_inner();
    // A worker whose child ignores nothing: both must die with the group.
    control
        .submit_run(submit("long", &["sh", "-c", "sleep 300 & sleep 300"]))
        .await
        .unwrap();
    until(&mut watch, "long", |s| s == RunState::Running).await;
    // A live viewer of the run is closed by the completion the daemon records.
    let mut steps = query
        .stream_run_steps(StreamRequest {
            run_id: "long".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let resp = control
        .cancel_run(CancelRunRequest {
            run_id: "long".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.cancelled);
    let info = until_final(&mut watch, "long").await;
    assert_eq!(info.state, RunState::Cancelled as i32);
    assert_eq!(info.signal, Some(15), "SIGTERM ended it");
    let mut completed = false;
    while let Some(m) = bounded("viewer closes", steps.next()).await {
        if let Some(telemetry_core::pb::stream_notice::Kind::RunCompleted(c)) =
            m.unwrap().notice.and_then(|n| n.kind)
        {
            assert_eq!(
                c.status,
                telemetry_core::pb::CompletionStatus::Cancelled as i32
            );
            completed = true;
        }
    }
    assert!(completed);
    // Cancelling again says it had already ended; unknown runs are NOT_FOUND.
    let again = control
        .cancel_run(CancelRunRequest {
            run_id: "long".into(),
        })
        .await
        .unwrap();
    assert!(!again.into_inner().cancelled);
    let err = control
        .cancel_run(CancelRunRequest {
            run_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_worker_is_failed_by_the_heartbeat_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.heartbeat_timeout = Duration::from_millis(400);
    let d = telemetry_server::start(cfg).await.unwrap();
    let (_, _, mut control) = clients(&d).await;
    let mut watch = control
        .watch_runs(WatchRunsRequest {})
        .await
        .unwrap()
        .into_inner();
    control
        .submit_run(submit("silent", &["sleep", "300"]))
        .await
        .unwrap();
    let info = until_final(&mut watch, "silent").await;
    assert_eq!(info.state, RunState::Failed as i32);
    assert!(
        info.failure_reason.contains("no heartbeat"),
        "{}",
        info.failure_reason
    );
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_demo_worker_and_a_legacy_jsonl_worker_run_under_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (_, _, mut control) = clients(&d).await;
    let mut watch = control
        .watch_runs(WatchRunsRequest {})
        .await
        .unwrap()
        .into_inner();
    let exe = demo_exe();
    let exe = exe.to_str().unwrap();
    control
        .submit_run(submit("demo", &[exe, "worker", "--episodes", "3"]))
        .await
        .unwrap();
    let info = until_final(&mut watch, "demo").await;
    assert_eq!(info.state, RunState::Completed as i32, "{info:?}");

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/legacy-demo-worker.jsonl"
    );
    let mut legacy = submit("legacy", &["cat", fixture]);
    legacy.command.as_mut().unwrap().legacy_jsonl = true;
    control.submit_run(legacy).await.unwrap();
    let info = until_final(&mut watch, "legacy").await;
    assert_eq!(info.state, RunState::Completed as i32, "{info:?}");
    d.shutdown().await.unwrap();

    let reader = telemetry_store::StoreReader::open(
        &telemetry_store::StoreConfig::in_var_dir(dir.path()).path,
    )
    .unwrap();
    let runs = reader.list_runs().unwrap();
    let demo = runs
        .iter()
        .find(|r| r.run_id == "demo")
        .expect("demo stored");
    assert_eq!(demo.episode_count, 6, "2 agents x 3 episodes");
    assert_eq!(demo.agent_ids.len(), 2);
    // The legacy fixture's records carry run id RUN123; the proxy keeps the worker's ids.
    let stored: u64 = runs
        .iter()
        .filter(|r| r.run_id != "demo")
        .map(|r| r.step_count)
        .sum();
    assert_eq!(stored, 12, "12 steps of the legacy demo worker");
}
