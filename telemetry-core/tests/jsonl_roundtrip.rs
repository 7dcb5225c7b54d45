//! The canonical writer and the parser agree: any record (all five kinds, every field, valid
//! JSON in `*_json` fields, finite rewards) comes back exactly, bit for bit in its floats and to
//! the nanosecond in its timestamps. Arbitrary bytes never make the parser panic.

use proptest::prelude::*;
use serde_json::Value;
use telemetry_core::{
    jsonl::{parse_line, to_line, write_record, JsonlReader},
    pb::{Artifact, Record, RunCompleted, RunEpisode, RunStarted, RunStep},
    timestamp::from_unix_nanos,
};

/// Any text, control characters and newlines included.
fn text() -> impl Strategy<Value = String> {
    "(?s).{0,12}"
}

fn finite() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Empty, or JSON text in one of several layouts (the text must come back byte for byte).
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        json_value().prop_map(|v| v.to_string()),
        json_value().prop_map(|v| serde_json::to_string_pretty(&v).expect("serialisable")),
        json_value().prop_map(|v| format!(" {v}\n")),
    ]
}

/// Some canonical and some legacy spellings: canonical lines keep the spelling they carry.
fn mode() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "human",
        "agent",
        "multi_agent",
        "hybrid",
        "replay",
        "unknown",
        "agent_only",
        "Manual",
    ])
    .prop_map(str::to_owned)
}

fn ts() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop::option::of(any::<i64>().prop_map(from_unix_nanos))
}

fn step() -> impl Strategy<Value = RunStep> {
    (
        (text(), any::<u64>(), any::<u64>(), json_text(), json_text()),
        (finite(), any::<bool>(), any::<bool>(), ts(), text(), text()),
        (any::<u64>(), text(), json_text(), text(), any::<u32>()),
        (mode(), text(), any::<u64>(), json_text(), text(), text()),
    )
        .prop_map(|(a, b, c, d)| RunStep {
            run_id: a.0,
            episode_index: a.1,
            step_index: a.2,
            action_json: a.3,
            observation_json: a.4,
            reward: b.0,
            terminated: b.1,
            truncated: b.2,
            timestamp: b.3,
            policy_label: b.4,
            backend: b.5,
            seq_id: c.0,
            agent_id: c.1,
            render_hint_json: c.2,
            frame_ref: c.3,
            payload_version: c.4,
            control_mode: d.0,
            producer_id: d.1,
            producer_seq: d.2,
            info_json: d.3,
            policy_id: d.4,
            policy_digest: d.5,
        })
}

fn episode() -> impl Strategy<Value = RunEpisode> {
    (
        (
            text(),
            any::<u64>(),
            finite(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            json_text(),
            ts(),
            any::<u64>(),
            text(),
            mode(),
            text(),
            any::<u64>(),
        ),
        (text(), text()),
    )
        .prop_map(|(a, b, c)| RunEpisode {
            run_id: a.0,
            episode_index: a.1,
            total_reward: a.2,
            steps: a.3,
            terminated: a.4,
            truncated: a.5,
            metadata_json: b.0,
            timestamp: b.1,
            seq_id: b.2,
            agent_id: b.3,
            control_mode: b.4,
            producer_id: b.5,
            producer_seq: b.6,
            policy_id: c.0,
            policy_digest: c.1,
        })
}

fn run_started() -> impl Strategy<Value = RunStarted> {
    (
        text(),
        ts(),
        json_text(),
        text(),
        mode(),
        text(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|t| RunStarted {
            run_id: t.0,
            timestamp: t.1,
            config_json: t.2,
            agent_id: t.3,
            control_mode: t.4,
            producer_id: t.5,
            producer_seq: t.6,
            seq_id: t.7,
        })
}

fn run_completed() -> impl Strategy<Value = RunCompleted> {
    (
        (
            text(),
            ts(),
            0..=4_i32,
            any::<Option<i32>>(),
            text(),
            text(),
        ),
        (
            any::<Option<i32>>(),
            text(),
            any::<u64>(),
            any::<u64>(),
            json_text(),
        ),
    )
        .prop_map(|(a, b)| RunCompleted {
            run_id: a.0,
            timestamp: a.1,
            status: a.2,
            exit_code: a.3,
            error: a.4,
            reason: a.5,
            signal: b.0,
            producer_id: b.1,
            producer_seq: b.2,
            seq_id: b.3,
            info_json: b.4,
        })
}

fn artifact() -> impl Strategy<Value = Artifact> {
    (
        text(),
        ts(),
        text(),
        text(),
        text(),
        any::<u64>(),
        any::<u64>(),
        json_text(),
    )
        .prop_map(|t| Artifact {
            run_id: t.0,
            timestamp: t.1,
            kind: t.2,
            path: t.3,
            producer_id: t.4,
            producer_seq: t.5,
            seq_id: t.6,
            info_json: t.7,
        })
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        step().prop_map(Record::from),
        episode().prop_map(Record::from),
        run_started().prop_map(Record::from),
        run_completed().prop_map(Record::from),
        artifact().prop_map(Record::from),
    ]
}

/// Float fields compared by bits, so -0.0 vs 0.0 (equal as f64) would still be caught.
fn float_bits(r: &Record) -> Option<u64> {
    use telemetry_core::pb::record::Kind;
    match &r.kind {
        Some(Kind::Step(s)) => Some(s.reward.to_bits()),
        Some(Kind::Episode(e)) => Some(e.total_reward.to_bits()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn to_line_then_parse_line_is_identity(r in record()) {
        let line = to_line(&r);
        prop_assert!(!line.contains('\n'), "one line: {line}");
        let back = parse_line(line.as_bytes(), 1).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        prop_assert_eq!(float_bits(&back), float_bits(&r));
        prop_assert_eq!(back, r);
    }

    #[test]
    fn a_written_stream_reads_back_through_the_reader(records in prop::collection::vec(record(), 0..8)) {
        let mut out = Vec::new();
        for r in &records {
            write_record(&mut out, r).expect("writing to a Vec");
        }
        let back: Vec<Record> = JsonlReader::new(&out[..])
            .map(|item| item.map(|p| p.record))
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, records);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_keep_their_line_number(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        line in 1..1000_u64,
    ) {
        if let Err(e) = parse_line(&bytes, line) {
            prop_assert_eq!(e.line(), Some(line));
        }
    }
}
