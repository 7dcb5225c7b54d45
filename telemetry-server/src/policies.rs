//! `gym_telemetry.v1.Policies` and the policy parts of run control: the inventory under
//! `<var-dir>/policies/` served over gRPC, the equip handshake at submission (and for a
//! pending run), the policies file handed to a worker, policies registered from `artifact`
//! events, and the results of evaluation runs stored as scalars.
//!
//! The rules themselves (manifests, discovery, digests, refusals) live in `telemetry-policy`;
//! this module only connects them to runs, auth and the store. Inventory work touches files,
//! so it runs on the blocking pool.

use std::{path::Path, sync::Arc};

use serde_json::Value;
use telemetry_core::{
    pb::{
        policies_server::Policies, Artifact, DeletePolicyRequest, DeletePolicyResponse,
        EquipRequest, EquipResponse, GetPolicyRequest, GetPolicyResponse, ListPoliciesRequest,
        ListPoliciesResponse, PolicyBinding, Record, RegisterPolicyRequest, RegisterPolicyResponse,
        RunInfo, Scalar, SubmitRunRequest,
    },
    timestamp,
};
use telemetry_policy::{
    EquippedPolicy, Evaluation, Inventory, Manifest, Origin, PolicyError, Refusal, Registration,
    Requirements, RunPolicies, POLICIES_FILE_ENV,
};
use telemetry_store::{BackendReader, Filter};
use tonic::{Request, Response, Status};

use crate::{auth::Principal, dispatch::SubmitError, metrics::Metrics, runs::Registry};

/// Most episodes an evaluation run may ask for (and the daemon reads back for its results).
pub const MAX_EVALUATION_EPISODES: u64 = 100_000;
/// Bindings one submission may carry.
pub const MAX_BINDINGS: usize = 64;
/// The environment variable telling an evaluation run's worker how many episodes to play.
pub const EVALUATE_EPISODES_ENV: &str = "GYM_TELEMETRY_EVALUATE_EPISODES";

/// The inventory and what the server needs beside it.
pub struct PolicyContext {
    inventory: Inventory,
    reader: Arc<dyn BackendReader>,
    metrics: Metrics,
}

impl std::fmt::Debug for PolicyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyContext")
            .field("root", &self.inventory.root())
            .finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PolicyError> + Send + 'static,
) -> Result<T, PolicyError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(PolicyError::Invalid(format!("inventory task failed: {e}"))))
}

/// The gRPC status of an inventory error.
pub fn status(e: PolicyError) -> Status {
    match e {
        PolicyError::NotFound(_) => Status::not_found(e.to_string()),
        PolicyError::Conflict(_) => Status::already_exists(e.to_string()),
        PolicyError::Refused(_) => Status::failed_precondition(e.to_string()),
        PolicyError::BadId { .. } | PolicyError::Invalid(_) | PolicyError::TooLarge { .. } => {
            Status::invalid_argument(e.to_string())
        }
        PolicyError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Status::invalid_argument(e.to_string())
        }
        PolicyError::Io { .. } => Status::internal(e.to_string()),
    }
}

impl PolicyContext {
    /// The inventory of `var_dir`, reading evaluation episodes through `reader`.
    pub fn new(var_dir: &Path, reader: Arc<dyn BackendReader>, metrics: Metrics) -> Self {
        PolicyContext {
            inventory: Inventory::in_var_dir(var_dir),
            reader,
            metrics,
        }
    }

    /// Checks one binding against `req`; returns it with the digest the worker must find.
    async fn check_binding(
        &self,
        binding: &PolicyBinding,
        req: Requirements,
    ) -> Result<(PolicyBinding, Manifest), PolicyError> {
        let inv = self.inventory.clone();
        let id = binding.policy_id.clone();
        let manifest = blocking(move || inv.check_equip(&id, &req)).await?;
        let mut b = binding.clone();
        if b.agent_id.is_empty() {
            b.agent_id = manifest.agent_id.clone();
        }
        b.policy_digest = manifest.sha256.clone();
        Ok((b, manifest))
    }

