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
