//! Limits per client: stream messages bounded in bytes, streams per connection, WatchRuns
//! watchers, run metadata sizes.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::pb::{stream_notice::Kind as Notice, RunStep, StreamRequest};
use tokio_stream::StreamExt;

/// A step whose observation is a JSON string of `bytes` characters.
fn big_step(run: &str, seq: u64, bytes: usize) -> telemetry_core::pb::Record {
    RunStep {
        run_id: run.into(),
        agent_id: "agent-0".into(),
        step_index: seq,
        action_json: "1".into(),
        observation_json: format!("\"{}\"", "x".repeat(bytes)),
        control_mode: "agent".into(),
        producer_id: "big".into(),
        producer_seq: seq,
        ..Default::default()
    }
    .into()
}

/// Reads a step stream to its `CaughtUp` notice; returns the steps' producer seqs.
async fn read_to_caught_up(
    stream: &mut tonic::Streaming<telemetry_core::pb::StepStreamMessage>,
) -> Vec<u64> {
    bounded("the stream to catch up", async {
        let mut seqs = Vec::new();
        loop {
            let msg = stream.next().await.unwrap().unwrap();
            seqs.extend(msg.steps.iter().map(|s| s.producer_seq));
            if let Some(Notice::CaughtUp(_)) = msg.notice.and_then(|n| n.kind) {
                return seqs;
            }
        }
    })
    .await
}

#[tokio::test]
async fn three_hundred_records_of_900_kb_stream_back_with_default_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (mut ingest, mut query, _) = clients(&d).await;
    const N: u64 = 300;
    const PER_BATCH: u64 = 15; // ~13.5 MB: under the 16 MiB message limit
    for first in (1..=N).step_by(PER_BATCH as usize) {
        let records = (first..(first + PER_BATCH).min(N + 1))
            .map(|s| big_step("big", s, 900_000))
            .collect();
        let ack = ingest
            .publish_batch(batch(first, records))
            .await
            .unwrap()
            .into_inner();
        assert!(ack.rejected.is_empty(), "{:?}", ack.rejected);
    }
    let expected: Vec<u64> = (1..=N).collect();

    // One run: hub-backed (catch-up from the store). Before: OUT_OF_RANGE, "encoded message
    // length too large" (256 records of 900 KB in one message).
    let mut one_run = query
        .stream_run_steps(StreamRequest {
            run_id: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read_to_caught_up(&mut one_run).await, expected);

    // Every run: store-backed.
    let mut every_run = query
        .stream_run_steps(StreamRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read_to_caught_up(&mut every_run).await, expected);
    d.shutdown().await.unwrap();
}

/// A worker that runs until `flag` exists (the test decides when it exits, not a timer).
fn wait_for(flag: &std::path::Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("while [ ! -f '{}' ]; do sleep 0.05; done", flag.display()),
    ]
}

fn submit_argv(run_id: &str, argv: &[String]) -> telemetry_core::pb::SubmitRunRequest {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    submit(run_id, &argv)
}