    /// The policy part of a submission: an evaluation spec becomes a `replay` run with its
    /// policy equipped and its plan in the metadata; every binding is checked like `Equip`.
    /// Fills `info`'s bindings and evaluation links.
    pub async fn prepare_submission(
        &self,
        req: &mut SubmitRunRequest,
        info: &mut RunInfo,
    ) -> Result<(), SubmitError> {
        if req.equip.len() > MAX_BINDINGS {
            return Err(SubmitError::TooMany {
                field: "equip",
                count: req.equip.len(),
                limit: MAX_BINDINGS,
            });
        }
        let refused = |e: PolicyError| {
            self.metrics.refuse_submission("policy");
            match e {
                PolicyError::NotFound(_) => SubmitError::PolicyNotFound(e.to_string()),
                PolicyError::Refused(_) => SubmitError::PolicyRefused(e.to_string()),
                other => SubmitError::Invalid(other.to_string()),
            }
        };
        if let Some(spec) = req.evaluate.clone() {
            if spec.episodes == 0 || spec.episodes > MAX_EVALUATION_EPISODES {
                return Err(SubmitError::Invalid(format!(
                    "evaluate.episodes must be 1 to {MAX_EVALUATION_EPISODES}"
                )));
            }
            if !matches!(req.control_mode.as_str(), "" | "replay") {
                return Err(SubmitError::Invalid(format!(
                    "an evaluation run plays in control mode replay, not {:?}",
                    req.control_mode
                )));
            }
            let agent = [&spec.agent_id, &req.agent_id]
                .into_iter()
                .find(|a| !a.is_empty())
                .cloned()
                .unwrap_or_default();
            let binding = PolicyBinding {
                agent_id: agent,
                policy_id: spec.policy_id.clone(),
                policy_digest: String::new(),
            };
            let reqs = Requirements::from_pb(spec.requirements.as_ref(), &req.game_id);
            let (binding, manifest) = self.check_binding(&binding, reqs).await.map_err(refused)?;
            req.control_mode = "replay".into();
            if req.agent_id.is_empty() {
                req.agent_id = binding.agent_id.clone();
            }
            if req.game_id.is_empty() {
                req.game_id = manifest.env_id.clone();
            }
            let source = if spec.source_run_id.is_empty() {
                manifest.source_run_id.clone()
            } else {
                spec.source_run_id.clone()
            };
            let plan = Evaluation {
                episodes: spec.episodes,
                policy_id: manifest.policy_id.clone(),
                source_run_id: source.clone(),
                agent_id: binding.agent_id.clone(),
            };
            req.metadata_json = with_evaluation(&req.metadata_json, &plan)?;
            info.evaluation_source_run_id = source;
            info.evaluation_source_policy_id = manifest.policy_id;
            info.policy_bindings.push(binding);
        }
        for b in &req.equip {
            let reqs = Requirements::from_pb(None, &req.game_id);
            let (b, _) = self.check_binding(b, reqs).await.map_err(refused)?;
            if info
                .policy_bindings
                .iter()
                .any(|x| x.agent_id == b.agent_id)
            {
                return Err(SubmitError::Invalid(format!(
                    "agent {:?} is equipped twice",
                    b.agent_id
                )));
            }
            info.policy_bindings.push(b);
        }
        info.control_mode.clone_from(&req.control_mode);
        info.agent_id.clone_from(&req.agent_id);
        info.game_id.clone_from(&req.game_id);
        info.metadata_json.clone_from(&req.metadata_json);
        Ok(())
    }

    /// Writes `<run_dir>/policies.json` for a run with bindings, re-checking each digest
    /// (time passes between submission and start); returns the environment the worker gets.
    pub async fn worker_env(
        &self,
        run_dir: &Path,
        info: &RunInfo,
    ) -> Result<Vec<(String, String)>, PolicyError> {
        if info.policy_bindings.is_empty() {
            return Ok(Vec::new());
        }
        let inv = self.inventory.clone();
        let bindings = info.policy_bindings.clone();
        let evaluation = evaluation_of(&info.metadata_json);
        let path = run_dir.join("policies.json");
        let file = path.clone();
        let eval = evaluation.clone();
        blocking(move || {
            let mut run = RunPolicies {
                policies: Vec::new(),
                evaluation: eval,
            };
            for b in bindings {
                let v = inv.verify(&b.policy_id)?;
                if v.current_sha256 != b.policy_digest {
                    return Err(PolicyError::Refused(Refusal::DigestMismatch {
                        expected: b.policy_digest,
                        actual: v.current_sha256,
                    }));
                }
                let payload = inv.payload_path(&b.policy_id)?;
                let payload = std::fs::canonicalize(&payload)
                    .map_err(|e| PolicyError::Invalid(format!("{}: {e}", payload.display())))?;
                run.policies.push(EquippedPolicy {
                    agent_id: b.agent_id,
                    policy_id: b.policy_id,
                    sha256: b.policy_digest,
                    path: payload,
                    manifest: v.manifest,
                });
            }
            run.write(&file).map_err(|e| PolicyError::Io {
                context: format!("writing {}", file.display()),
                source: e,
            })
        })
        .await?;
        let mut env = vec![(POLICIES_FILE_ENV.to_owned(), path.display().to_string())];
        if let Some(e) = evaluation {
            env.push((EVALUATE_EPISODES_ENV.to_owned(), e.episodes.to_string()));
        }
        Ok(env)
    }

