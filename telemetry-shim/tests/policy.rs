//! The equipped policy reaches the worker verified, and every step and episode of its agent
//! carries the policy's id and digest (here through a dry run, which writes what it would send).

use std::{ffi::OsString, fs};

use telemetry_core::pb::{RunEpisode, RunStep};
use telemetry_policy::{EquippedPolicy, Inventory, Origin, Registration, RunPolicies};
use telemetry_shim::{ConfigError, ShimConfig, Telemetry};

fn equipped(dir: &std::path::Path) -> (EquippedPolicy, std::path::PathBuf) {
    let src = dir.join("q.json");
    fs::write(
        &src,
        r#"{"format": "q_table/v1", "metadata": {}, "q_table": [[0.0, 1.0]]}"#,
    )
    .expect("write");
    let inv = Inventory::at(dir.join("policies"));
    let m = inv
        .register(
            &src,
            Registration {
                env_id: "E".into(),
                format: "q_table".into(),
                payload_version: 1,
                ..Default::default()
            },
            Origin::Registered,
        )
        .expect("register");
    let path = fs::canonicalize(inv.payload_path(&m.policy_id).expect("p")).expect("abs");
    let p = EquippedPolicy {
        agent_id: "a".into(),
        policy_id: m.policy_id.clone(),
        sha256: m.sha256.clone(),
        path: path.clone(),
        manifest: m,
    };
    (p, path)
}

fn config(vars: Vec<(&'static str, String)>) -> Result<ShimConfig, ConfigError> {
    ShimConfig::from_lookup(move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| OsString::from(v))
    })
}

#[test]
fn records_of_the_equipped_agent_carry_its_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, _) = equipped(dir.path());
    let file = dir.path().join("policies.json");
    RunPolicies {
        policies: vec![p.clone()],
        evaluation: None,
    }
    .write(&file)
    .expect("write");
    let out = dir.path().join("out.jsonl");
    let cfg = config(vec![
        ("GYM_TELEMETRY_POLICIES_FILE", file.display().to_string()),
        ("GYM_TELEMETRY_DRY_RUN", out.display().to_string()),
        ("GYM_TELEMETRY_RUN_ID", "r".into()),
        ("GYM_TELEMETRY_AGENT_ID", "a".into()),
    ])
    .expect("config");
    let tel = Telemetry::new(cfg).expect("shim");
    assert_eq!(
        tel.policy(None).map(|e| e.policy_id.as_str()),
        Some(p.policy_id.as_str())
    );
    assert!(tel.policy(Some("other")).is_none());
    tel.step(RunStep::default()).expect("step");
    tel.step(RunStep {
        agent_id: "other".into(),
        ..Default::default()
    })
    .expect("step");
    tel.episode_end(RunEpisode::default()).expect("episode");
    tel.close(std::time::Duration::from_secs(5)).expect("close");
    let lines: Vec<serde_json::Value> = fs::read_to_string(&out)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["policy_id"], p.policy_id.as_str());
    assert_eq!(lines[0]["policy_digest"], p.sha256.as_str());
    assert!(
        lines[1].get("policy_id").is_none(),
        "another agent has no policy"
    );
    assert_eq!(lines[2]["policy_id"], p.policy_id.as_str());
    assert_eq!(lines[2]["policy_digest"], p.sha256.as_str());
}

#[test]
fn a_payload_changed_after_equip_stops_the_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, path) = equipped(dir.path());
    let file = dir.path().join("policies.json");
    RunPolicies {
        policies: vec![p],
        evaluation: None,
    }
    .write(&file)
    .expect("write");
    fs::write(
        &path,
        r#"{"format": "q_table/v1", "metadata": {}, "q_table": [[9.0, 1.0]]}"#,
    )
    .expect("tamper");
    let err = config(vec![(
        "GYM_TELEMETRY_POLICIES_FILE",
        file.display().to_string(),
    )])
    .expect_err("refused");
    assert!(
        matches!(err, ConfigError::Policy { ref reason } if reason.contains("digest_mismatch")),
        "{err}"
    );
}
