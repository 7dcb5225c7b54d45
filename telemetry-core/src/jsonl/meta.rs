//! Finding an episode's seed, game, control mode and agent wherever the worker put them.
//!
//! The predecessor's viewers showed "—" unless a worker used exactly the keys `seed`, `game_id`
//! and `control_mode` inside `metadata_json`. Workers put them at the top level, inside
//! `metadata` or inside a nested `config`, and call the game `env_id`, `game` or `env`. The
//! lookups here are shared by the parser (which fills the record's fields and adds canonical
//! `seed` / `game_id` keys), by [`RunContext`](super::RunContext) and by viewers
//! ([`discover_episode_meta`]).

use crate::{pb::RunEpisode, ControlMode};
use serde_json::{Map, Value};

/// Keys a seed may sit under.
pub(super) const SEED_KEYS: &[&str] = &["seed"];
/// Keys a game / environment id may sit under, canonical first.
pub(super) const GAME_KEYS: &[&str] = &["game_id", "env_id", "game", "env"];

/// Episode facts a viewer shows, wherever the worker put them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpisodeMeta {
    /// The environment seed, as the worker sent it (usually an integer).
    pub seed: Option<Value>,
    /// The environment id (`game_id`, or its aliases `env_id`, `game`, `env`).
    pub game_id: Option<String>,
    /// Who acted ([`ControlMode::Unknown`] when not said or not recognised).
    pub control_mode: ControlMode,
    /// The agent.
    pub agent_id: Option<String>,
}

/// The first value under one of `keys` accepted by `accept`, looking in `obj` first and then in
/// its nested `config` object.
fn lookup<'a>(
    obj: &'a Map<String, Value>,
    keys: &[&str],
    accept: fn(&Value) -> bool,
) -> Option<&'a Value> {
    let nested = obj.get("config").and_then(Value::as_object);
    std::iter::once(obj).chain(nested).find_map(|scope| {
        keys.iter()
            .filter_map(|k| scope.get(*k))
            .find(|v| accept(v))
    })
}

fn not_null(v: &Value) -> bool {
    !v.is_null()
}

/// The seed in `obj` (top level, then `config`).
pub(super) fn find_seed(obj: &Map<String, Value>) -> Option<&Value> {
    lookup(obj, SEED_KEYS, not_null)
}

/// The game id in `obj`: the first string under any alias (top level, then `config`).
pub(super) fn find_game_id(obj: &Map<String, Value>) -> Option<&str> {
    lookup(obj, GAME_KEYS, Value::is_string).and_then(Value::as_str)
}

/// The value under `key` (top level, then `config`).
pub(super) fn find_key<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    lookup(obj, &[key], not_null)
}

/// The canonical `seed` / `game_id` keys `obj` lacks but holds under an alias or in a nested
/// `config`, ready to be inserted (original keys are kept).
pub(super) fn canonical_additions(obj: &Map<String, Value>) -> Vec<(String, Value)> {
    let mut adds = Vec::new();
    if !obj.contains_key("seed") {
        if let Some(seed) = find_seed(obj) {
            adds.push(("seed".to_owned(), seed.clone()));
        }
    }
    if !obj.contains_key("game_id") {
        if let Some(game) = find_game_id(obj) {
            adds.push(("game_id".to_owned(), Value::String(game.to_owned())));
        }
    }
    adds
}

/// Finds seed, game id, control mode and agent of an episode: the record's own `agent_id` /
/// `control_mode` fields first, then its `metadata_json` object (top level, then a nested
/// `config`). Never fails: an unparsable metadata or an unknown mode yields `None` / `Unknown`.
pub fn discover_episode_meta(ep: &RunEpisode) -> EpisodeMeta {
    let meta = serde_json::from_str::<Value>(&ep.metadata_json).ok();
    let obj = meta.as_ref().and_then(Value::as_object);
    let from_meta = |key: &str| {
        obj.and_then(|o| find_key(o, key))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let agent_id = Some(ep.agent_id.as_str())
        .filter(|s| !s.is_empty())
        .or_else(|| from_meta("agent_id"))
        .map(str::to_owned);
    let mode_text = Some(ep.control_mode.as_str())
        .filter(|s| !s.trim().is_empty())
        .or_else(|| from_meta("control_mode"));
    EpisodeMeta {
        seed: obj.and_then(find_seed).cloned(),
        game_id: obj.and_then(find_game_id).map(str::to_owned),
        control_mode: mode_text
            .and_then(|m| m.parse().ok())
            .unwrap_or(ControlMode::Unknown),
        agent_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn aliases_and_nested_config_are_found_canonical_first() {
        let o = obj(json!({"env": "A", "env_id": "B", "config": {"game_id": "C", "seed": 9}}));
        assert_eq!(find_game_id(&o), Some("B"));
        assert_eq!(find_seed(&o), Some(&json!(9)));
        let o = obj(json!({"env": {"not": "a string"}, "game": "G"}));
        assert_eq!(find_game_id(&o), Some("G"));
    }

    #[test]
    fn canonical_keys_are_added_once_and_originals_kept() {
        let mut o = obj(json!({"env_id": "FrozenLake-v2", "config": {"seed": 123}}));
        let adds = canonical_additions(&o);
        o.extend(adds);
        assert_eq!(o["game_id"], json!("FrozenLake-v2"));
        assert_eq!(o["seed"], json!(123));
        assert_eq!(o["env_id"], json!("FrozenLake-v2"));
        assert!(
            canonical_additions(&o).is_empty(),
            "second pass adds nothing"
        );
    }

    #[test]
    fn episode_fields_win_over_metadata_and_bad_input_is_unknown() {
        let ep = RunEpisode {
            agent_id: "top".into(),
            metadata_json: r#"{"agent_id":"inner","control_mode":"agent_only","game":"G"}"#.into(),
            ..Default::default()
        };
        let m = discover_episode_meta(&ep);
        assert_eq!(m.agent_id.as_deref(), Some("top"));
        assert_eq!(m.control_mode, ControlMode::Agent);
        assert_eq!(m.game_id.as_deref(), Some("G"));
        assert_eq!(m.seed, None);
        let bad = RunEpisode {
            control_mode: "telepathy".into(),
            metadata_json: "{oops".into(),
            ..Default::default()
        };
        assert_eq!(discover_episode_meta(&bad), EpisodeMeta::default());
    }
}
