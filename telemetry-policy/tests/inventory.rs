//! The inventory over a directory like a real one: predecessor files, a registered `.npz`,
//! and corrupt files side by side; equip accepted and refused for each reason; a digest that
//! stops matching when the file changes.

use std::{fs, path::Path};

use telemetry_policy::{
    InvalidKind, Inventory, Origin, PolicyError, Refusal, Registration, Requirements,
};

fn q_table(agent: Option<&str>, run: &str, rows: usize) -> String {
    let agent = agent.map_or(String::new(), |a| format!(r#", "agent_id": "{a}""#));
    let table: Vec<String> = (0..rows)
        .map(|i| format!("[{i}.0, 0.5, 0.25, 0.0]"))
        .collect();
    format!(
        "{{\n  \"format\": \"q_table/v1\",\n  \"metadata\": {{\"run_id\": \"{run}\", \"env_id\": \"FrozenLake-v1\", \"episodes\": 300, \"strategy\": \"train_and_save\"{agent}}},\n  \"q_table\": [{}]\n}}",
        table.join(", ")
    )
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, body).expect("write");
}

/// A policies root holding every kind of file the issue names.
fn populated() -> (tempfile::TempDir, Inventory) {
    let var = tempfile::tempdir().expect("tempdir");
    let root = var.path().join("policies");
    write(
        &root,
        "FrozenLake-v1/bdi_rl_demo.json",
        q_table(Some("bdi_rl_demo"), "train-1", 16).as_bytes(),
    );
    // No agent_id in the payload: the agent is the file stem.
    write(
        &root,
        "FrozenLake-v1/stemmed.json",
        q_table(None, "train-2", 16).as_bytes(),
    );
    write(
        &root,
        "Taxi-v3/taxi.json",
        q_table(Some("taxi"), "train-3", 500).as_bytes(),
    );
    // Corrupt and unknown files.
    write(
        &root,
        "FrozenLake-v1/truncated.json",
        b"{\"format\": \"q_table/v1\", \"q_ta",
    );
    write(
        &root,
        "FrozenLake-v1/other-format.json",
        br#"{"env_id": "FrozenLake-v1", "q": [[0.0]]}"#,
    );
    write(
        &root,
        "FrozenLake-v1/ragged.json",
        br#"{"format": "q_table/v1", "q_table": [[1, 2], [3]]}"#,
    );
    write(&root, "CartPole-v1/ppo.npz", b"PK\x03\x04 not really a zip");
    write(&root, "CartPole-v1/orphan.pt.manifest.json", b"{}");
    let inv = Inventory::in_var_dir(var.path());
    (var, inv)
}

#[test]
fn inventory_lists_predecessor_files_registered_formats_and_corrupt_files() {
    let (var, inv) = populated();
    // Another format, registered with the caller's manifest (copied into the inventory).
    let src = var.path().join("agent.npz");
    fs::write(&src, b"\x93NUMPY fake weights").expect("write");
    let npz = inv
        .register(
            &src,
            Registration {
                env_id: "CartPole-v1".into(),
                agent_id: "ppo-agent".into(),
                observation_space: "Box(-inf, inf, (4,), float32)".into(),
                action_space: "Discrete(2)".into(),
                control_mode: "agent".into(),
                format: "npz".into(),
                payload_version: 1,
                source_run_id: "train-9".into(),
                ..Default::default()
            },
            Origin::Registered,
        )
        .expect("register npz");
    assert_eq!(npz.policy_id, "CartPole-v1/agent.npz");
    assert_eq!(npz.size_bytes, 19);

    let listing = inv.scan().expect("scan");
    let ids: Vec<&str> = listing
        .policies
        .iter()
        .map(|m| m.policy_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "CartPole-v1/agent.npz",
            "FrozenLake-v1/bdi_rl_demo.json",
            "FrozenLake-v1/stemmed.json",
            "Taxi-v3/taxi.json"
        ]
    );
    let bdi = &listing.policies[1];
    assert_eq!(bdi.env_id, "FrozenLake-v1");
    assert_eq!(bdi.agent_id, "bdi_rl_demo");
    assert_eq!((bdi.format.as_str(), bdi.payload_version), ("q_table", 1));
    assert_eq!(bdi.observation_space, "Discrete(16)");
    assert_eq!(bdi.action_space, "Discrete(4)");
    assert_eq!(bdi.source_run_id, "train-1");
    assert_eq!(bdi.origin, Origin::Discovered);
    let bytes = fs::read(inv.root().join("FrozenLake-v1/bdi_rl_demo.json")).expect("read");
    assert_eq!(bdi.size_bytes, bytes.len() as u64);
    assert_eq!(bdi.sha256, telemetry_policy::digest::sha256_hex(&bytes));
    assert_eq!(listing.policies[2].agent_id, "stemmed");
    assert_eq!(listing.policies[3].observation_space, "Discrete(500)");

    let invalid: Vec<(&str, InvalidKind)> = listing
        .invalid
        .iter()
        .map(|i| (i.path.as_str(), i.kind))
        .collect();
    assert_eq!(
        invalid,
        [
            (
                "CartPole-v1/orphan.pt.manifest.json",
                InvalidKind::MissingPayload
            ),
            ("CartPole-v1/ppo.npz", InvalidKind::UnknownFormat),
            (
                "FrozenLake-v1/other-format.json",
                InvalidKind::UnknownFormat
            ),
            ("FrozenLake-v1/ragged.json", InvalidKind::BadPayload),
            ("FrozenLake-v1/truncated.json", InvalidKind::NotJson),
        ]
    );
    assert!(listing.invalid.iter().all(|i| !i.reason.is_empty()));
    assert!(!listing.truncated);

    // Discovery wrote manifests: a second scan reads them and agrees.
    assert!(inv
        .root()
        .join("FrozenLake-v1/bdi_rl_demo.json.manifest.json")
        .is_file());
    assert_eq!(inv.scan().expect("rescan"), listing);
}

