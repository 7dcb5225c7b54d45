//! The Policies service through the real daemon: the inventory of a var dir holding a
//! predecessor file and a corrupt one, equip refused for each reason (a typed message prefix),
//! equip accepted on a pending run and visible in its RunInfo, delete refused while equipped,
//! and equip refused once a run has started.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::pb::{
    policies_client::PoliciesClient, CancelRunRequest, DeletePolicyRequest, EquipRequest,
    EquipRequirements, GetPolicyRequest, ListPoliciesRequest, PolicyBinding, RunState,
    WatchRunsRequest,
};

const ID: &str = "FrozenLake-v1/bdi_rl_demo.json";
const Q: &str = "{\n  \"format\": \"q_table/v1\",\n  \"metadata\": {\"run_id\": \"train-1\", \"agent_id\": \"bdi_rl_demo\"},\n  \"q_table\": [[0.0, 0.5, 0.0, 0.0], [0.25, 1.0, 0.0, 0.0]]\n}";

fn equip(run: &str, check_only: bool, req: EquipRequirements) -> EquipRequest {
    EquipRequest {
        run_id: run.into(),
        binding: Some(PolicyBinding {
            agent_id: "a".into(),
            policy_id: ID.into(),
            policy_digest: String::new(),
        }),
        requirements: Some(req),
        check_only,
    }
}

#[tokio::test]
async fn inventory_equip_and_delete_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("policies/FrozenLake-v1");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("bdi_rl_demo.json"), Q).unwrap();
    std::fs::write(root.join("corrupt.json"), "{\"format\":").unwrap();
    let mut cfg = config(dir.path());
    cfg.max_running_workers = 1;
    let d = telemetry_server::start(cfg).await.unwrap();
    let ch = channel(&d).await;
    let mut policies = PoliciesClient::new(ch.clone());
    let (_, _, mut control) = clients(&d).await;

    let listed = policies
        .list_policies(ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.policies.len(), 1);
    let m = &listed.policies[0];
    assert_eq!(
        (m.policy_id.as_str(), m.env_id.as_str(), m.agent_id.as_str()),
        (ID, "FrozenLake-v1", "bdi_rl_demo")
    );
    assert_eq!(m.origin, "discovered");
    assert_eq!(listed.invalid.len(), 1);
    assert_eq!(
        (
            listed.invalid[0].path.as_str(),
            listed.invalid[0].kind.as_str()
        ),
        ("FrozenLake-v1/corrupt.json", "not_json")
    );
    let filtered = policies
        .list_policies(ListPoliciesRequest {
            env_id: "Taxi-v3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(filtered.policies.is_empty());

    // Refused for each reason, before anything is bound.
    let fits = EquipRequirements {
        env_id: "FrozenLake-v1".into(),
        observation_space: "Discrete(2)".into(),
        action_space: "Discrete(4)".into(),
        formats: vec![],
    };
    for (req, kind) in [
        (
            EquipRequirements {
                env_id: "Taxi-v3".into(),
                ..fits.clone()
            },
            "env_mismatch:",
        ),
        (
            EquipRequirements {
                observation_space: "Discrete(16)".into(),
                ..fits.clone()
            },
            "observation_space_mismatch:",
        ),
        (
            EquipRequirements {
                action_space: "Discrete(6)".into(),
                ..fits.clone()
            },
            "action_space_mismatch:",
        ),
        (
            EquipRequirements {
                formats: vec!["q_table/v2".into()],
                ..fits.clone()
            },
            "format_unsupported:",
        ),
    ] {
        let e = policies.equip(equip("", true, req)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().starts_with(kind), "{kind} {e:?}");
    }
    let ok = policies
        .equip(equip("", true, fits.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.binding.unwrap().policy_digest, m.sha256);

    // A pending run (the one worker slot is taken) can be equipped; its RunInfo shows it.
    control
        .submit_run(submit("busy", &["sleep", "30"]))
        .await
        .unwrap();
    let mut waiting = submit("waiting", &["sleep", "30"]);
    waiting.game_id = "FrozenLake-v1".into();
    control.submit_run(waiting).await.unwrap();
    let bound = policies
        .equip(equip("waiting", false, fits.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bound.binding.as_ref().unwrap().agent_id, "a");
    let mut watch = control
        .watch_runs(WatchRunsRequest {})
        .await
        .unwrap()
        .into_inner();
    let info = until(&mut watch, "waiting", |s| s == RunState::Pending).await;
    assert_eq!(info.policy_bindings.len(), 1);
    assert_eq!(info.policy_bindings[0].policy_id, ID);
    assert_eq!(info.policy_bindings[0].policy_digest, m.sha256);
    // Equipped: deleting is refused. A started run cannot be equipped.
    let e = policies
        .delete_policy(DeletePolicyRequest {
            policy_id: ID.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().starts_with("equipped:"), "{e:?}");
    let e = policies
        .equip(equip("busy", false, fits.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let e = policies
        .equip(equip("nobody", false, fits.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // The file changes on disk: equip is refused and GetPolicy(verify) says so.
    std::fs::write(root.join("bdi_rl_demo.json"), Q.replace("0.25", "0.75")).unwrap();
    let e = policies
        .equip(equip("", true, fits.clone()))
        .await
        .unwrap_err();
    assert!(e.message().starts_with("digest_mismatch:"), "{e:?}");
    let v = policies
        .get_policy(GetPolicyRequest {
            policy_id: ID.into(),
            verify: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.digest_matches);
    assert_ne!(v.current_sha256, m.sha256);

    // Once no live run holds it, the policy can go.
    for run in ["waiting", "busy"] {
        control
            .cancel_run(CancelRunRequest { run_id: run.into() })
            .await
            .unwrap();
        until_final(&mut watch, run).await;
    }
    policies
        .delete_policy(DeletePolicyRequest {
            policy_id: ID.into(),
        })
        .await
        .unwrap();
    let e = policies
        .get_policy(GetPolicyRequest {
            policy_id: ID.into(),
            verify: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    bounded("shutdown", async { d.shutdown().await.unwrap() }).await;
}
