//! The viewer's `--once` snapshot against a real server (`telemetry-server`, in-process): the runs, and one run's episodes with
//! seed, game id and control mode filled from wherever the worker put them.
#![allow(clippy::unwrap_used)]

use telemetry_core::pb::{IngestBatch, Record, RunEpisode, RunStep};

fn step(run: &str, producer: &str, seq: u64) -> Record {
    RunStep {
        run_id: run.into(),
        agent_id: "agent-0".into(),
        step_index: seq,
        action_json: "1".into(),
        observation_json: format!("{{\"x\":{seq}}}"),
        reward: 0.5,
        control_mode: "agent".into(),
        producer_id: producer.into(),
        producer_seq: seq,
        ..Default::default()
    }
    .into()
}

#[tokio::test]
async fn once_prints_runs_and_episode_metadata_from_the_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = telemetry_server::start(telemetry_server::ServerConfig::ephemeral(dir.path()))
        .await
        .unwrap();
    let publisher = d.publisher();
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
    publisher
        .publish(IngestBatch {
            batch_id: 1,
            records,
        })
        .await
        .unwrap();

    // Without a credential the viewer gets nothing; with the owner's it sees the run.
    let anon = telemetry_viewer::ClientConfig::new(d.endpoint());
    assert!(
        telemetry_viewer::once::run_once(&anon, Some("viewed"), &mut Vec::new())
            .await
            .is_err()
    );
    let mut cfg = telemetry_viewer::ClientConfig::new(d.endpoint());
    cfg.auth_token = d.operator_token().map(str::to_owned);
    let mut out = Vec::new();
    telemetry_viewer::once::run_once(&cfg, Some("viewed"), &mut out)
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
