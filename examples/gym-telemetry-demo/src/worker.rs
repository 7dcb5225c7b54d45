//! The built-in demo worker: N agents, each with its own grid world, Q-learner and shim.
//!
//! It is what the demo runs in-process and what `gym-telemetry-demo worker` runs as a process
//! (for `SubmitRun`), so it reads its endpoint and run id like any worker would.

use std::{path::PathBuf, thread, time::Duration};

use anyhow::Context;
use serde_json::json;
use telemetry_core::{
    pb::{CompletionStatus, RunCompleted, RunEpisode, RunStarted, RunStep, Scalar},
    timestamp, ControlMode,
};
use telemetry_shim::{Metadata, ShimConfig, Telemetry};

use super::gridworld::{GridWorld, QAgent, Rng};

/// The game id the demo reports.
pub const GAME_ID: &str = "GridWorld-6x6-v0";
/// Step limit per episode (then the episode is truncated).
pub const MAX_STEPS: u64 = 40;

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The daemon.
    pub endpoint: String,
    /// The run.
    pub run_id: String,
    /// Agents (each `agent-<i>`).
    pub agents: u32,
    /// Episodes per agent.
    pub episodes: u32,
    /// Pause between steps.
    pub step_delay: Duration,
    /// Seed of agent 0 (agent i uses seed + i).
    pub seed: u64,
    /// Disk queue root (each agent uses a subdirectory).
    pub queue_dir: Option<PathBuf>,
    /// The credential to present (`None`: found as every client finds it).
    pub auth_token: Option<String>,
    /// The control mode its records carry (the demo: `multi_agent`).
    pub control_mode: ControlMode,
}

/// What the worker produced and what its shims reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Steps produced.
    pub steps: u64,
    /// Episodes produced.
    pub episodes: u64,
    /// Records the shims dropped.
    pub dropped: u64,
    /// Records the daemon rejected.
    pub rejected: u64,
}

fn shim_for(cfg: &WorkerConfig, agent: &str) -> anyhow::Result<Telemetry> {
    let mut sc = ShimConfig::from_env().unwrap_or_default();
    sc.endpoint = cfg.endpoint.clone();
    sc.run_id = Some(cfg.run_id.clone());
    sc.agent_id = Some(agent.to_owned());
    sc.control_mode = Some(cfg.control_mode);
    sc.queue_dir = cfg.queue_dir.as_ref().map(|d| d.join(agent));
    if cfg.auth_token.is_some() {
        sc.auth_token = cfg.auth_token.clone();
    }
    Telemetry::new(sc).with_context(|| format!("starting the shim of {agent}"))
}

/// Runs the worker to the end and closes its shims (waiting for the daemon's acks).
pub fn run(cfg: &WorkerConfig) -> anyhow::Result<WorkerReport> {
    let mut shims = Vec::new();
    for i in 0..cfg.agents {
        let agent = format!("agent-{i}");
        let shim = shim_for(cfg, &agent)?;
        shim.set_metadata(Metadata {
            seed: Some(cfg.seed + u64::from(i)),
            game_id: Some(GAME_ID.to_owned()),
            control_mode: Some(cfg.control_mode),
            agent_id: Some(agent.clone()),
            policy_label: Some("q-learning".into()),
            backend: Some("gym-telemetry-demo".into()),
            ..Default::default()
        });
        shims.push((agent, shim));
    }
    if let Some((_, first)) = shims.first() {
        first.run_started(RunStarted {
            run_id: cfg.run_id.clone(),
            timestamp: Some(timestamp::now()),
            config_json: json!({
                "env_id": GAME_ID, "agents": cfg.agents, "episodes": cfg.episodes,
                "seed": cfg.seed, "policy": "tabular q-learning"
            })
            .to_string(),
            control_mode: cfg.control_mode.as_str().into(),
            ..Default::default()
        })?;
    }
    let handles: Vec<_> = shims
        .into_iter()
        .enumerate()
        .map(|(i, (agent, shim))| {
            let cfg = cfg.clone();
            thread::spawn(move || {
                let r = play(&cfg, &agent, &shim, cfg.seed + i as u64);
                (shim, r)
            })
        })
        .collect();
    let mut report = WorkerReport::default();
    let mut shims = Vec::new();
    for h in handles {
        let (shim, r) = h
            .join()
            .map_err(|_| anyhow::anyhow!("an agent thread panicked"))?;
        let (steps, episodes) = r?;
        report.steps += steps;
        report.episodes += episodes;
        shims.push(shim);
    }
    if let Some(first) = shims.first() {
        first.run_completed(RunCompleted {
            run_id: cfg.run_id.clone(),
            timestamp: Some(timestamp::now()),
            status: CompletionStatus::Succeeded as i32,
            exit_code: Some(0),
            ..Default::default()
        })?;
    }
    for shim in shims {
        let stats = shim.stats();
        let _ = shim
            .close(Duration::from_secs(30))
            .context("flushing telemetry to the daemon")?;
        report.dropped += stats.dropped;
        report.rejected += stats.rejected;
    }
    Ok(report)
}