    /// Registers the file of a stored `artifact` event of kind `policy`, with its run as the
    /// provenance. Failures are logged and counted (`policy_artifacts_total{outcome}`), never
    /// fatal: the event itself is stored either way.
    pub async fn register_artifact(&self, artifact: Artifact, game_id: String) {
        let inv = self.inventory.clone();
        let a = artifact.clone();
        let outcome = blocking(move || {
            let path = Path::new(&a.path);
            if !path.is_absolute() {
                return Err(PolicyError::Invalid(format!(
                    "{:?} is relative: the daemon cannot tell what it is relative to",
                    a.path
                )));
            }
            let info: serde_json::Map<String, Value> = serde_json::from_str(&a.info_json)
                .ok()
                .and_then(|v: Value| v.as_object().cloned())
                .unwrap_or_default();
            let text = |k: &str| info.get(k).and_then(Value::as_str).unwrap_or_default();
            // The format: the event's `format` when it is `name/vN`, else the predecessor's.
            let fv = telemetry_policy::FormatVersion::parse(text("format")).unwrap_or(
                telemetry_policy::FormatVersion {
                    format: "q_table".into(),
                    version: 1,
                },
            );
            let mut env_id = text("env_id").to_owned();
            if env_id.is_empty() && fv.to_string() == telemetry_policy::legacy::LEGACY_FORMAT {
                let bytes = std::fs::read(path).map_err(|e| PolicyError::Io {
                    context: format!("reading {}", a.path),
                    source: e,
                })?;
                if let Ok(t) = telemetry_policy::legacy::load_q_table(&bytes) {
                    env_id = t
                        .metadata
                        .get("env_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                }
            }
            if env_id.is_empty() {
                env_id = game_id;
            }
            inv.register(
                path,
                Registration {
                    env_id,
                    agent_id: text("agent_id").to_owned(),
                    observation_space: text("observation_space").to_owned(),
                    action_space: text("action_space").to_owned(),
                    control_mode: text("control_mode").to_owned(),
                    format: fv.format,
                    payload_version: fv.version,
                    source_run_id: a.run_id.clone(),
                    subdir: a.run_id.clone(),
                    ..Default::default()
                },
                Origin::Artifact,
            )
        })
        .await;
        match outcome {
            Ok(m) => {
                self.metrics.policy_artifact("registered");
                tracing::info!(run_id = %artifact.run_id, policy_id = %m.policy_id, "registered a policy from an artifact event");
            }
            Err(e) => {
                self.metrics.policy_artifact("refused");
                tracing::warn!(run_id = %artifact.run_id, path = %artifact.path, error = %e, "policy artifact not registered");
            }
        }
    }

    /// For an evaluation run that ended: reads its agent's episodes and stores the results as
    /// scalars of the run (`eval/episodes`, `eval/success_rate`, `eval/mean_return`,
    /// `eval/std_return`, at step = episodes), before its completion is stored.
    pub async fn record_evaluation(&self, registry: &Registry, info: &RunInfo) {
        let Some(plan) = evaluation_of(&info.metadata_json) else {
            return;
        };
        let reader = self.reader.clone();
        let run_id = info.run_id.clone();
        let agent = plan.agent_id.clone();
        let read = tokio::task::spawn_blocking(move || {
            let filter = Filter {
                run_id: Some(run_id),
                agent_id: if agent.is_empty() { None } else { Some(agent) },
                ..Filter::default()
            };
            let mut since = 0;
            let mut out = Vec::new();
            loop {
                let page = reader.episodes_page(since, &filter, 1024)?;
                let Some(last) = page.last() else { break };
                since = last.seq_id;
                out.extend(page);
                if out.len() as u64 >= MAX_EVALUATION_EPISODES {
                    break;
                }
            }
            Ok::<_, telemetry_store::StoreError>(out)
        })
        .await;
        let episodes = match read {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::warn!(run_id = %info.run_id, error = %e, "cannot read the evaluation's episodes");
                return;
            }
            Err(e) => {
                tracing::warn!(run_id = %info.run_id, error = %e, "evaluation read failed");
                return;
            }
        };
        let r = EvaluationResult::of(&episodes);
        let step = i64::try_from(r.episodes).unwrap_or(i64::MAX);
        let now = timestamp::now();
        let producer = format!("eval.{}", info.run_id);
        let records: Vec<Record> = [
            ("eval/episodes", r.episodes as f64),
            ("eval/success_rate", r.success_rate),
            ("eval/mean_return", r.mean_return),
            ("eval/std_return", r.std_return),
        ]
        .into_iter()
        .zip(1u64..)
        .map(|((tag, value), seq)| {
            Scalar {
                run_id: info.run_id.clone(),
                agent_id: plan.agent_id.clone(),
                tag: tag.into(),
                value,
                step,
                timestamp: Some(now),
                producer_id: producer.clone(),
                producer_seq: seq,
                seq_id: 0,
            }
            .into()
        })
        .collect();
        match registry.writer().append(records, Vec::new()).await {
            Ok(_) => {
                tracing::info!(run_id = %info.run_id, episodes = r.episodes, success_rate = r.success_rate, "evaluation results stored")
            }
            Err(e) => {
                tracing::warn!(run_id = %info.run_id, error = %e, "evaluation results not stored")
            }
        }
    }
}

/// Success rate and return statistics of an evaluation's episodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvaluationResult {
    /// Episodes stored.
    pub episodes: u64,
    /// Share of successful episodes: the episode's `metadata.success` when it is a bool, else
    /// terminated and not truncated.
    pub success_rate: f64,
    /// Mean total reward.
    pub mean_return: f64,
    /// Population standard deviation of the total reward.
    pub std_return: f64,
}

