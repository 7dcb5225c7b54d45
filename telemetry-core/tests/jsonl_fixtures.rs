//! The predecessor's real worker output (`../shared/fixtures`) parses completely, unchanged,
//! with the values a viewer needs in the right fields.

use serde_json::{json, Value};
use telemetry_core::{
    jsonl::{discover_episode_meta, parse_line, to_line, JsonlReader, ParsedLine},
    pb::{
        record::Kind, Artifact, CompletionStatus, Record, RunCompleted, RunEpisode, RunStarted,
        RunStep,
    },
    timestamp::{parse_rfc3339, to_unix_nanos},
    ControlMode,
};

const DEMO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/legacy-demo-worker.jsonl"
);
const BDI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/legacy-bdi-worker.jsonl"
);
const DRY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/legacy-bdi-worker-dry-run.jsonl"
);

#[derive(Default)]
struct Parsed {
    steps: Vec<RunStep>,
    episodes: Vec<RunEpisode>,
    started: Vec<RunStarted>,
    completed: Vec<RunCompleted>,
    artifacts: Vec<Artifact>,
    lines: Vec<u64>,
}

fn read(path: &str) -> Parsed {
    let bytes = std::fs::read(path).expect("fixture is readable");
    let mut out = Parsed::default();
    for item in JsonlReader::new(&bytes[..]) {
        let ParsedLine { line_no, record } = item.expect("every fixture line parses");
        out.lines.push(line_no);
        match record.kind.expect("a kind") {
            Kind::Step(s) => out.steps.push(s),
            Kind::Episode(e) => out.episodes.push(e),
            Kind::RunStarted(r) => out.started.push(r),
            Kind::RunCompleted(r) => out.completed.push(r),
            Kind::Artifact(a) => out.artifacts.push(a),
            Kind::Scalar(s) => panic!("no legacy fixture has scalars: {s:?}"),
        }
    }
    out
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

fn ns(rfc3339: &str) -> i64 {
    to_unix_nanos(&parse_rfc3339(rfc3339).expect("valid time"))
}

fn ts_ns(ts: &Option<prost_types::Timestamp>) -> i64 {
    to_unix_nanos(ts.as_ref().expect("has a timestamp"))
}

#[test]
fn demo_worker_fixture() {
    let p = read(DEMO);
    assert_eq!((p.steps.len(), p.episodes.len()), (12, 3));
    assert_eq!(p.started.len() + p.completed.len() + p.artifacts.len(), 0);
    assert_eq!(p.lines, (1..=15).collect::<Vec<u64>>());

    let s = &p.steps[0];
    assert_eq!(
        (s.run_id.as_str(), s.agent_id.as_str()),
        ("RUN123", "agent_RUN123")
    );
    assert_eq!((s.episode_index, s.step_index), (0, 0));
    assert_eq!(s.action_json, "1");
    // JSON text under a *_json key is kept byte for byte.
    assert_eq!(
        s.observation_json,
        r#"{"position": [-0.21, -0.9], "velocity": [0.64, -0.81]}"#
    );
    assert_eq!(s.reward, 0.324);
    assert!(!s.terminated && !s.truncated);
    assert_eq!(
        (s.policy_label.as_str(), s.backend.as_str()),
        ("demo_policy", "demo")
    );
    assert_eq!(ts_ns(&s.timestamp), 1_795_914_168_088_378_923);
    assert_eq!(s.info_json, "", "the demo step has no extra keys");
    let last = &p.steps[11];
    assert_eq!((last.episode_index, last.step_index), (2, 3));
    assert!(last.terminated);
    assert_eq!(ts_ns(&last.timestamp), 1_795_914_168_420_378_923);

    let e = &p.episodes[0];
    assert_eq!((e.episode_index, e.steps), (0, 4));
    assert_eq!(e.total_reward, 1.918);
    assert!(e.terminated && !e.truncated);
    assert_eq!(e.agent_id, "agent_RUN123");
    assert_eq!(e.control_mode, "agent", "taken from metadata_json");
    assert_eq!(ts_ns(&e.timestamp), 1_795_914_168_208_378_923);
    let meta = json(&e.metadata_json);
    assert_eq!(meta["seed"], json!(42));
    assert_eq!(meta["game_id"], json!("DemoEnv-v0"));
    assert_eq!(meta["note"], json!("demo episode"));
    let m = discover_episode_meta(e);
    assert_eq!(m.seed, Some(json!(42)));
    assert_eq!(m.game_id.as_deref(), Some("DemoEnv-v0"));
    assert_eq!(m.control_mode, ControlMode::Agent);
    assert_eq!(m.agent_id.as_deref(), Some("agent_RUN123"));
    let seeds: Vec<Value> = p
        .episodes
        .iter()
        .map(|e| discover_episode_meta(e).seed.expect("seed"))
        .collect();
    assert_eq!(seeds, [json!(42), json!(43), json!(44)]);
}

#[test]
fn bdi_worker_fixture() {
    let p = read(BDI);
    assert_eq!(
        (
            p.started.len(),
            p.steps.len(),
            p.episodes.len(),
            p.artifacts.len(),
            p.completed.len()
        ),
        (1, 6, 2, 1, 1)
    );

    let r = &p.started[0];
    assert_eq!(r.run_id, "demo-train");
    assert_eq!(r.agent_id, "bdi_rl_demo", "taken from config");
    assert_eq!(r.control_mode, "", "the config names no control mode");
    assert_eq!(ts_ns(&r.timestamp), ns("2025-10-17T14:03:00Z"));
    let config = json(&r.config_json);
    assert_eq!(config["env_id"], json!("FrozenLake-v2"));
    assert_eq!(config["seed"], json!(123));
    assert_eq!(config["extra"], json!({}));

    let s = &p.steps[0];
    assert_eq!(
        (s.run_id.as_str(), s.episode_index, s.step_index),
        ("demo-train", 0, 0)
    );
    assert_eq!(s.action_json, "2");
    assert_eq!(
        json(&s.observation_json),
        json!({"state":0,"position":{"row":0,"col":0},"goal":{"row":7,"col":7},"prob":1})
    );
    assert_eq!(ts_ns(&s.timestamp), ns("2025-10-17T14:03:01.037Z"));
    assert_eq!(
        s.agent_id, "bdi_rl_demo",
        "filled from run_started by the reader's run context"
    );
    let info = json(&s.info_json);
    assert_eq!(info["epsilon"], json!(1.0));
    assert_eq!(info["state"], json!(0));
    assert_eq!(info["q_before"], json!(0.0));
    assert_eq!(info["timestamp"], json!("2025-10-17T14:03:01.037Z"));
    assert_eq!(
        info["next_observation"]["position"],
        json!({"row":0,"col":0})
    );
    let last = &p.steps[5];
    assert_eq!((last.episode_index, last.step_index), (1, 2));
    assert_eq!(last.reward, 1.0);
    assert!(last.terminated);
    assert_eq!(json(&last.info_json)["q_after"], json!(0.1));
    assert_eq!(json(&last.info_json)["epsilon"], json!(0.9));
    assert!(p.steps[2].truncated);

    let e = &p.episodes[1];
    assert_eq!((e.episode_index, e.steps), (1, 3));
    assert_eq!(e.total_reward, 1.0, "an episode's `reward` is its total");
    assert_eq!(e.control_mode, "agent", "agent_only normalised");
    assert_eq!(e.agent_id, "bdi_rl_demo");
    assert_eq!(ts_ns(&e.timestamp), ns("2025-10-17T14:03:08.296Z"));
    let meta = json(&e.metadata_json);
    assert_eq!(meta["seed"], json!(123));
    assert_eq!(meta["game_id"], json!("FrozenLake-v2"), "added from env_id");
    assert_eq!(meta["env_id"], json!("FrozenLake-v2"), "original key kept");
    assert_eq!(meta["control_mode"], json!("agent_only"), "original kept");
    assert_eq!(meta["success"], json!(true));
    let m = discover_episode_meta(e);
    assert_eq!(
        (m.seed, m.game_id.as_deref(), m.control_mode),
        (Some(json!(123)), Some("FrozenLake-v2"), ControlMode::Agent)
    );
    assert_eq!(p.episodes[0].total_reward, 0.0);

    let a = &p.artifacts[0];
    assert_eq!(
        (a.kind.as_str(), a.path.as_str()),
        (
            "policy",
            "var/trainer/policies/FrozenLake-v2/bdi_rl_demo.json"
        )
    );
    let c = &p.completed[0];
    assert_eq!(c.status(), CompletionStatus::Succeeded);
    assert_eq!(ts_ns(&c.timestamp), ns("2025-10-17T14:03:10.370Z"));
    assert_eq!(
        (c.exit_code, c.error.as_str(), c.info_json.as_str()),
        (None, "", "")
    );
}

#[test]
fn bdi_dry_run_fixture() {
    let p = read(DRY);
    assert_eq!((p.started.len(), p.completed.len()), (1, 1));
    assert_eq!(p.steps.len() + p.episodes.len() + p.artifacts.len(), 0);
    let c = &p.completed[0];
    assert_eq!(c.run_id, "dry");
    assert_eq!(c.status(), CompletionStatus::Skipped);
    assert_eq!(c.reason, "dry-run");
}

#[test]
fn parse_line_alone_is_stateless() {
    let text = std::fs::read_to_string(BDI).expect("fixture");
    let step_line = text.lines().nth(1).expect("a step line");
    match parse_line(step_line.as_bytes(), 2).expect("parses").kind {
        Some(Kind::Step(s)) => assert_eq!(s.agent_id, "", "no run context without the reader"),
        other => panic!("unexpected {other:?}"),
    }
    let mut ctx_free = JsonlReader::new(text.as_bytes()).without_context();
    let second = ctx_free.nth(1).expect("item").expect("parses");
    assert_eq!(second.line_no, 2);
    match second.record.kind {
        Some(Kind::Step(s)) => assert_eq!(s.agent_id, ""),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn every_fixture_record_survives_the_canonical_round_trip() {
    for path in [DEMO, BDI, DRY] {
        let p = std::fs::read(path).expect("fixture");
        let records: Vec<Record> = JsonlReader::new(&p[..])
            .map(|r| r.expect("parses").record)
            .collect();
        assert!(!records.is_empty());
        for (i, r) in records.iter().enumerate() {
            let line = to_line(r);
            assert_eq!(&parse_line(line.as_bytes(), i as u64 + 1).expect(&line), r);
        }
    }
}