fn play(
    cfg: &WorkerConfig,
    agent: &str,
    shim: &Telemetry,
    seed: u64,
) -> anyhow::Result<(u64, u64)> {
    let mut env = GridWorld::new();
    let mut learner = QAgent::new(env.states());
    let mut rng = Rng::new(seed);
    let (mut steps, mut episodes) = (0u64, 0u64);
    for ep in 0..u64::from(cfg.episodes) {
        let mut s = env.reset();
        let mut total = 0.0;
        let mut terminated = false;
        let mut len = 0u64;
        let mut td = 0.0f64;
        for t in 0..MAX_STEPS {
            let a = learner.act(s, &mut rng);
            let out = env.step(a, 0.1, &mut rng);
            let (q_before, q_after) = learner.learn(s, a, out.reward, out.state, out.terminated);
            total += out.reward;
            td += (q_after - q_before).abs();
            len = t + 1;
            terminated = out.terminated;
            let (row, col) = env.pos(out.state);
            shim.step(RunStep {
                run_id: cfg.run_id.clone(),
                agent_id: agent.to_owned(),
                episode_index: ep,
                step_index: t,
                action_json: a.to_string(),
                observation_json: json!({"state": out.state, "row": row, "col": col}).to_string(),
                reward: out.reward,
                terminated: out.terminated,
                truncated: !out.terminated && t + 1 == MAX_STEPS,
                timestamp: Some(timestamp::now()),
                render_hint_json: json!({"ansi": env.render_ansi(), "rows": 6, "cols": 6})
                    .to_string(),
                info_json:
                    json!({"epsilon": learner.epsilon, "q_before": q_before, "q_after": q_after})
                        .to_string(),
                ..Default::default()
            })?;
            steps += 1;
            s = out.state;
            if !cfg.step_delay.is_zero() {
                thread::sleep(cfg.step_delay);
            }
            if out.terminated {
                break;
            }
        }
        shim.episode_end(RunEpisode {
            run_id: cfg.run_id.clone(),
            agent_id: agent.to_owned(),
            episode_index: ep,
            total_reward: total,
            steps: len,
            terminated,
            truncated: !terminated,
            timestamp: Some(timestamp::now()),
            metadata_json: json!({"success": total > 0.0, "epsilon": learner.epsilon}).to_string(),
            ..Default::default()
        })?;
        episodes += 1;
        // Learning curves against the agent's global step (the Charts tab draws them).
        for (tag, value) in [
            ("charts/epsilon", learner.epsilon),
            ("losses/td_error", td / len.max(1) as f64),
        ] {
            shim.scalar(Scalar {
                run_id: cfg.run_id.clone(),
                agent_id: agent.to_owned(),
                tag: tag.to_owned(),
                value,
                step: i64::try_from(steps).unwrap_or(i64::MAX),
                ..Default::default()
            })?;
        }
        learner.end_episode();
    }
    Ok((steps, episodes))
}
