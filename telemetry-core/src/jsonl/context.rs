//! Per-run memory of what a worker said once, so later records do not lose it.
//!
//! A BDI worker names its agent, seed and environment once, in the `config` of `run_started`,
//! and then prints steps that carry none of them. [`RunContext`] remembers those facts per
//! `run_id` and fills them into the run's later steps and episodes that lack them. It holds at
//! most [`RunContext::DEFAULT_MAX_RUNS`] runs (configurable); when full, the run it learned
//! about first is forgotten and counted in [`RunContext::evicted`].

use super::meta;
use crate::{
    pb::{record::Kind, Record, RunEpisode, RunStarted},
    ControlMode,
};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};

/// What a run's `run_started` said, for filling in its later records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunDefaults {
    /// The agent (`agent_id`, top level or in the config).
    pub agent_id: Option<String>,
    /// Who acts (`control_mode`, top level or in the config).
    pub control_mode: Option<ControlMode>,
    /// The seed (`config.seed`).
    pub seed: Option<Value>,
    /// The environment (`config.game_id` or an alias: `env_id`, `game`, `env`).
    pub game_id: Option<String>,
}

impl RunDefaults {
    /// The defaults a `RunStarted` record announces.
    pub fn from_run_started(r: &RunStarted) -> Self {
        let config = serde_json::from_str::<Value>(&r.config_json).ok();
        let obj = config.as_ref().and_then(Value::as_object);
        RunDefaults {
            agent_id: Some(r.agent_id.clone()).filter(|s| !s.is_empty()),
            control_mode: ControlMode::from_wire(&r.control_mode)
                .ok()
                .filter(|m| *m != ControlMode::Unknown),
            seed: obj.and_then(meta::find_seed).cloned(),
            game_id: obj.and_then(meta::find_game_id).map(str::to_owned),
        }
    }

    fn fill_episode(&self, e: &mut RunEpisode) {
        fill(&mut e.agent_id, self.agent_id.as_deref());
        fill(
            &mut e.control_mode,
            self.control_mode.map(ControlMode::as_str),
        );
        let mut adds: Vec<(&str, Value)> = Vec::new();
        if let Some(seed) = &self.seed {
            adds.push(("seed", seed.clone()));
        }
        if let Some(game) = &self.game_id {
            adds.push(("game_id", Value::String(game.clone())));
        }
        if adds.is_empty() {
            return;
        }
        let mut meta = if e.metadata_json.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(&e.metadata_json) {
                Ok(Value::Object(m)) => m,
                // Not an object: nowhere to add keys without changing what the worker sent.
                _ => return,
            }
        };
        let mut changed = false;
        for (k, v) in adds {
            if !meta.contains_key(k) {
                meta.insert(k.to_owned(), v);
                changed = true;
            }
        }
        if changed {
            e.metadata_json = Value::Object(meta).to_string();
        }
    }
}

fn fill(field: &mut String, value: Option<&str>) {
    if let (true, Some(v)) = (field.is_empty(), value) {
        v.clone_into(field);
    }
}

/// Remembers, per run, what its `run_started` said and fills it into later records.
#[derive(Debug, Clone)]
pub struct RunContext {
    runs: HashMap<String, RunDefaults>,
    /// Run ids in the order they were first seen, for eviction.
    order: VecDeque<String>,
    max_runs: usize,
    evicted: u64,
}

impl Default for RunContext {
    fn default() -> Self {
        Self::new()
    }
}

impl RunContext {
    /// How many runs a context remembers by default.
    pub const DEFAULT_MAX_RUNS: usize = 1024;

    /// An empty context holding at most [`Self::DEFAULT_MAX_RUNS`] runs.
    pub fn new() -> Self {
        Self::with_max_runs(Self::DEFAULT_MAX_RUNS)
    }

    /// An empty context holding at most `max_runs` runs (at least 1).
    pub fn with_max_runs(max_runs: usize) -> Self {
        RunContext {
            runs: HashMap::new(),
            order: VecDeque::new(),
            max_runs: max_runs.max(1),
            evicted: 0,
        }
    }

