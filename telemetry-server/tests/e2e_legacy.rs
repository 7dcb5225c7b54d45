//! The predecessor's `gymgui.trainer.TrainerService`, driven by a client generated from its
//! proto: publish, stream, list, health.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::pb::legacy::{
    trainer_service_client::TrainerServiceClient, HealthCheckRequest, ListRunsRequest, RunEpisode,
    RunStep, StreamEpisodesRequest, StreamStepsRequest,
};
use tokio_stream::StreamExt;

#[tokio::test]
async fn legacy_clients_publish_and_stream_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let mut legacy = TrainerServiceClient::new(channel(&d).await);

    let health = legacy
        .get_health(HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(health.healthy);
    assert_eq!(health.pid, u64::from(std::process::id()));
    assert!(health.started_at.is_some());
    assert_eq!(
        format!("http://{}", health.listen_address),
        d.endpoint(),
        "the address the daemon listens on"
    );

    let steps: Vec<RunStep> = (0..5)
        .map(|i| RunStep {
            run_id: "old".into(),
            episode_index: 0,
            step_index: i,
            action_json: "2".into(),
            observation_json: "{\"s\":1}".into(),
            reward: 1.0,
            agent_id: "legacy-agent".into(),
            ..Default::default()
        })
        .chain(std::iter::once(RunStep {
            run_id: "old".into(),
            action_json: "{broken".into(),
            ..Default::default()
        }))
        .collect();
    let resp = legacy
        .publish_run_steps(tokio_stream::iter(steps))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.accepted, resp.dropped), (5, 1));

    let episode = RunEpisode {
        run_id: "old".into(),
        episode_index: 0,
        total_reward: 5.0,
        steps: 5,
        terminated: true,
        metadata_json: r#"{"control_mode":"human","seed":9}"#.into(),
        agent_id: "legacy-agent".into(),
        ..Default::default()
    };
    let resp = legacy
        .publish_run_episodes(tokio_stream::iter(vec![episode]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted, 1);

    let mut s = legacy
        .stream_run_steps(StreamStepsRequest {
            run_id: "old".into(),
            since_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(bounded("legacy steps", s.next()).await.unwrap().unwrap());
    }
    assert_eq!(
        got.iter().map(|s| s.step_index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(got
        .iter()
        .all(|s| s.seq_id > 0 && s.agent_id == "legacy-agent"));

    let mut e = legacy
        .stream_run_episodes(StreamEpisodesRequest {
            run_id: "old".into(),
            since_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let ep = bounded("legacy episode", e.next()).await.unwrap().unwrap();
    assert_eq!(ep.total_reward, 5.0);

    // The control mode the predecessor kept in metadata is indexed for Human Replay.
    let reader = telemetry_store::StoreReader::open(
        &telemetry_store::StoreConfig::in_var_dir(dir.path()).path,
    )
    .unwrap();
    assert_eq!(reader.human_replay_episodes(0, 10).unwrap().len(), 1);

    let runs = legacy
        .list_runs(ListRunsRequest {
            status_filter: vec![],
        })
        .await
        .unwrap();
    assert!(runs.into_inner().runs.iter().any(|r| r.run_id == "old"));
    d.shutdown().await.unwrap();
}

/// The legacy Publish streams are committed as they arrive, not held until the client closes.
#[tokio::test]
async fn a_legacy_publish_stream_stores_records_before_it_is_closed() {
    use telemetry_store::{Filter, StoreConfig, StoreReader};
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let mut legacy = TrainerServiceClient::new(channel(&d).await);
    let (tx, rx) = tokio::sync::mpsc::channel::<RunStep>(4);
    let call = tokio::spawn(async move {
        legacy
            .publish_run_steps(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let step = |i: u64| RunStep {
        run_id: "open".into(),
        step_index: i,
        action_json: "1".into(),
        observation_json: "{}".into(),
        ..Default::default()
    };
    let stored = || {
        let Ok(reader) = StoreReader::open(&StoreConfig::in_var_dir(dir.path()).path) else {
            return 0;
        };
        reader
            .stream_steps_since(0, &Filter::default())
            .filter_map(Result::ok)
            .filter(|s| s.run_id == "open")
            .count()
    };
    for n in 1..=3u64 {
        tx.send(step(n)).await.unwrap();
        // The stream stays open: the record must reach the store anyway (bounded wait).
        bounded("the record to be stored while the stream is open", async {
            while stored() < n as usize {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    drop(tx);
    let resp = bounded("the response", call)
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!((resp.accepted, resp.dropped), (3, 0));
    assert_eq!(stored(), 3);
    d.shutdown().await.unwrap();
}

/// Issue 13: a legacy `PublishRunSteps` stream of 1,000 steps cut after step 700 (the client
/// dropped), then retried in full, stores each step once. Before: 1,701 rows (legacy records
/// carried no producer identity, so the retry was stored again).
#[tokio::test]
async fn a_cut_legacy_publish_stream_retried_in_full_stores_each_step_once() {
    use telemetry_store::{Filter, StoreConfig, StoreReader};
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    // Ten episodes of 100 steps: steps 0..=700 are the first 701 of them.
    let step = |i: u64| RunStep {
        run_id: "cut".into(),
        agent_id: "a".into(),
        episode_index: i / 100,
        step_index: i % 100,
        action_json: "1".into(),
        observation_json: format!("{{\"i\":{i}}}"),
        reward: 0.5,
        ..Default::default()
    };
    let stored = |dir: &std::path::Path| -> Vec<(u64, u64)> {
        let Ok(reader) = StoreReader::open(&StoreConfig::in_var_dir(dir).path) else {
            return Vec::new();
        };
        reader
            .stream_steps_since(0, &Filter::run("cut"))
            .map(|s| s.map(|s| (s.episode_index, s.step_index)))
            .collect::<Result<_, _>>()
            .unwrap_or_default()
    };

    // The first attempt: steps 0..=700 sent and stored, then the client goes away mid-stream.
    let mut first = TrainerServiceClient::new(channel(&d).await);
    let (tx, rx) = tokio::sync::mpsc::channel::<RunStep>(64);
    let call = tokio::spawn(async move {
        first
            .publish_run_steps(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for i in 0..=700 {
        tx.send(step(i)).await.unwrap();
    }
    bounded("the first 701 steps to be stored", async {
        while stored(dir.path()).len() < 701 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    call.abort();
    let _ = call.await;
    drop(tx);
    assert_eq!(stored(dir.path()).len(), 701);

    // The retry: all 1,000 again, on a new connection.
    let mut retry = TrainerServiceClient::new(channel(&d).await);
    let resp = retry
        .publish_run_steps(tokio_stream::iter((0..1000).map(step)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.accepted, resp.dropped), (1000, 0));
    let rows = stored(dir.path());
    assert_eq!(rows.len(), 1000, "each step stored once");
    let want: Vec<(u64, u64)> = (0..1000).map(|i| (i / 100, i % 100)).collect();
    assert_eq!(rows, want, "in order, none missing");
    d.shutdown().await.unwrap();
}

/// The same for `PublishRunEpisodes`: a retried episode is stored once; an index too large to
/// be a seq is stored as is (not deduplicated) rather than refused.
#[tokio::test]
async fn retried_legacy_episodes_are_stored_once() {
    use telemetry_store::{Filter, StoreConfig, StoreReader};
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let mut legacy = TrainerServiceClient::new(channel(&d).await);
    let ep = |i: u64| RunEpisode {
        run_id: "eps".into(),
        agent_id: "a".into(),
        episode_index: i,
        total_reward: 1.0,
        steps: 3,
        ..Default::default()
    };
    for n in [3u64, 5] {
        let resp = legacy
            .publish_run_episodes(tokio_stream::iter((0..n).map(ep)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((resp.accepted, resp.dropped), (n, 0));
    }
    let huge = legacy
        .publish_run_episodes(tokio_stream::iter([ep(u64::MAX), ep(u64::MAX)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(huge.accepted, 2);
    let reader = StoreReader::open(&StoreConfig::in_var_dir(dir.path()).path).unwrap();
    let got: Vec<u64> = reader
        .stream_episodes_since(0, &Filter::run("eps"))
        .map(|e| e.unwrap().episode_index)
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4, u64::MAX, u64::MAX]);
    d.shutdown().await.unwrap();
}
