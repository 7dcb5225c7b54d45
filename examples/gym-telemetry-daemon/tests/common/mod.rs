//! Shared helpers of the daemon's integration tests: an in-process daemon on an ephemeral
//! loopback port with a temporary var dir, generated clients, record builders and bounded waits.
#![allow(dead_code, clippy::unwrap_used)]

use std::{future::Future, path::PathBuf, time::Duration};

use gym_telemetry_daemon::{server, DaemonConfig, RunningDaemon};
use telemetry_core::pb::{
    ingest_client::IngestClient, query_client::QueryClient, run_control_client::RunControlClient,
    IngestBatch, Record, RunCompleted, RunEpisode, RunStep,
};
use tonic::transport::Channel;

/// Bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// The daemon binary (hosts the JSONL proxy and the demo worker).
pub fn daemon_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gym-telemetry-daemon"))
}

/// A test configuration on `var_dir`.
pub fn config(var_dir: &std::path::Path) -> DaemonConfig {
    let mut cfg = DaemonConfig::ephemeral(var_dir);
    cfg.self_exe = daemon_exe();
    cfg.cancel_grace = Duration::from_secs(2);
    cfg
}

/// Starts a daemon on `var_dir`.
pub async fn start(var_dir: &std::path::Path) -> RunningDaemon {
    server::start(config(var_dir)).await.expect("daemon starts")
}

/// A channel to the daemon.
pub async fn channel(d: &RunningDaemon) -> Channel {
    Channel::from_shared(d.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Clients of our three services.
pub async fn clients(
    d: &RunningDaemon,
) -> (
    IngestClient<Channel>,
    QueryClient<Channel>,
    RunControlClient<Channel>,
) {
    let ch = channel(d).await;
    (
        IngestClient::new(ch.clone()),
        QueryClient::new(ch.clone()),
        RunControlClient::new(ch),
    )
}

/// A step of `run` stamped by `producer` with `seq`.
pub fn step(run: &str, producer: &str, seq: u64) -> Record {
    RunStep {
        run_id: run.into(),
        agent_id: "agent-0".into(),
        episode_index: 0,
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

/// An episode of `run`.
pub fn episode(run: &str, producer: &str, seq: u64, mode: &str) -> Record {
    RunEpisode {
        run_id: run.into(),
        agent_id: "agent-0".into(),
        episode_index: seq,
        total_reward: 1.0,
        steps: 3,
        control_mode: mode.into(),
        metadata_json: r#"{"seed":1,"game_id":"Grid-v0"}"#.into(),
        producer_id: producer.into(),
        producer_seq: seq,
        ..Default::default()
    }
    .into()
}

/// A successful completion of `run`.
pub fn completed(run: &str, producer: &str, seq: u64) -> Record {
    RunCompleted {
        run_id: run.into(),
        status: telemetry_core::pb::CompletionStatus::Succeeded as i32,
        producer_id: producer.into(),
        producer_seq: seq,
        ..Default::default()
    }
    .into()
}

/// A batch.
pub fn batch(id: u64, records: Vec<Record>) -> IngestBatch {
    IngestBatch {
        batch_id: id,
        records,
    }
}

/// Runs `f` with the test-wide time bound.
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
