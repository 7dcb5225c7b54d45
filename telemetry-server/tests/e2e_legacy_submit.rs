//! The predecessor's `SubmitRun` with its TrainRunConfig, driven by a client generated from its
//! proto: the worker module under the proxy, the status sequence and `since_seq`, GPU slots,
//! the time limit, validation errors, the demo worker and the older `argv` form.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};
use telemetry_core::pb::legacy::{
    trainer_service_client::TrainerServiceClient, CancelRunRequest, ListRunsRequest, RunRecord,
    RunStatus, StreamStepsRequest, SubmitRunRequest, WatchRunsRequest,
};
use telemetry_server::ServerHandle;
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code};

type Client = TrainerServiceClient<Channel>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A TrainRunConfig running the fixture worker module with `worker_config`.
fn train_config(name: &str, gpus: Value, worker_config: Value) -> Value {
    json!({
        "run_name": name,
        "entry_point": "python3",
        "arguments": ["-m", "legacy_gui_worker"],
        "environment": {
            "PYTHONPATH": fixtures().to_string_lossy(),
            "LEGACY_TEST_VAR": "from-environment",
        },
        "resources": {"cpus": 1, "memory_mb": 512, "gpus": gpus},
        "artifacts": {"output_prefix": "runs/test"},
        "metadata": {"worker": {
            "module": "legacy_gui_worker",
            "arguments": ["--tag", name],
            "config": worker_config,
        }},
    })
}

async fn daemon(dir: &std::path::Path, gpus: Vec<u32>) -> (ServerHandle, Client) {
    let mut cfg = config(dir);
    cfg.gpus = gpus;
    cfg.demo_exe = demo_exe();
    let d = telemetry_server::start(cfg).await.unwrap();
    let c = TrainerServiceClient::new(channel(&d).await);
    (d, c)
}

async fn submit(
    c: &mut Client,
    run_id: &str,
    cfg: &Value,
) -> Result<(String, String), tonic::Status> {
    let r = c
        .submit_run(SubmitRunRequest {
            run_id: run_id.into(),
            config_json: cfg.to_string(),
        })
        .await?
        .into_inner();
    Ok((r.run_id, r.digest))
}

async fn watch(c: &mut Client, since_seq: u64) -> tonic::Streaming<RunRecord> {
    c.watch_runs(WatchRunsRequest {
        status_filter: Vec::new(),
        since_seq,
    })
    .await
    .unwrap()
    .into_inner()
}

fn is_final(s: i32) -> bool {
    [
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ]
    .iter()
    .any(|f| *f as i32 == s)
}

/// Every update of `run_id` up to its final one.
async fn updates_until_final(w: &mut tonic::Streaming<RunRecord>, run_id: &str) -> Vec<RunRecord> {
    bounded(run_id, async {
        let mut got = Vec::new();
        loop {
            let r = w.next().await.unwrap().unwrap();
            if r.run_id == run_id {
                let done = is_final(r.status);
                got.push(r);
                if done {
                    return got;
                }
            }
        }
    })
    .await
}

async fn until_status(
    w: &mut tonic::Streaming<RunRecord>,
    run_id: &str,
    s: RunStatus,
) -> RunRecord {
    bounded(run_id, async {
        loop {
            let r = w.next().await.unwrap().unwrap();
            if r.run_id == run_id && r.status == s as i32 {
                return r;
            }
        }
    })
    .await
}

fn statuses(v: &[RunRecord]) -> Vec<RunStatus> {
    v.iter()
        .map(|r| RunStatus::try_from(r.status).unwrap())
        .collect()
}

