//! Shared helpers for the store's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use telemetry_core::{
    pb::{Artifact, CompletionStatus, Record, RunCompleted, RunEpisode, RunStarted, RunStep},
    timestamp::from_unix_nanos,
};
use telemetry_store::{Store, StoreConfig};

/// A temporary directory with a store in it.
pub struct TempStore {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl TempStore {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut StoreConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = StoreConfig::in_var_dir(&dir.path().join("var"));
        tweak(&mut cfg);
        let store = Store::open(cfg).expect("open store");
        TempStore { dir, store }
    }

    pub fn path(&self) -> PathBuf {
        self.store.path().to_owned()
    }
}

/// A step with every field set.
pub fn step(run: &str, agent: &str, episode: u64, index: u64) -> RunStep {
    RunStep {
        run_id: run.into(),
        episode_index: episode,
        step_index: index,
        action_json: format!("{}", index % 4),
        observation_json: format!(r#"{{"x":[{index},0.5]}}"#),
        reward: 0.25 * index as f64,
        terminated: index % 7 == 6,
        truncated: false,
        timestamp: Some(from_unix_nanos(
            1_795_914_168_088_378_923 + 1_000 * index as i64,
        )),
        policy_label: "ppo".into(),
        backend: "torch".into(),
        seq_id: 0,
        agent_id: agent.into(),
        render_hint_json: r#"{"w":84}"#.into(),
        frame_ref: format!("frames/{run}/{index}.png"),
        payload_version: 2,
        control_mode: "agent".into(),
        producer_id: String::new(),
        producer_seq: 0,
        info_json: r#"{"epsilon":0.1}"#.into(),
        policy_id: "CartPole-v1/ppo.npz".into(),
        policy_digest: "5e".repeat(32),
    }
}

/// An episode with every field set.
pub fn episode(run: &str, agent: &str, index: u64, mode: &str) -> RunEpisode {
    RunEpisode {
        run_id: run.into(),
        episode_index: index,
        total_reward: 1.5 + index as f64,
        steps: 10,
        terminated: true,
        truncated: false,
        metadata_json: format!(r#"{{"seed":{index},"game_id":"CartPole-v1"}}"#),
        timestamp: Some(from_unix_nanos(1_795_914_169_000_000_001 + index as i64)),
        seq_id: 0,
        agent_id: agent.into(),
        control_mode: mode.into(),
        producer_id: String::new(),
        producer_seq: 0,
        policy_id: "CartPole-v1/ppo.npz".into(),
        policy_digest: "5e".repeat(32),
    }
}

pub fn run_started(run: &str) -> RunStarted {
    RunStarted {
        run_id: run.into(),
        timestamp: Some(from_unix_nanos(1_795_914_100_000_000_000)),
        config_json: r#"{"lr":0.001}"#.into(),
        agent_id: "agent-1".into(),
        control_mode: "agent".into(),
        ..Default::default()
    }
}

pub fn run_completed(run: &str, status: CompletionStatus) -> RunCompleted {
    RunCompleted {
        run_id: run.into(),
        timestamp: Some(from_unix_nanos(1_795_914_200_000_000_000)),
        status: status as i32,
        exit_code: Some(0),
        error: String::new(),
        reason: "done".into(),
        signal: None,
        info_json: r#"{"k":1}"#.into(),
        ..Default::default()
    }
}

pub fn artifact(run: &str) -> Artifact {
    Artifact {
        run_id: run.into(),
        timestamp: Some(from_unix_nanos(1_795_914_150_000_000_000)),
        kind: "policy".into(),
        path: "/tmp/policy.pt".into(),
        info_json: "{}".into(),
        ..Default::default()
    }
}

/// Stamps records with one producer, seqs from `first`.
pub fn stamped(records: Vec<Record>, producer: &str, first: u64) -> Vec<Record> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.set_producer(producer, first + i as u64);
            r
        })
        .collect()
}

pub fn steps(run: &str, agent: &str, n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| Record::from(step(run, agent, i / 10, i % 10)))
        .collect()
}

pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}
