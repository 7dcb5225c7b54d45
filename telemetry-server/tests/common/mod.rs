//! Shared helpers of the daemon's integration tests: an in-process daemon on an ephemeral
//! loopback port with a temporary var dir, generated clients, record builders and bounded waits.
#![allow(dead_code, clippy::unwrap_used)]

pub mod faulty;

use std::{future::Future, path::PathBuf, time::Duration};

use telemetry_core::pb::{
    ingest_client::IngestClient, query_client::QueryClient, run_control_client::RunControlClient,
    IngestBatch, Record, RunCompleted, RunEpisode, RunStep,
};
use telemetry_server::{ServerConfig, ServerHandle};
use tonic::transport::Channel;

/// Bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// A binary of another package of the workspace (`gym-telemetry-proxy`, `gym-telemetry-demo`),
/// from the target directory these tests were built into. `cargo test --workspace` (what
/// `scripts/test.sh` runs) builds every binary before any test runs.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// The demo binary, whose `worker` subcommand is the built-in worker as a process.
pub fn demo_exe() -> PathBuf {
    workspace_bin("gym-telemetry-demo")
}

/// A test configuration on `var_dir`, without credentials (these tests are about other things;
/// `tests/security.rs` tests the default, where every RPC needs one).
pub fn config(var_dir: &std::path::Path) -> ServerConfig {
    let mut cfg = ServerConfig::ephemeral(var_dir);
    cfg.auth = telemetry_server::AuthConfig::InsecureNoAuth;
    cfg.proxy_exe = workspace_bin("gym-telemetry-proxy");
    cfg.cancel_grace = Duration::from_secs(2);
    cfg
}

/// Starts a daemon on `var_dir`.
pub async fn start(var_dir: &std::path::Path) -> ServerHandle {
    telemetry_server::start(config(var_dir))
        .await
        .expect("server starts")
}

/// A channel to the daemon.
pub async fn channel(d: &ServerHandle) -> Channel {
    Channel::from_shared(d.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Clients of our three services.
pub async fn clients(
    d: &ServerHandle,
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

/// A submission of `argv` as run `run_id`, with extra environment `env`.
pub fn submit_with_env(
    run_id: &str,
    argv: &[&str],
    env: &[(&str, &str)],
) -> telemetry_core::pb::SubmitRunRequest {
    telemetry_core::pb::SubmitRunRequest {
        run_id: run_id.into(),
        command: Some(telemetry_core::pb::WorkerCommand {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            working_dir: String::new(),
            legacy_jsonl: false,
        }),
        agent_id: "a".into(),
        control_mode: "agent".into(),
        game_id: "Test-v0".into(),
        seed: Some(3),
        metadata_json: String::new(),
        ..Default::default()
    }
}

/// A submission of `argv` as run `run_id`.
pub fn submit(run_id: &str, argv: &[&str]) -> telemetry_core::pb::SubmitRunRequest {
    submit_with_env(run_id, argv, &[])
}

/// Reads WatchRuns until `run_id` is reported in a state `accept` takes; returns that info.
pub async fn until(
    watch: &mut tonic::Streaming<telemetry_core::pb::RunInfo>,
    run_id: &str,
    accept: impl Fn(telemetry_core::pb::RunState) -> bool,
) -> telemetry_core::pb::RunInfo {
    use tokio_stream::StreamExt;
    bounded(run_id, async {
        loop {
            let info = watch.next().await.unwrap().unwrap();
            if info.run_id == run_id
                && telemetry_core::pb::RunState::try_from(info.state).is_ok_and(&accept)
            {
                return info;
            }
        }
    })
    .await
}

/// Reads WatchRuns until `run_id` reaches a final state; returns that state's info.
pub async fn until_final(
    watch: &mut tonic::Streaming<telemetry_core::pb::RunInfo>,
    run_id: &str,
) -> telemetry_core::pb::RunInfo {
    use telemetry_core::pb::RunState;
    until(watch, run_id, |s| {
        matches!(
            s,
            RunState::Completed | RunState::Failed | RunState::Cancelled
        )
    })
    .await
}

/// The daemon's Prometheus text (it must have been started with a metrics address).
pub async fn metrics_text(d: &ServerHandle) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = d.metrics_addr.expect("metrics bound");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    bounded("metrics", s.read_to_string(&mut out))
        .await
        .unwrap();
    out
}

/// A test configuration on `var_dir` that also serves metrics on an ephemeral port.
pub fn config_with_metrics(var_dir: &std::path::Path) -> ServerConfig {
    let mut cfg = config(var_dir);
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg
}