async fn all_steps(c: &mut Client, run_id: &str) -> Vec<telemetry_core::pb::legacy::RunStep> {
    let mut s = c
        .stream_run_steps(StreamStepsRequest {
            run_id: run_id.into(),
            since_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut steps = Vec::new();
    while let Some(step) = bounded("steps", s.next()).await {
        steps.push(step.unwrap());
    }
    steps
}

#[tokio::test]
async fn a_train_run_config_runs_its_worker_module_under_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, mut c) = daemon(dir.path(), vec![3, 5]).await;
    let mut w = watch(&mut c, 0).await;
    let cfg = train_config(
        "gui-run",
        json!({"requested": 1, "mandatory": true}),
        json!({"episodes": 2, "steps": 3, "agent_id": "bdi-agent"}),
    );
    let (run_id, digest) = submit(&mut c, "", &cfg).await.unwrap();
    // The run id is the hex SHA-1 derived from name, time and digest; the digest the SHA-256.
    assert_eq!(run_id.len(), 40);
    assert!(run_id.chars().all(|ch| ch.is_ascii_hexdigit()));
    let expected = telemetry_server::parse_train_run_config(&cfg).unwrap();
    assert_eq!(digest, expected.digest());

    let ups = updates_until_final(&mut w, &run_id).await;
    assert_eq!(
        statuses(&ups),
        vec![
            RunStatus::Pending,
            RunStatus::Dispatching,
            RunStatus::Running,
            RunStatus::Completed
        ],
        "{ups:?}"
    );
    assert!(ups.windows(2).all(|p| p[0].seq_id < p[1].seq_id), "{ups:?}");
    assert!(ups.iter().all(|r| r.digest == digest));
    let running = &ups[2];
    assert_eq!(
        (running.gpu_slot, running.gpu_slots.clone()),
        (Some(3), vec![3])
    );

    // since_seq: only the updates after it.
    let mut later = watch(&mut c, running.seq_id).await;
    let first = bounded("since_seq", later.next()).await.unwrap().unwrap();
    assert_eq!(first.run_id, run_id);
    assert_eq!(first.status, RunStatus::Completed as i32);
    assert_eq!(first.seq_id, ups[3].seq_id);

    // The worker's JSONL went through the proxy, with the agent id of metadata.worker.config.
    let steps = all_steps(&mut c, &run_id).await;
    assert_eq!(steps.len(), 6);
    assert!(steps.iter().all(|s| s.agent_id == "bdi-agent"), "{steps:?}");
    // The worker echoes what it saw in its first step's observation.
    let seen: Value = serde_json::from_str(&steps[0].observation_json).unwrap();
    let path = dir
        .path()
        .join("runs")
        .join(&run_id)
        .join(telemetry_server::WORKER_CONFIG_FILE);
    let path = path.to_string_lossy();
    assert_eq!(seen["env"]["CUDA_VISIBLE_DEVICES"], "3");
    assert_eq!(seen["env"]["LEGACY_TEST_VAR"], "from-environment");
    assert_eq!(seen["env"]["TRAINER_WORKER_CONFIG_PATH"], path.as_ref());
    assert_eq!(seen["config_arg"], path.as_ref());
    assert_eq!(seen["tag"], "gui-run");
    assert_eq!(seen["worker_config"]["agent_id"], "bdi-agent");

    let list = c
        .list_runs(ListRunsRequest {
            status_filter: vec![RunStatus::Completed as i32],
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].run_id, run_id);
    assert!(
        list[0].gpu_slots.is_empty(),
        "slots are released at the end"
    );
}

#[tokio::test]
async fn mandatory_gpus_that_cannot_be_had_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, mut c) = daemon(dir.path(), vec![0]).await;
    let mut w = watch(&mut c, 0).await;
    let long = json!({"episodes": 1, "steps": 100_000, "step_delay": 0.05});
    let a = train_config(
        "a",
        json!({"requested": 1, "mandatory": true}),
        long.clone(),
    );
    let (a_id, _) = submit(&mut c, "gpu-a", &a).await.unwrap();
    let running = until_status(&mut w, &a_id, RunStatus::Running).await;
    assert_eq!(running.gpu_slots, vec![0]);

    let b = train_config("b", json!({"requested": 1, "mandatory": true}), long);
    let err = submit(&mut c, "gpu-b", &b).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("mandatory"), "{err:?}");

    // Not mandatory: it runs without, CUDA_VISIBLE_DEVICES empty.
    let soft = train_config(
        "soft",
        json!({"requested": 1}),
        json!({"episodes": 1, "steps": 1}),
    );
    let (soft_id, _) = submit(&mut c, "gpu-soft", &soft).await.unwrap();
    let ups = updates_until_final(&mut w, &soft_id).await;
    assert_eq!(ups.last().unwrap().status, RunStatus::Completed as i32);
    assert!(ups
        .iter()
        .all(|r| r.gpu_slots.is_empty() && r.gpu_slot.is_none()));
    let steps = all_steps(&mut c, &soft_id).await;
    let seen: Value = serde_json::from_str(&steps[0].observation_json).unwrap();
    assert_eq!(seen["env"]["CUDA_VISIBLE_DEVICES"], "");

    c.cancel_run(CancelRunRequest {
        run_id: a_id.clone(),
    })
    .await
    .unwrap();
    let done = until_status(&mut w, &a_id, RunStatus::Cancelled).await;
    assert_eq!(done.failure_reason.as_deref(), Some("cancelled by request"));
    // The slot is free again.
    let b = train_config(
        "b",
        json!({"requested": 1, "mandatory": true}),
        json!({"episodes": 1, "steps": 1}),
    );
    let (b_id, _) = submit(&mut c, "gpu-b", &b).await.unwrap();
    let ups = updates_until_final(&mut w, &b_id).await;
    assert!(ups.iter().any(|r| r.gpu_slots == vec![0]), "{ups:?}");
}

