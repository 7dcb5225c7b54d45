//! Run metadata and hooks applied to every record before it leaves the worker.
//!
//! The predecessor's viewers showed "—" for seed, game and control mode unless each worker
//! remembered to put exactly the right keys into each episode. Here a worker says them once
//! ([`Telemetry::set_metadata`](crate::Telemetry::set_metadata)) and the shim applies them to every record
//! that follows:
//!
//! - **steps** get `agent_id`, `control_mode`, `policy_label` and `backend` where empty. Seed,
//!   game id and `extra` are per-run facts and are *not* copied into every step's `info_json`
//!   (that would multiply their bytes by the step count); they travel with episodes.
//! - **episodes** get `agent_id` and `control_mode` where empty, and `metadata_json` gains the
//!   keys `seed`, `game_id`, `control_mode`, `agent_id`, `policy_label`, `backend` and every
//!   `extra` key it does not already have (keys the worker set itself win).
//! - **run starts** get `agent_id` and `control_mode` where empty.
//! - every record gets the configured `run_id` where empty and a timestamp where none.
//!
//! Then the registered hooks run (steps and episodes), in registration order, and may change
//! anything. Records are not validated here (the daemon does; dry runs do).

use crate::ShimConfig;
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use telemetry_core::{
    pb::{record::Kind, Record, RunEpisode, RunStep},
    timestamp, ControlMode,
};

/// Facts about the run that the shim applies to the records that follow
/// ([`Telemetry::set_metadata`](crate::Telemetry::set_metadata)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// The environment seed.
    pub seed: Option<u64>,
    /// The environment id (for example `FrozenLake-v1`).
    pub game_id: Option<String>,
    /// Who acts (overrides the configured control mode).
    pub control_mode: Option<ControlMode>,
    /// The agent (overrides the configured agent id).
    pub agent_id: Option<String>,
    /// The policy's name or version.
    pub policy_label: Option<String>,
    /// The RL library or environment backend.
    pub backend: Option<String>,
    /// More keys for episodes' `metadata_json`.
    pub extra: Map<String, Value>,
}

/// A hook that sees (and may change) each step before it is queued.
pub(crate) type StepHook = dyn Fn(&mut RunStep) + Send + Sync;
/// A hook that sees (and may change) each episode before it is queued.
pub(crate) type EpisodeHook = dyn Fn(&mut RunEpisode) + Send + Sync;

/// Everything applied to records, precomputed; replaced whole on every change so the hot path
/// takes one lock and one reference count.
#[derive(Default)]
struct Snapshot {
    run_id: Option<String>,
    agent_id: Option<String>,
    control_mode: Option<&'static str>,
    policy_label: Option<String>,
    backend: Option<String>,
    episode_keys: Map<String, Value>,
    step_hooks: Vec<Arc<StepHook>>,
    episode_hooks: Vec<Arc<EpisodeHook>>,
}

/// Applies metadata and hooks to records.
pub(crate) struct Decorator {
    config_run_id: Option<String>,
    config_agent_id: Option<String>,
    config_control_mode: Option<ControlMode>,
    metadata: Mutex<Metadata>,
    current: Mutex<Arc<Snapshot>>,
    /// `(agent, policy id, digest)` of each equipped policy.
    policies: Vec<(String, String, String)>,
}

/// Stamps an equipped agent's policy on a record that names none.
fn stamp_policy(
    policies: &[(String, String, String)],
    agent: &str,
    id: &mut String,
    digest: &mut String,
) {
    if !id.is_empty() {
        return;
    }
    if let Some((_, p, d)) = policies.iter().find(|(a, _, _)| a == agent) {
        id.clone_from(p);
        digest.clone_from(d);
    }
}

fn fill(field: &mut String, value: &Option<String>) {
    if field.is_empty() {
        if let Some(v) = value {
            field.clone_from(v);
        }
    }
}

fn fill_mode(field: &mut String, value: Option<&'static str>) {
    if field.is_empty() {
        if let Some(v) = value {
            v.clone_into(field);
        }
    }
}

