//! Disabled and dry-run modes, metadata and hooks end to end, and seq order under concurrent
//! callers.

mod common;

use common::{config, seqs, step, WAIT};
use std::{
    ffi::OsString,
    io::{BufReader, ErrorKind},
    net::TcpListener,
    sync::Arc,
};
use telemetry_core::jsonl::JsonlReader;
use telemetry_shim::{
    fake_ingest::FakeIngest,
    pb::{record::Kind, RunEpisode, RunStep},
    ControlMode, DryRunTarget, FlushOutcome, Metadata, Mode, ShimConfig, ShimError, ShimStats,
    Telemetry,
};

#[test]
fn disabled_writes_nothing_and_connects_nowhere() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = dir.path().join("queue");
    let vars: Vec<(&str, String)> = vec![
        ("GYM_TELEMETRY", "off".into()),
        (
            "GYM_TELEMETRY_ENDPOINT",
            format!("http://{}", listener.local_addr().expect("addr")),
        ),
        ("GYM_TELEMETRY_QUEUE_DIR", queue.display().to_string()),
    ];
    let cfg = ShimConfig::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| OsString::from(v))
    })
    .expect("config");
    assert_eq!(cfg.mode, Mode::Disabled);
    let shim = Telemetry::new(cfg).expect("shim");
    assert!(!shim.is_enabled());
    shim.set_metadata(Metadata::default());
    shim.register_on_step(|_| panic!("hooks never run when disabled"));
    for i in 0..1000 {
        shim.step(step(i)).expect("no-op");
    }
    shim.episode_end(RunEpisode::default()).expect("no-op");
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Disabled
    );
    assert_eq!(shim.stats(), ShimStats::default());
    assert_eq!(
        shim.close(WAIT).expect("close").outcome,
        FlushOutcome::Disabled
    );
    assert!(!queue.exists(), "no queue directory was created");
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("something connected: {other:?}"),
    }
}

#[test]
fn dry_run_validates_and_writes_decorated_jsonl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dry.jsonl");
    let shim = Telemetry::new(ShimConfig {
        mode: Mode::DryRun(DryRunTarget::File(path.clone())),
        run_id: Some("dry-run-1".into()),
        ..ShimConfig::default()
    })
    .expect("shim");
    let mut extra = serde_json::Map::new();
    extra.insert("difficulty".into(), 2.into());
    shim.set_metadata(Metadata {
        seed: Some(123),
        game_id: Some("FrozenLake-v1".into()),
        control_mode: Some(ControlMode::Human),
        agent_id: Some("player-1".into()),
        extra,
        ..Metadata::default()
    });
    shim.register_on_step(|s: &mut RunStep| s.info_json = r#"{"hooked":true}"#.into());
    let mut s = step(0);
    s.run_id.clear();
    shim.step(s).expect("valid");
    let mut bad = step(1);
    bad.reward = f64::INFINITY;
    match shim.step(bad) {
        Err(ShimError::Invalid(e)) => assert_eq!(e.label(), "non_finite_reward"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    shim.episode_end(RunEpisode {
        episode_index: 0,
        total_reward: 1.0,
        steps: 1,
        ..Default::default()
    })
    .expect("valid");
    let report = shim.close(WAIT).expect("close");
    assert_eq!(report.outcome, FlushOutcome::Written);

    let file = std::fs::File::open(&path).expect("output");
    let records: Vec<_> = JsonlReader::new(BufReader::new(file))
        .map(|l| l.expect("line").record)
        .collect();
    assert_eq!(seqs(&records), vec![1, 2], "the invalid record took no seq");
    match &records[0].kind {
        Some(Kind::Step(s)) => {
            assert_eq!(s.run_id, "dry-run-1");
            assert_eq!(s.agent_id, "player-1");
            assert_eq!(s.control_mode, "human");
            assert_eq!(s.info_json, r#"{"hooked":true}"#);
        }
        other => panic!("{other:?}"),
    }
    match &records[1].kind {
        Some(Kind::Episode(e)) => {
            let m: serde_json::Value = serde_json::from_str(&e.metadata_json).expect("json");
            assert_eq!(m["seed"], 123);
            assert_eq!(m["game_id"], "FrozenLake-v1");
            assert_eq!(m["control_mode"], "human");
            assert_eq!(m["difficulty"], 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn concurrent_callers_get_seqs_in_queue_order_and_hooks_enrich_live_records() {
    let fake = FakeIngest::start().expect("fake daemon");
    let shim = Arc::new(Telemetry::new(config(&fake.endpoint(), None)).expect("shim"));
    shim.set_metadata(Metadata {
        policy_label: Some("ppo-v2".into()),
        backend: Some("cleanrl".into()),
        ..Metadata::default()
    });
    shim.register_on_step(|s: &mut RunStep| s.render_hint_json = r#"{"w":84}"#.into());
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let shim = Arc::clone(&shim);
            std::thread::spawn(move || {
                for i in 0..250 {
                    let mut s = step(i);
                    s.agent_id = format!("agent-{t}");
                    shim.step(s).expect("accepted");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker thread");
    }
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );
    let stored = fake.state().records();
    assert_eq!(seqs(&stored), (1..=1000).collect::<Vec<_>>());
    for t in 0..4 {
        let mine: Vec<u64> = stored
            .iter()
            .filter_map(|r| match &r.kind {
                Some(Kind::Step(s)) if s.agent_id == format!("agent-{t}") => Some(s.step_index),
                _ => None,
            })
            .collect();
        assert_eq!(
            mine,
            (1000..1250).collect::<Vec<_>>(),
            "per-thread order kept"
        );
    }
    assert!(stored.iter().all(|r| match &r.kind {
        Some(Kind::Step(s)) =>
            s.policy_label == "ppo-v2"
                && s.backend == "cleanrl"
                && s.render_hint_json == r#"{"w":84}"#,
        _ => false,
    }));
    assert_eq!(fake.state().duplicates(), 0);
}

#[test]
fn a_second_shim_on_a_busy_queue_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = "http://127.0.0.1:9";
    let first = Telemetry::new(config(endpoint, Some(dir.path()))).expect("first");
    match Telemetry::new(config(endpoint, Some(dir.path()))) {
        Err(ShimError::Queue(e)) => assert!(e.to_string().contains("in use"), "{e}"),
        other => panic!("expected a lock error, got {other:?}"),
    }
    first.abandon();
    let again =
        Telemetry::new(config(endpoint, Some(dir.path()))).expect("free after the first died");
    again.abandon();
}

#[test]
fn oversized_records_are_refused_at_the_call() {
    let shim = Telemetry::new(ShimConfig {
        max_record_bytes: 4096,
        ..config("http://127.0.0.1:9", None)
    })
    .expect("shim");
    let mut big = step(0);
    big.observation_json = format!("\"{}\"", "x".repeat(10_000));
    assert!(matches!(
        shim.step(big),
        Err(ShimError::RecordTooLarge { max: 4096, .. })
    ));
    assert_eq!(shim.stats().dropped, 1);
    shim.abandon();
}