#[tokio::test]
async fn max_duration_cancels_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, mut c) = daemon(dir.path(), Vec::new()).await;
    let mut w = watch(&mut c, 0).await;
    let mut cfg = train_config(
        "slow",
        json!({"requested": 0}),
        json!({"episodes": 1, "steps": 100_000, "step_delay": 0.05}),
    );
    cfg["schedule"] = json!({"max_duration_seconds": 1});
    let (run_id, _) = submit(&mut c, "", &cfg).await.unwrap();
    let ups = updates_until_final(&mut w, &run_id).await;
    let last = ups.last().unwrap();
    assert_eq!(last.status, RunStatus::Cancelled as i32, "{ups:?}");
    assert_eq!(
        last.failure_reason.as_deref(),
        Some("max_duration_seconds (1 s) exceeded")
    );
}

#[tokio::test]
async fn invalid_configs_are_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, mut c) = daemon(dir.path(), Vec::new()).await;
    let mut cfg = train_config("bad", json!({"requested": 0}), json!({}));
    cfg["resources"]["cpus"] = json!(0);
    let err = submit(&mut c, "", &cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "config_json $.resources.cpus: must be an integer ≥ 1"
    );
    let mut cfg = train_config("bad", json!({"requested": 0}), json!({}));
    cfg["extra"] = json!(1);
    let err = submit(&mut c, "", &cfg).await.unwrap_err();
    assert!(
        err.message()
            .starts_with("config_json $.extra: unknown key"),
        "{err:?}"
    );
    let err = c
        .submit_run(SubmitRunRequest {
            run_id: String::new(),
            config_json: "not json".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let runs = c
        .list_runs(ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(runs.is_empty(), "nothing was registered: {runs:?}");
}

#[tokio::test]
async fn without_a_worker_module_or_script_the_demo_worker_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, mut c) = daemon(dir.path(), Vec::new()).await;
    let mut w = watch(&mut c, 0).await;
    let mut cfg = train_config("demo", json!({"requested": 0}), json!({}));
    cfg["metadata"] = json!({"worker": {"arguments": ["--episodes", "1", "--agents", "1"]}});
    let (run_id, _) = submit(&mut c, "demo-run", &cfg).await.unwrap();
    let ups = updates_until_final(&mut w, &run_id).await;
    assert_eq!(
        ups.last().unwrap().status,
        RunStatus::Completed as i32,
        "{ups:?}"
    );
    let steps = all_steps(&mut c, &run_id).await;
    assert!(!steps.is_empty());
    assert!(steps.iter().all(|s| s.run_id == run_id));
}

#[tokio::test]
async fn the_older_argv_form_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, mut c) = daemon(dir.path(), Vec::new()).await;
    let mut w = watch(&mut c, 0).await;
    let line = r#"{"type":"step","run_id":"x","episode":0,"step":0,"action":1,"reward":0.5}"#;
    let cfg = json!({
        "argv": ["python3", "-c", format!("print({line:?})")],
        "agent_id": "argv-agent",
    });
    let (run_id, digest) = submit(&mut c, "argv-run", &cfg).await.unwrap();
    assert_eq!(run_id, "argv-run");
    assert_eq!(digest.len(), 64);
    let ups = updates_until_final(&mut w, &run_id).await;
    assert_eq!(
        statuses(&ups),
        vec![RunStatus::Pending, RunStatus::Running, RunStatus::Completed]
    );
    let steps = all_steps(&mut c, &run_id).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (steps[0].reward, steps[0].agent_id.as_str()),
        (0.5, "argv-agent")
    );
}