impl Decorator {
    pub fn new(config: &ShimConfig) -> Self {
        let d = Decorator {
            config_run_id: config.run_id.clone(),
            config_agent_id: config.agent_id.clone(),
            config_control_mode: config.control_mode,
            metadata: Mutex::new(Metadata::default()),
            current: Mutex::new(Arc::new(Snapshot::default())),
            policies: config
                .policies
                .iter()
                .flat_map(|p| p.policies.iter())
                .map(|p| (p.agent_id.clone(), p.policy_id.clone(), p.sha256.clone()))
                .collect(),
        };
        d.rebuild(|_| {});
        d
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.lock() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Rebuilds the snapshot after `change` updates it (hooks) and from the current metadata.
    fn rebuild(&self, change: impl FnOnce(&mut Snapshot)) {
        let meta = match self.metadata.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut cur = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let agent_id = meta
            .agent_id
            .clone()
            .or_else(|| self.config_agent_id.clone());
        let mode = meta.control_mode.or(self.config_control_mode);
        let mut keys = Map::new();
        if let Some(seed) = meta.seed {
            keys.insert("seed".into(), Value::from(seed));
        }
        let strings = [
            ("game_id", meta.game_id.clone()),
            ("control_mode", mode.map(|m| m.as_str().to_owned())),
            ("agent_id", agent_id.clone()),
            ("policy_label", meta.policy_label.clone()),
            ("backend", meta.backend.clone()),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                keys.insert(k.into(), Value::String(v));
            }
        }
        for (k, v) in &meta.extra {
            keys.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let mut next = Snapshot {
            run_id: self.config_run_id.clone(),
            agent_id,
            control_mode: mode.map(ControlMode::as_str),
            policy_label: meta.policy_label,
            backend: meta.backend,
            episode_keys: keys,
            step_hooks: cur.step_hooks.clone(),
            episode_hooks: cur.episode_hooks.clone(),
        };
        change(&mut next);
        *cur = Arc::new(next);
    }

    pub fn set_metadata(&self, metadata: Metadata) {
        match self.metadata.lock() {
            Ok(mut g) => *g = metadata,
            Err(p) => *p.into_inner() = metadata,
        }
        self.rebuild(|_| {});
    }

    pub fn add_step_hook(&self, hook: Arc<StepHook>) {
        self.rebuild(|s| s.step_hooks.push(hook));
    }

    pub fn add_episode_hook(&self, hook: Arc<EpisodeHook>) {
        self.rebuild(|s| s.episode_hooks.push(hook));
    }

    /// Fills the record from the configuration and metadata, then runs the hooks.
    pub fn decorate(&self, record: &mut Record) {
        let d = self.snapshot();
        let Some(kind) = record.kind.as_mut() else {
            return;
        };
        match kind {
            Kind::Step(s) => {
                fill(&mut s.run_id, &d.run_id);
                fill(&mut s.agent_id, &d.agent_id);
                fill_mode(&mut s.control_mode, d.control_mode);
                fill(&mut s.policy_label, &d.policy_label);
                fill(&mut s.backend, &d.backend);
                stamp_policy(
                    &self.policies,
                    &s.agent_id,
                    &mut s.policy_id,
                    &mut s.policy_digest,
                );
                s.timestamp.get_or_insert_with(timestamp::now);
                for h in &d.step_hooks {
                    h(s);
                }
            }
            Kind::Episode(e) => {
                fill(&mut e.run_id, &d.run_id);
                fill(&mut e.agent_id, &d.agent_id);
                fill_mode(&mut e.control_mode, d.control_mode);
                merge_keys(&mut e.metadata_json, &d.episode_keys);
                stamp_policy(
                    &self.policies,
                    &e.agent_id,
                    &mut e.policy_id,
                    &mut e.policy_digest,
                );
                e.timestamp.get_or_insert_with(timestamp::now);
                for h in &d.episode_hooks {
                    h(e);
                }
            }
            Kind::RunStarted(r) => {
                fill(&mut r.run_id, &d.run_id);
                fill(&mut r.agent_id, &d.agent_id);
                fill_mode(&mut r.control_mode, d.control_mode);
                r.timestamp.get_or_insert_with(timestamp::now);
            }
            Kind::RunCompleted(r) => {
                fill(&mut r.run_id, &d.run_id);
                r.timestamp.get_or_insert_with(timestamp::now);
            }
            // A scalar's agent stays as given: empty means the run as a whole (a learner's
            // loss), not the shim's default agent.
            Kind::Scalar(v) => {
                fill(&mut v.run_id, &d.run_id);
                v.timestamp.get_or_insert_with(timestamp::now);
            }
            Kind::Artifact(a) => {
                fill(&mut a.run_id, &d.run_id);
                a.timestamp.get_or_insert_with(timestamp::now);
            }
        }
    }
}

/// Adds `keys` that `json` (an object, or empty) lacks. Anything but an object is left alone
/// (the daemon reports invalid JSON; we do not hide it).
fn merge_keys(json: &mut String, keys: &Map<String, Value>) {
    if keys.is_empty() {
        return;
    }
    let mut obj = if json.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(m)) => m,
            _ => return,
        }
    };
    let before = obj.len();
    for (k, v) in keys {
        obj.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if obj.len() != before || json.trim().is_empty() {
        *json = Value::Object(obj).to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decorator() -> Decorator {
        Decorator::new(&ShimConfig {
            run_id: Some("run-cfg".into()),
            agent_id: Some("agent-cfg".into()),
            control_mode: Some(ControlMode::Human),
            ..ShimConfig::default()
        })
    }

    #[test]
    fn steps_get_identity_but_not_per_run_facts() {
        let d = decorator();
        d.set_metadata(Metadata {
            seed: Some(7),
            game_id: Some("Pong".into()),
            control_mode: Some(ControlMode::Agent),
            policy_label: Some("ppo-v3".into()),
            backend: Some("cleanrl".into()),
            ..Metadata::default()
        });
        let mut r: Record = RunStep::default().into();
        d.decorate(&mut r);
        let Some(Kind::Step(s)) = r.kind else {
            panic!("step")
        };
        assert_eq!(s.run_id, "run-cfg");
        assert_eq!(s.agent_id, "agent-cfg");
        assert_eq!(s.control_mode, "agent", "metadata overrides the config");
        assert_eq!(s.policy_label, "ppo-v3");
        assert_eq!(s.backend, "cleanrl");
        assert_eq!(s.info_json, "");
        assert!(s.timestamp.is_some());
    }

    #[test]
    fn record_values_win_and_episode_metadata_is_merged() {
        let d = decorator();
        let mut extra = Map::new();
        extra.insert("difficulty".into(), Value::from(3));
        extra.insert("seed".into(), Value::from(999));
        d.set_metadata(Metadata {
            seed: Some(42),
            game_id: Some("Pong".into()),
            extra,
            ..Metadata::default()
        });
        let mut r: Record = RunEpisode {
            run_id: "mine".into(),
            agent_id: "a7".into(),
            metadata_json: r#"{"game_id":"Breakout","note":1}"#.into(),
            ..Default::default()
        }
        .into();
        d.decorate(&mut r);
        let Some(Kind::Episode(e)) = r.kind else {
            panic!("episode")
        };
        assert_eq!(e.run_id, "mine");
        assert_eq!(e.agent_id, "a7");
        assert_eq!(e.control_mode, "human");
        let m: Value = serde_json::from_str(&e.metadata_json).expect("json");
        assert_eq!(m["game_id"], "Breakout", "the worker's key wins");
        assert_eq!(m["seed"], 42, "a named field wins over extra");
        assert_eq!(m["difficulty"], 3);
        assert_eq!(m["control_mode"], "human");
        assert_eq!(m["agent_id"], "agent-cfg");
        assert_eq!(m["note"], 1);
        // Not an object: left alone.
        let mut bad: Record = RunEpisode {
            metadata_json: "[1,2]".into(),
            ..Default::default()
        }
        .into();
        d.decorate(&mut bad);
        let Some(Kind::Episode(e)) = bad.kind else {
            panic!("episode")
        };
        assert_eq!(e.metadata_json, "[1,2]");
    }

    #[test]
    fn hooks_run_in_order_after_metadata() {
        let d = decorator();
        d.add_step_hook(Arc::new(|s: &mut RunStep| {
            s.info_json = format!("{{\"a\":\"{}\"}}", s.agent_id)
        }));
        d.add_step_hook(Arc::new(|s: &mut RunStep| s.reward *= 2.0));
        d.add_episode_hook(Arc::new(|e: &mut RunEpisode| e.steps = 99));
        d.set_metadata(Metadata::default());
        let mut r: Record = RunStep {
            reward: 1.5,
            ..Default::default()
        }
        .into();
        d.decorate(&mut r);
        let Some(Kind::Step(s)) = r.kind else {
            panic!("step")
        };
        assert_eq!(s.info_json, r#"{"a":"agent-cfg"}"#);
        assert_eq!(s.reward, 3.0);
        let mut e: Record = RunEpisode::default().into();
        d.decorate(&mut e);
        let Some(Kind::Episode(e)) = e.kind else {
            panic!("episode")
        };
        assert_eq!(e.steps, 99);
    }
}