impl EvaluationResult {
    /// Over `episodes` (all zero when empty).
    pub fn of(episodes: &[telemetry_core::pb::RunEpisode]) -> Self {
        let n = episodes.len();
        if n == 0 {
            return EvaluationResult {
                episodes: 0,
                success_rate: 0.0,
                mean_return: 0.0,
                std_return: 0.0,
            };
        }
        let success = episodes
            .iter()
            .filter(|e| {
                serde_json::from_str::<Value>(&e.metadata_json)
                    .ok()
                    .and_then(|m| m.get("success").and_then(Value::as_bool))
                    .unwrap_or(e.terminated && !e.truncated)
            })
            .count();
        let nf = n as f64;
        let mean = episodes.iter().map(|e| e.total_reward).sum::<f64>() / nf;
        let var = episodes
            .iter()
            .map(|e| (e.total_reward - mean).powi(2))
            .sum::<f64>()
            / nf;
        EvaluationResult {
            episodes: n as u64,
            success_rate: success as f64 / nf,
            mean_return: mean,
            std_return: var.sqrt(),
        }
    }
}

/// `metadata_json` with `"evaluation": plan` merged in (it must be an object or empty).
fn with_evaluation(metadata_json: &str, plan: &Evaluation) -> Result<String, SubmitError> {
    let mut obj = if metadata_json.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_str::<Value>(metadata_json) {
            Ok(Value::Object(o)) => o,
            _ => {
                return Err(SubmitError::Invalid(
                    "metadata_json must be a JSON object for an evaluation run".into(),
                ))
            }
        }
    };
    obj.insert(
        "evaluation".into(),
        serde_json::to_value(plan).unwrap_or(Value::Null),
    );
    Ok(Value::Object(obj).to_string())
}

/// The evaluation plan kept in a run's metadata, if it is an evaluation run.
pub fn evaluation_of(metadata_json: &str) -> Option<Evaluation> {
    let v: Value = serde_json::from_str(metadata_json).ok()?;
    serde_json::from_value(v.get("evaluation")?.clone()).ok()
}

/// The Policies service.
#[derive(Clone)]
pub struct PoliciesService {
    ctx: Arc<PolicyContext>,
    registry: Registry,
}

impl PoliciesService {
    /// A service over the inventory and the run registry.
    pub fn new(ctx: Arc<PolicyContext>, registry: Registry) -> Self {
        PoliciesService { ctx, registry }
    }
}

