//! The viewer's `--once` snapshot against a real daemon: the runs, and one run's episodes with
//! seed, game id and control mode filled from wherever the worker put them.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::pb::RunEpisode;

#[tokio::test]
async fn once_prints_runs_and_episode_metadata_from_the_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (mut ingest, _, _) = clients(&d).await;
    let mut records: Vec<_> = (1..=4).map(|s| step("viewed", "p", s)).collect();
    // A BDI-style episode: env_id instead of game_id, legacy control mode spelling.
    records.push(
        RunEpisode {
            run_id: "viewed".into(),
            agent_id: "agent-0".into(),
            episode_index: 0,
            total_reward: 2.5,
            steps: 4,
            terminated: true,
            metadata_json: r#"{"env_id":"FrozenLake-v1","seed":321,"control_mode":"agent_only"}"#
                .into(),
            producer_id: "p".into(),
            producer_seq: 5,
            ..Default::default()
        }
        .into(),
    );
    ingest.publish_batch(batch(1, records)).await.unwrap();

    let cfg = gym_telemetry_viewer::ClientConfig::new(d.endpoint());
    let mut out = Vec::new();
    gym_telemetry_viewer::once::run_once(&cfg, Some("viewed"), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("viewed"), "{text}");
    assert!(text.contains("321"), "seed shown: {text}");
    assert!(
        text.contains("FrozenLake-v1"),
        "game id from env_id: {text}"
    );
    assert!(text.contains("2.5"), "return shown: {text}");
    d.shutdown().await.unwrap();
}
