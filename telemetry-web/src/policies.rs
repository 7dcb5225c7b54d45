//! The dashboard's policy views (issue 19): the inventory with its filters and its invalid
//! files, one policy (optionally re-hashed), a run's policies and evaluation links with its
//! results, and "evaluate this policy" (SubmitRun with an evaluation spec).
//!
//! Everything goes through the server's Policies service and run control in-process
//! ([`telemetry_server::LocalAccess`]), so the equip checks, the inventory's scan limit and
//! the evaluation's episode cap are the service's own. The inventory is served as the service
//! returns it (its scan is bounded by the inventory's file limit; `truncated` says so).

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use telemetry_core::{
    pb::{
        EvaluationSpec, GetPolicyRequest, InvalidPolicyFile, ListPoliciesRequest, ListTagsRequest,
        PolicyManifest, SubmitRunRequest, WorkerCommand,
    },
    timestamp,
};

use crate::{AppState, WebError, WebStats};

/// The scalar tags an evaluation run's results are stored under (by the server).
pub const EVAL_TAGS: [&str; 4] = [
    "eval/episodes",
    "eval/success_rate",
    "eval/mean_return",
    "eval/std_return",
];

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/policies", get(list))
        .route("/policy", get(one))
        .route("/evaluate", post(evaluate))
        .route("/runs/{run}/info", get(run_info))
}

fn manifest_json(m: &PolicyManifest) -> Value {
    json!({
        "policy_id": m.policy_id,
        "env_id": m.env_id,
        "agent_id": m.agent_id,
        "observation_space": m.observation_space,
        "action_space": m.action_space,
        "control_mode": m.control_mode,
        "format": m.format,
        "payload_version": m.payload_version,
        "source_run_id": m.source_run_id,
        "created_ms": m.created_at.as_ref().map(|t| timestamp::to_unix_nanos(t) / 1_000_000),
        "size_bytes": m.size_bytes,
        "sha256": m.sha256,
        "origin": m.origin,
    })
}

fn invalid_json(i: &InvalidPolicyFile) -> Value {
    json!({ "path": i.path, "kind": i.kind, "reason": i.reason })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    env: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    format: String,
}

/// `GET /api/policies?env=&agent=&format=`: the inventory (filtered) and every invalid file
/// with its reason.
async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, WebError> {
    let r = st
        .access
        .list_policies(ListPoliciesRequest {
            env_id: q.env,
            agent_id: q.agent,
            format: q.format,
        })
        .await?;
    Ok(Json(json!({
        "policies": r.policies.iter().map(manifest_json).collect::<Vec<_>>(),
        "invalid": r.invalid.iter().map(invalid_json).collect::<Vec<_>>(),
        "truncated": r.truncated,
    })))
}

#[derive(Debug, Deserialize)]
struct OneQuery {
    id: String,
    #[serde(default)]
    verify: bool,
}

/// `GET /api/policy?id=ID&verify=true`: one manifest; with `verify`, whether the file still
/// hashes to its digest.
async fn one(
    State(st): State<AppState>,
    Query(q): Query<OneQuery>,
) -> Result<Json<Value>, WebError> {
    let r = st
        .access
        .get_policy(GetPolicyRequest {
            policy_id: q.id,
            verify: q.verify,
        })
        .await?;
    Ok(Json(json!({
        "manifest": r.manifest.as_ref().map(manifest_json),
        "verified": q.verify,
        "digest_matches": r.digest_matches,
        "current_sha256": r.current_sha256,
    })))
}

#[derive(Debug, Deserialize)]
struct EvaluateForm {
    policy_id: String,
    episodes: u64,
    argv: Vec<String>,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    working_dir: String,
    #[serde(default)]
    run_id: String,
    #[serde(default)]
    source_run_id: String,
    #[serde(default)]
    agent_id: String,
    #[serde(default)]
    game_id: String,
    seed: Option<u64>,
}

/// `POST /api/evaluate`: an evaluation run of a policy (control mode replay, no exploration),
/// checked like every submission; returns its run id.
async fn evaluate(
    State(st): State<AppState>,
    Json(f): Json<EvaluateForm>,
) -> Result<Json<Value>, WebError> {
    if f.argv.is_empty() {
        return Err(WebError::BadRequest("the command (argv) is empty".into()));
    }
    if f.policy_id.is_empty() {
        return Err(WebError::BadRequest("policy_id is empty".into()));
    }
    let resp = st
        .access
        .submit_run(SubmitRunRequest {
            run_id: f.run_id,
            command: Some(WorkerCommand {
                argv: f.argv,
                env: f.env,
                working_dir: f.working_dir,
                legacy_jsonl: false,
            }),
            agent_id: f.agent_id.clone(),
            control_mode: "replay".into(),
            game_id: f.game_id,
            seed: f.seed,
            evaluate: Some(EvaluationSpec {
                policy_id: f.policy_id,
                episodes: f.episodes,
                source_run_id: f.source_run_id,
                agent_id: f.agent_id,
                requirements: None,
            }),
            ..Default::default()
        })
        .await?;
    WebStats::bump(&st.stats.evaluations_submitted, 1);
    Ok(Json(json!({ "run_id": resp.run_id })))
}

/// `GET /api/runs/{run}/info`: what the daemon knows of a run beyond its records: the
/// policies equipped per agent, for an evaluation run its source run, policy and plan, and its
/// results (the `eval/*` scalars) once stored.
async fn run_info(
    State(st): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<Value>, WebError> {
    let info = st.access.run_info(&run);
    let tags = st
        .access
        .list_tags(ListTagsRequest {
            run_id: run.clone(),
        })
        .await?;
    let mut results = serde_json::Map::new();
    for t in &tags.tags {
        if EVAL_TAGS.contains(&t.tag.as_str()) && t.last_value.is_finite() {
            results.insert(
                t.tag.trim_start_matches("eval/").to_owned(),
                json!(t.last_value),
            );
        }
    }
    let Some(info) = info else {
        return Ok(Json(json!({
            "run_id": run, "known": false, "policy_bindings": [], "evaluation": null,
            "results": if results.is_empty() { Value::Null } else { Value::Object(results) },
        })));
    };
    let plan = serde_json::from_str::<Value>(&info.metadata_json)
        .ok()
        .and_then(|m| m.get("evaluation").cloned());
    let evaluation = if info.evaluation_source_policy_id.is_empty() && plan.is_none() {
        Value::Null
    } else {
        json!({
            "source_run_id": info.evaluation_source_run_id,
            "policy_id": info.evaluation_source_policy_id,
            "plan": plan,
        })
    };
    Ok(Json(json!({
        "run_id": info.run_id,
        "known": true,
        "state": telemetry_core::pb::RunState::try_from(info.state)
            .map(|s| s.as_str_name().trim_start_matches("RUN_STATE_").to_ascii_lowercase())
            .unwrap_or_default(),
        "agent_id": info.agent_id,
        "control_mode": info.control_mode,
        "game_id": info.game_id,
        "policy_bindings": info.policy_bindings.iter().map(|b| json!({
            "agent_id": b.agent_id, "policy_id": b.policy_id, "policy_digest": b.policy_digest,
        })).collect::<Vec<_>>(),
        "evaluation": evaluation,
        "results": if results.is_empty() { Value::Null } else { Value::Object(results) },
    })))
}