#[tonic::async_trait]
impl Policies for PoliciesService {
    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let f = request.into_inner();
        let inv = self.ctx.inventory.clone();
        let listing = blocking(move || inv.scan()).await.map_err(status)?;
        let keep = |want: &str, have: &str| want.is_empty() || want == have;
        Ok(Response::new(ListPoliciesResponse {
            policies: listing
                .policies
                .iter()
                .filter(|m| {
                    keep(&f.env_id, &m.env_id)
                        && keep(&f.agent_id, &m.agent_id)
                        && keep(&f.format, &m.format)
                })
                .map(Manifest::to_pb)
                .collect(),
            invalid: listing.invalid.iter().map(|i| i.to_pb()).collect(),
            truncated: listing.truncated,
        }))
    }

    async fn get_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let r = request.into_inner();
        let inv = self.ctx.inventory.clone();
        if r.verify {
            let v = blocking(move || inv.verify(&r.policy_id))
                .await
                .map_err(status)?;
            return Ok(Response::new(GetPolicyResponse {
                manifest: Some(v.manifest.to_pb()),
                digest_matches: v.matches(),
                current_sha256: v.current_sha256,
            }));
        }
        let m = blocking(move || inv.get(&r.policy_id))
            .await
            .map_err(status)?;
        Ok(Response::new(GetPolicyResponse {
            manifest: Some(m.to_pb()),
            ..Default::default()
        }))
    }

    async fn register_policy(
        &self,
        request: Request<RegisterPolicyRequest>,
    ) -> Result<Response<RegisterPolicyResponse>, Status> {
        Principal::of(&request).require_operator("RegisterPolicy")?;
        let r = request.into_inner();
        if !Path::new(&r.path).is_absolute() {
            return Err(Status::invalid_argument(
                "path must be absolute (it is read by the daemon)",
            ));
        }
        let reg = Registration::from_pb(&r.manifest.unwrap_or_default()).map_err(status)?;
        let inv = self.ctx.inventory.clone();
        let m = blocking(move || inv.register(Path::new(&r.path), reg, Origin::Registered))
            .await
            .map_err(status)?;
        Ok(Response::new(RegisterPolicyResponse {
            manifest: Some(m.to_pb()),
        }))
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        Principal::of(&request).require_operator("DeletePolicy")?;
        let id = request.into_inner().policy_id;
        let runs = self.registry.equipped_by(&id);
        if !runs.is_empty() {
            return Err(Status::failed_precondition(format!(
                "equipped: policy {id:?} is equipped to runs {runs:?} that have not ended"
            )));
        }
        let inv = self.ctx.inventory.clone();
        blocking(move || inv.delete(&id)).await.map_err(status)?;
        Ok(Response::new(DeletePolicyResponse {}))
    }

    async fn equip(
        &self,
        request: Request<EquipRequest>,
    ) -> Result<Response<EquipResponse>, Status> {
        Principal::of(&request).require_operator("Equip")?;
        let r = request.into_inner();
        let binding = r
            .binding
            .ok_or_else(|| Status::invalid_argument("binding is required"))?;
        let run = self.registry.get(&r.run_id);
        let game = run.as_ref().map(|i| i.game_id.clone()).unwrap_or_default();
        if run.is_none() && !r.check_only {
            return Err(Status::not_found(format!("no run {:?}", r.run_id)));
        }
        let reqs = Requirements::from_pb(r.requirements.as_ref(), &game);
        let (mut binding, manifest) = self
            .ctx
            .check_binding(&binding, reqs)
            .await
            .map_err(status)?;
        if binding.agent_id.is_empty() {
            binding.agent_id = run.map(|i| i.agent_id).unwrap_or_default();
        }
        if !r.check_only {
            self.registry
                .bind_policy(&r.run_id, binding.clone())
                .await
                .map_err(Status::failed_precondition)?;
        }
        Ok(Response::new(EquipResponse {
            binding: Some(binding),
            manifest: Some(manifest.to_pb()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_core::pb::RunEpisode;

    #[test]
    fn evaluation_results_use_success_flags_and_population_std() {
        let ep = |r: f64, meta: &str, terminated: bool| RunEpisode {
            total_reward: r,
            metadata_json: meta.into(),
            terminated,
            ..Default::default()
        };
        let r = EvaluationResult::of(&[
            ep(1.0, r#"{"success": true}"#, true),
            ep(0.0, r#"{"success": false}"#, true),
            ep(1.0, "", true),
            ep(0.0, "", false),
        ]);
        assert_eq!(r.episodes, 4);
        assert_eq!(r.success_rate, 0.5);
        assert_eq!(r.mean_return, 0.5);
        assert_eq!(r.std_return, 0.5);
        assert_eq!(EvaluationResult::of(&[]).episodes, 0);
    }

    #[test]
    fn the_plan_rides_in_the_metadata() {
        let plan = Evaluation {
            episodes: 7,
            policy_id: "E/p.json".into(),
            source_run_id: "r".into(),
            agent_id: "a".into(),
        };
        let m = with_evaluation(r#"{"k": 1}"#, &plan).expect("merge");
        assert_eq!(evaluation_of(&m), Some(plan.clone()));
        assert!(m.contains(r#""k":1"#));
        assert!(with_evaluation("[1]", &plan).is_err());
        assert_eq!(evaluation_of(r#"{"k": 1}"#), None);
    }
}