    /// Learns from a `RunStarted` (a later one for the same run replaces what was known), and
    /// fills the empty `agent_id` / `control_mode` of a step or episode of a known run, plus its
    /// episode metadata's missing `seed` / `game_id` keys. Other records pass unchanged.
    pub fn apply(&mut self, record: &mut Record) {
        match &mut record.kind {
            Some(Kind::RunStarted(r)) => self.learn(r),
            Some(Kind::Step(s)) => {
                if let Some(d) = self.runs.get(&s.run_id) {
                    fill(&mut s.agent_id, d.agent_id.as_deref());
                    fill(&mut s.control_mode, d.control_mode.map(ControlMode::as_str));
                }
            }
            Some(Kind::Episode(e)) => {
                if let Some(d) = self.runs.get(&e.run_id) {
                    d.fill_episode(e);
                }
            }
            _ => {}
        }
    }

    fn learn(&mut self, r: &RunStarted) {
        let defaults = RunDefaults::from_run_started(r);
        if let Some(known) = self.runs.get_mut(&r.run_id) {
            *known = defaults;
            return;
        }
        while self.runs.len() >= self.max_runs {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.runs.remove(&oldest);
            self.evicted += 1;
        }
        self.order.push_back(r.run_id.clone());
        self.runs.insert(r.run_id.clone(), defaults);
    }

    /// What is known about `run_id`.
    pub fn get(&self, run_id: &str) -> Option<&RunDefaults> {
        self.runs.get(run_id)
    }

    /// How many runs are remembered.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Whether no run is remembered.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// How many runs were forgotten because the context was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::RunStep;

    fn started(run: &str, config: &str) -> Record {
        RunStarted {
            run_id: run.into(),
            agent_id: "a1".into(),
            config_json: config.into(),
            ..Default::default()
        }
        .into()
    }

    #[test]
    fn fills_only_empty_fields_of_the_same_run() {
        let mut ctx = RunContext::new();
        let mut rs = started(
            "r",
            r#"{"env_id":"E","seed":5,"control_mode":"agent_only"}"#,
        );
        // The parser moves config.control_mode onto the record; emulate that here.
        if let Some(Kind::RunStarted(r)) = &mut rs.kind {
            r.control_mode = "agent".into();
        }
        ctx.apply(&mut rs);
        let mut own: Record = RunStep {
            run_id: "r".into(),
            agent_id: "mine".into(),
            ..Default::default()
        }
        .into();
        ctx.apply(&mut own);
        let mut other: Record = RunStep {
            run_id: "other".into(),
            ..Default::default()
        }
        .into();
        ctx.apply(&mut other);
        match (own.kind, other.kind) {
            (Some(Kind::Step(a)), Some(Kind::Step(b))) => {
                assert_eq!(
                    (a.agent_id.as_str(), a.control_mode.as_str()),
                    ("mine", "agent")
                );
                assert_eq!((b.agent_id.as_str(), b.control_mode.as_str()), ("", ""));
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut ep: Record = RunEpisode {
            run_id: "r".into(),
            metadata_json: r#"{"seed":1}"#.into(),
            ..Default::default()
        }
        .into();
        ctx.apply(&mut ep);
        match ep.kind {
            Some(Kind::Episode(e)) => {
                assert_eq!(e.agent_id, "a1");
                assert_eq!(e.metadata_json, r#"{"seed":1,"game_id":"E"}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn is_bounded_and_counts_evictions() {
        let mut ctx = RunContext::with_max_runs(2);
        for run in ["a", "b", "a", "c", "d"] {
            ctx.apply(&mut started(run, ""));
        }
        assert_eq!(ctx.len(), 2);
        assert_eq!(ctx.evicted(), 2);
        assert!(ctx.get("a").is_none() && ctx.get("b").is_none());
        assert_eq!(ctx.get("d").and_then(|d| d.agent_id.as_deref()), Some("a1"));
    }
}