#[tokio::test]
async fn submissions_past_the_worker_limit_wait_and_start_in_order() {
    use telemetry_core::pb::{CancelRunRequest, RunState, WatchRunsRequest};
    let dir = tempfile::tempdir().unwrap();
    let flags = tempfile::tempdir().unwrap();
    let mut cfg = config_with_metrics(dir.path());
    cfg.max_running_workers = 1;
    cfg.max_pending_runs = 2;
    let d = telemetry_server::start(cfg).await.unwrap();
    let (_, _, mut control) = clients(&d).await;
    let mut watch = control
        .watch_runs(WatchRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let flag = |name: &str| flags.path().join(name);

    control
        .submit_run(submit_argv("a", &wait_for(&flag("a"))))
        .await
        .unwrap();
    until(&mut watch, "a", |s| s == RunState::Running).await;
    for id in ["b", "c"] {
        control
            .submit_run(submit_argv(id, &wait_for(&flag(id))))
            .await
            .unwrap();
    }
    // The pending queue is full: refused, nothing registered.
    let err = control
        .submit_run(submit_argv("d", &wait_for(&flag("d"))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let body = metrics_text(&d).await;
    assert!(
        body.contains("gym_telemetry_dispatch_running_workers 1"),
        "{body}"
    );
    assert!(
        body.contains("gym_telemetry_dispatch_pending_runs 2"),
        "{body}"
    );
    assert!(
        body.contains(r#"gym_telemetry_submissions_refused_total{reason="pending_queue_full"} 1"#),
        "{body}"
    );

    // Cancelling a waiting run takes it out of the queue.
    let cancelled = control
        .cancel_run(CancelRunRequest { run_id: "c".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.cancelled);

    // Only when "a" exits does "b" start; "c" never runs.
    std::fs::write(flag("a"), b"").unwrap();
    let mut seen: Vec<(String, RunState)> = Vec::new();
    bounded("b to run", async {
        use tokio_stream::StreamExt;
        loop {
            let info = watch.next().await.unwrap().unwrap();
            let state = RunState::try_from(info.state).unwrap();
            seen.push((info.run_id.clone(), state));
            if info.run_id == "b" && state == RunState::Running {
                return;
            }
        }
    })
    .await;
    let position = |id: &str, st: RunState| {
        seen.iter()
            .position(|(r, s)| r == id && *s == st)
            .unwrap_or_else(|| panic!("{id} {st:?} not seen in {seen:?}"))
    };
    assert!(position("a", RunState::Completed) < position("b", RunState::Running));
    assert!(position("c", RunState::Cancelled) < position("b", RunState::Running));
    assert!(!seen
        .iter()
        .any(|(r, s)| r == "c" && *s == RunState::Running));

    std::fs::write(flag("b"), b"").unwrap();
    let b = until_final(&mut watch, "b").await;
    assert_eq!(b.state, RunState::Completed as i32);
    let body = metrics_text(&d).await;
    assert!(
        body.contains("gym_telemetry_dispatch_pending_runs 0"),
        "{body}"
    );
    // "d" was refused whole, so it is unknown.
    let err = control
        .cancel_run(CancelRunRequest { run_id: "d".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_submissions_are_refused_naming_the_field_and_the_limit() {
    use telemetry_core::pb::legacy::{self, trainer_service_client::TrainerServiceClient};
    let dir = tempfile::tempdir().unwrap();
    let d = telemetry_server::start(config_with_metrics(dir.path()))
        .await
        .unwrap();
    let (_, _, mut control) = clients(&d).await;
    let limits = telemetry_server::SubmitLimits::default();

    let mut big_meta = submit("m", &["true"]);
    big_meta.metadata_json = format!("\"{}\"", "x".repeat(limits.max_metadata_bytes));
    let err = control.submit_run(big_meta).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("metadata_json"), "{}", err.message());
    assert!(
        err.message()
            .contains(&limits.max_metadata_bytes.to_string()),
        "{}",
        err.message()
    );

    let env: Vec<(String, String)> = (0..=limits.max_env)
        .map(|i| (format!("K{i}"), "v".to_owned()))
        .collect();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let err = control
        .submit_run(submit_with_env("e", &["true"], &env_refs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("command.env"), "{}", err.message());

    let argv: Vec<String> = std::iter::once("true".to_owned())
        .chain((0..limits.max_argv).map(|i| i.to_string()))
        .collect();
    let err = control
        .submit_run(submit_argv("v", &argv))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("command.argv"), "{}", err.message());

    // The predecessor's SubmitRun: config_json.
    let mut old = TrainerServiceClient::new(channel(&d).await);
    let padding = "x".repeat(limits.max_metadata_bytes);
    let err = old
        .submit_run(legacy::SubmitRunRequest {
            run_id: "l".into(),
            config_json: format!(r#"{{"argv":["true"],"pad":"{padding}"}}"#),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("config_json"), "{}", err.message());

    // Nothing was registered, and every refusal was counted.
    assert!(control
        .cancel_run(telemetry_core::pb::CancelRunRequest { run_id: "m".into() })
        .await
        .is_err());
    let body = metrics_text(&d).await;
    assert!(
        body.contains(r#"gym_telemetry_submissions_refused_total{reason="too_large"} 4"#),
        "{body}"
    );
    d.shutdown().await.unwrap();
}

fn follow(run: &str) -> StreamRequest {
    StreamRequest {
        run_id: run.into(),
        follow: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn one_connection_cannot_hold_more_than_its_share_of_live_streams() {
    use telemetry_core::pb::{
        legacy::{trainer_service_client::TrainerServiceClient, StreamStepsRequest},
        query_client::QueryClient,
    };
    const CAP: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with_metrics(dir.path());
    cfg.query.max_subscriptions_per_connection = CAP;
    let d = telemetry_server::start(cfg).await.unwrap();
    let a = channel(&d).await;
    let mut query_a = QueryClient::new(a.clone());

    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(
            query_a
                .stream_run_steps(follow("r"))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let err = query_a.stream_run_steps(follow("r")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // The predecessor's streams on the same connection count too.
    let err = TrainerServiceClient::new(a.clone())
        .stream_run_steps(StreamStepsRequest {
            run_id: "r".into(),
            since_seq: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");

    // Another connection is not affected.
    let mut query_b = QueryClient::new(channel(&d).await);
    let mut other = Vec::new();
    for _ in 0..CAP {
        other.push(
            query_b
                .stream_run_steps(follow("r"))
                .await
                .unwrap()
                .into_inner(),
        );
    }

    // Closing one stream frees its slot (once the server has seen it go: bounded wait).
    drop(held.pop());
    let reopened = bounded("a freed slot", async {
        loop {
            match query_a.stream_run_steps(follow("r")).await {
                Ok(s) => return s.into_inner(),
                Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    held.push(reopened);

    let body = metrics_text(&d).await;
    let refused = body
        .lines()
        .find(|l| {
            l.starts_with(r#"gym_telemetry_subscriptions_refused_total{reason="per_connection"}"#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(refused >= 2, "{refused}");
    drop((held, other));
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_opens_at_most_max_concurrent_streams_at_once() {
    use telemetry_core::pb::query_client::QueryClient;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_concurrent_streams = 2;
    let d = telemetry_server::start(cfg).await.unwrap();
    let mut q = QueryClient::new(channel(&d).await);
    let first = q.stream_run_steps(follow("r")).await.unwrap().into_inner();
    let _second = q.stream_run_steps(follow("r")).await.unwrap().into_inner();
    // The third waits for an HTTP/2 stream slot (it cannot be opened while two are open) ...
    let mut q3 = q.clone();
    let mut third = tokio::spawn(async move { q3.stream_run_steps(follow("r")).await });
    // A negative check: it cannot flake when the limit holds (the call cannot complete).
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut third).await;
    assert!(early.is_err(), "a third stream was opened beside two");
    // ... and is opened once one of them closes.
    drop(first);
    let third = bounded("the third stream", third).await.unwrap();
    assert!(third.is_ok(), "{third:?}");
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn watch_runs_streams_are_bounded_across_both_apis() {
    use telemetry_core::pb::{
        legacy::{trainer_service_client::TrainerServiceClient, WatchRunsRequest as OldWatch},
        WatchRunsRequest,
    };
    const MAX: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with_metrics(dir.path());
    cfg.max_run_watchers = MAX;
    let d = telemetry_server::start(cfg).await.unwrap();
    let (_, _, mut control) = clients(&d).await;
    let mut old = TrainerServiceClient::new(channel(&d).await);

    let mut held = Vec::new();
    for _ in 0..MAX - 1 {
        held.push(
            control
                .watch_runs(WatchRunsRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let legacy_watch = old
        .watch_runs(OldWatch::default())
        .await
        .unwrap()
        .into_inner();
    let err = control
        .watch_runs(WatchRunsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let err = old.watch_runs(OldWatch::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");

    // Closing one frees its place (once the server has seen it go: bounded wait).
    drop(legacy_watch);
    let again = bounded("a freed WatchRuns place", async {
        loop {
            match control.watch_runs(WatchRunsRequest::default()).await {
                Ok(s) => return s.into_inner(),
                Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    held.push(again);
    let body = metrics_text(&d).await;
    assert!(
        body.lines().any(|l| l
            .starts_with(r#"gym_telemetry_subscriptions_refused_total{reason="watch_runs"}"#)
            && l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) >= Some(2)),
        "{body}"
    );
    drop(held);
    d.shutdown().await.unwrap();
}
