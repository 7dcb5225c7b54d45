//! Bytes written by the predecessor's clients (`gymgui.trainer.RunStep` / `RunEpisode`) decode
//! into our `gym_telemetry.v1` messages with every value intact, and our messages decode back
//! into the legacy ones keeping fields 1-16 (steps) and 1-10 (episodes).

use prost::Message;
use prost_types::Timestamp;
use telemetry_core::pb::{self, legacy};

fn ts() -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_795_914_168,
        nanos: 88_378_923,
    })
}

fn legacy_step() -> legacy::RunStep {
    legacy::RunStep {
        run_id: "RUN123".into(),
        episode_index: 7,
        step_index: u64::MAX,
        action_json: "1".into(),
        observation_json: r#"{"position":[-0.21,-0.9]}"#.into(),
        reward: -0.324,
        terminated: true,
        truncated: true,
        timestamp: ts(),
        policy_label: "demo_policy".into(),
        backend: "demo".into(),
        seq_id: 42,
        agent_id: "agent_RUN123".into(),
        render_hint_json: r#"{"grid":[8,8]}"#.into(),
        frame_ref: "frames/7/3.png".into(),
        payload_version: 3,
    }
}

fn legacy_episode() -> legacy::RunEpisode {
    legacy::RunEpisode {
        run_id: "RUN123".into(),
        episode_index: 2,
        total_reward: 2.259,
        steps: 4,
        terminated: true,
        truncated: true,
        metadata_json: r#"{"seed":44,"game_id":"DemoEnv-v0"}"#.into(),
        timestamp: ts(),
        seq_id: 9,
        agent_id: "agent_RUN123".into(),
    }
}

#[test]
fn legacy_step_bytes_decode_into_v1_step() {
    let old = legacy_step();
    let new = pb::RunStep::decode(old.encode_to_vec().as_slice()).expect("decodes");
    let expected = pb::RunStep {
        run_id: old.run_id.clone(),
        episode_index: old.episode_index,
        step_index: old.step_index,
        action_json: old.action_json.clone(),
        observation_json: old.observation_json.clone(),
        reward: old.reward,
        terminated: old.terminated,
        truncated: old.truncated,
        timestamp: old.timestamp,
        policy_label: old.policy_label.clone(),
        backend: old.backend.clone(),
        seq_id: old.seq_id,
        agent_id: old.agent_id.clone(),
        render_hint_json: old.render_hint_json.clone(),
        frame_ref: old.frame_ref.clone(),
        payload_version: old.payload_version,
        // Fields the predecessor did not have arrive empty.
        control_mode: String::new(),
        producer_id: String::new(),
        producer_seq: 0,
        info_json: String::new(),
        policy_id: String::new(),
        policy_digest: String::new(),
    };
    assert_eq!(new, expected);
}

#[test]
fn v1_step_bytes_decode_into_legacy_step_keeping_fields_1_to_16() {
    let old = legacy_step();
    let new = pb::RunStep {
        run_id: old.run_id.clone(),
        episode_index: old.episode_index,
        step_index: old.step_index,
        action_json: old.action_json.clone(),
        observation_json: old.observation_json.clone(),
        reward: old.reward,
        terminated: old.terminated,
        truncated: old.truncated,
        timestamp: old.timestamp,
        policy_label: old.policy_label.clone(),
        backend: old.backend.clone(),
        seq_id: old.seq_id,
        agent_id: old.agent_id.clone(),
        render_hint_json: old.render_hint_json.clone(),
        frame_ref: old.frame_ref.clone(),
        payload_version: old.payload_version,
        control_mode: "agent".into(),
        producer_id: "p-1".into(),
        producer_seq: 5,
        info_json: r#"{"epsilon":0.9}"#.into(),
        policy_id: "FrozenLake-v1/q.json".into(),
        policy_digest: "ab".repeat(32),
    };
    let back = legacy::RunStep::decode(new.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back, old);
}

#[test]
fn legacy_episode_bytes_decode_into_v1_episode() {
    let old = legacy_episode();
    let new = pb::RunEpisode::decode(old.encode_to_vec().as_slice()).expect("decodes");
    let expected = pb::RunEpisode {
        run_id: old.run_id.clone(),
        episode_index: old.episode_index,
        total_reward: old.total_reward,
        steps: old.steps,
        terminated: old.terminated,
        truncated: old.truncated,
        metadata_json: old.metadata_json.clone(),
        timestamp: old.timestamp,
        seq_id: old.seq_id,
        agent_id: old.agent_id.clone(),
        control_mode: String::new(),
        producer_id: String::new(),
        producer_seq: 0,
        policy_id: String::new(),
        policy_digest: String::new(),
    };
    assert_eq!(new, expected);
}

#[test]
fn v1_episode_bytes_decode_into_legacy_episode_keeping_fields_1_to_10() {
    let old = legacy_episode();
    let new = pb::RunEpisode {
        run_id: old.run_id.clone(),
        episode_index: old.episode_index,
        total_reward: old.total_reward,
        steps: old.steps,
        terminated: old.terminated,
        truncated: old.truncated,
        metadata_json: old.metadata_json.clone(),
        timestamp: old.timestamp,
        seq_id: old.seq_id,
        agent_id: old.agent_id.clone(),
        control_mode: "human".into(),
        producer_id: "p-1".into(),
        producer_seq: 6,
        policy_id: "FrozenLake-v1/q.json".into(),
        policy_digest: "ab".repeat(32),
    };
    let back = legacy::RunEpisode::decode(new.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back, old);
}