#[test]
fn a_scan_is_bounded_by_its_file_limit() {
    let (_var, inv) = populated();
    let inv = inv.with_limits(telemetry_policy::Limits {
        max_files: 3,
        ..Default::default()
    });
    let listing = inv.scan().expect("scan");
    assert!(listing.truncated);
    assert!(listing.policies.len() + listing.invalid.len() <= 3);
}

#[test]
fn equip_is_accepted_and_refused_for_each_reason() {
    let (_var, inv) = populated();
    let id = "FrozenLake-v1/bdi_rl_demo.json";
    let fits = Requirements {
        env_id: "FrozenLake-v1".into(),
        observation_space: "Discrete(16)".into(),
        action_space: "Discrete( 4 )".into(),
        formats: vec![],
    };
    let m = inv.check_equip(id, &fits).expect("accepted");
    assert_eq!(m.policy_id, id);

    let refusal = |req: Requirements| match inv.check_equip(id, &req) {
        Err(PolicyError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let r = refusal(Requirements {
        env_id: "Taxi-v3".into(),
        ..fits.clone()
    });
    assert_eq!(r.kind(), "env_mismatch");
    assert!(
        matches!(r, Refusal::EnvMismatch { ref policy, ref run } if policy == "FrozenLake-v1" && run == "Taxi-v3")
    );
    let r = refusal(Requirements {
        observation_space: "Discrete(64)".into(),
        ..fits.clone()
    });
    assert_eq!(r.kind(), "observation_space_mismatch");
    let r = refusal(Requirements {
        action_space: "Discrete(6)".into(),
        ..fits.clone()
    });
    assert_eq!(r.kind(), "action_space_mismatch");
    let r = refusal(Requirements {
        formats: vec!["q_table/v2".into()],
        ..fits.clone()
    });
    assert_eq!(r.kind(), "format_unsupported");
    assert!(r.to_string().starts_with("format_unsupported: q_table/v1"));

    // A registered npz is refused by default (no loader of ours knows it) but accepted when
    // the worker names it.
    let src = inv.root().join("../w.npz");
    fs::write(&src, b"weights").expect("write");
    let npz = inv
        .register(
            &src,
            Registration {
                env_id: "FrozenLake-v1".into(),
                format: "npz".into(),
                payload_version: 3,
                ..Default::default()
            },
            Origin::Registered,
        )
        .expect("register");
    let plain = Requirements {
        env_id: "FrozenLake-v1".into(),
        ..Default::default()
    };
    assert!(matches!(
        inv.check_equip(&npz.policy_id, &plain),
        Err(PolicyError::Refused(Refusal::FormatUnsupported { .. }))
    ));
    let named = Requirements {
        formats: vec!["npz/v3".into()],
        ..plain.clone()
    };
    inv.check_equip(&npz.policy_id, &named)
        .expect("named format accepted");

    // The digest: change one byte of the payload, same size.
    let path = inv.payload_path(id).expect("path");
    let mut bytes = fs::read(&path).expect("read");
    let i = bytes.iter().position(|b| *b == b'5').expect("a digit");
    bytes[i] = b'6';
    fs::write(&path, &bytes).expect("rewrite");
    let r = refusal(fits.clone());
    assert_eq!(r.kind(), "digest_mismatch");

    assert!(matches!(
        inv.check_equip("FrozenLake-v1/none.json", &fits),
        Err(PolicyError::NotFound(_))
    ));
    assert!(matches!(
        inv.check_equip("../etc/passwd", &fits),
        Err(PolicyError::BadId { .. })
    ));
}

#[test]
fn verification_notices_a_changed_checkpoint() {
    let (_var, inv) = populated();
    let id = "Taxi-v3/taxi.json";
    inv.scan().expect("scan"); // gives it a manifest with today's digest
    let v = inv.verify(id).expect("verify");
    assert!(v.matches());
    let path = inv.payload_path(id).expect("path");
    // Same size, other bytes: only the digest can tell.
    let mut bytes = fs::read(&path).expect("read");
    let i = bytes.iter().position(|b| *b == b'2').expect("a digit");
    bytes[i] = b'7';
    fs::write(&path, &bytes).expect("rewrite");
    let v = inv.verify(id).expect("verify");
    assert!(!v.matches());
    assert_eq!(
        v.current_sha256,
        telemetry_policy::digest::sha256_hex(&bytes)
    );
    // Another size: the listing marks it as changed without hashing.
    bytes.push(b'\n');
    fs::write(&path, &bytes).expect("grow");
    let listing = inv.scan().expect("scan");
    let bad = listing
        .invalid
        .iter()
        .find(|i| i.path == id)
        .expect("listed invalid");
    assert_eq!(bad.kind, InvalidKind::Changed);
}

#[test]
fn registration_is_idempotent_and_refuses_conflicts_and_wrong_digests() {
    let var = tempfile::tempdir().expect("tempdir");
    let inv = Inventory::in_var_dir(var.path());
    let src = var.path().join("q.json");
    fs::write(&src, q_table(Some("a"), "r1", 4)).expect("write");
    let reg = Registration {
        env_id: "FrozenLake-v1".into(),
        format: "q_table".into(),
        payload_version: 1,
        subdir: "r1".into(),
        ..Default::default()
    };
    let m = inv
        .register(&src, reg.clone(), Origin::Artifact)
        .expect("register");
    assert_eq!(m.policy_id, "FrozenLake-v1/r1/q.json");
    assert_eq!(
        m.observation_space, "Discrete(4)",
        "spaces come from the table"
    );
    assert_eq!(m.source_run_id, "r1");
    assert_eq!(
        inv.register(&src, reg.clone(), Origin::Artifact)
            .expect("again"),
        m
    );
    fs::write(&src, q_table(Some("a"), "r1", 5)).expect("rewrite");
    assert!(matches!(
        inv.register(&src, reg.clone(), Origin::Artifact),
        Err(PolicyError::Conflict(_))
    ));
    let wrong = Registration {
        expected_sha256: "0".repeat(64),
        subdir: "r2".into(),
        ..reg.clone()
    };
    assert!(matches!(
        inv.register(&src, wrong, Origin::Registered),
        Err(PolicyError::Refused(Refusal::DigestMismatch { .. }))
    ));
    assert!(
        !inv.root().join("FrozenLake-v1/r2/q.json").exists(),
        "a refused copy is removed"
    );
    // A q_table registration must load.
    let junk = var.path().join("junk.json");
    fs::write(&junk, b"[1]").expect("write");
    assert!(matches!(
        inv.register(&junk, reg.clone(), Origin::Registered),
        Err(PolicyError::Invalid(_))
    ));
    inv.delete(&m.policy_id).expect("delete");
    assert!(matches!(
        inv.get(&m.policy_id),
        Err(PolicyError::NotFound(_))
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m2 = inv
            .register(
                &src,
                Registration {
                    subdir: "r3".into(),
                    ..reg
                },
                Origin::Artifact,
            )
            .expect("register");
        let mode = fs::metadata(inv.payload_path(&m2.policy_id).expect("p"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
