//! Appends: lossless storage, seqs, exactly-once watermarks, all-or-nothing batches.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proptest::prelude::*;
use telemetry_core::pb::{record::Kind, CompletionStatus, Record, RunStep};
use telemetry_store::{AppendOutcome, Filter, Store, StoreConfig, StoreError};

fn read_all(
    ts: &TempStore,
) -> (
    Vec<RunStep>,
    Vec<telemetry_core::pb::RunEpisode>,
    Vec<Record>,
) {
    let reader = ts.store.reader().unwrap();
    let steps = reader
        .stream_steps_since(0, &Filter::default())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let episodes = reader
        .stream_episodes_since(0, &Filter::default())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let events = reader.events_since(0, None, 1000).unwrap();
    (steps, episodes, events)
}

#[test]
fn every_kind_round_trips_losslessly_with_its_seq() {
    let mut ts = TempStore::new();
    let mut records = stamped(
        vec![
            run_started("run-1").into(),
            step("run-1", "agent-1", 0, 0).into(),
            step("run-1", "agent-1", 0, 1).into(),
            episode("run-1", "agent-1", 0, "agent").into(),
            artifact("run-1").into(),
            run_completed("run-1", CompletionStatus::Succeeded).into(),
        ],
        "producer-a",
        1,
    );
    let written = records.clone();
    let report = ts.store.append(&mut records, &[]).unwrap();
    assert_eq!(report.stored, 6);
    assert_eq!(report.duplicates, 0);
    // One sequence per stream: events 1,2,3; steps 1,2; episodes 1.
    assert_eq!(
        report.outcomes,
        [1, 1, 2, 1, 2, 3].map(|seq| AppendOutcome::Stored { seq })
    );
    assert_eq!(report.watermarks, vec![("producer-a".to_string(), 6)]);
    // seq_id written in place, nothing else changed.
    for (after, before) in records.iter().zip(&written) {
        let mut expected = before.clone();
        expected.set_seq_id(after.seq_id());
        assert_eq!(after, &expected);
        assert_ne!(after.seq_id(), 0);
    }
    let (steps, episodes, events) = read_all(&ts);
    let read_back: Vec<Record> = events
        .iter()
        .take(1)
        .cloned()
        .chain(steps.into_iter().map(Record::from))
        .chain(episodes.into_iter().map(Record::from))
        .chain(events.iter().skip(1).cloned())
        .collect();
    assert_eq!(read_back, records);
}

#[test]
fn odd_values_survive_nan_extremes_and_missing_timestamps() {
    let mut ts = TempStore::new();
    let odd = RunStep {
        run_id: "r".into(),
        episode_index: u64::MAX,
        step_index: i64::MAX as u64 + 1,
        reward: f64::NAN,
        timestamp: None,
        observation_json: "x".repeat(10_000) + "\u{1F600}",
        producer_id: "p".into(),
        producer_seq: u64::MAX - 1,
        ..Default::default()
    };
    let neg = RunStep {
        run_id: "r".into(),
        reward: f64::NEG_INFINITY,
        timestamp: Some(telemetry_core::timestamp::from_unix_nanos(-1_500_000_001)),
        ..Default::default()
    };
    let mut records = vec![Record::from(odd.clone()), Record::from(neg.clone())];
    ts.store.append(&mut records, &[]).unwrap();
    let (steps, _, _) = read_all(&ts);
    assert_eq!(steps.len(), 2);
    let mut first = steps[0].clone();
    assert!(first.reward.is_nan());
    // NaN != NaN: compare everything else.
    first.reward = 0.0;
    let expected = RunStep {
        seq_id: 1,
        reward: 0.0,
        control_mode: "unknown".into(),
        ..odd
    };
    assert_eq!(first, expected);
    assert_eq!(
        steps[1],
        RunStep {
            seq_id: 2,
            control_mode: "unknown".into(),
            ..neg
        }
    );
    assert_eq!(ts.store.watermark("p").unwrap(), u64::MAX - 1);
}

#[test]
fn control_modes_are_stored_canonical() {
    let mut ts = TempStore::new();
    let mut records: Vec<Record> = ["agent_only", "", "HUMAN", "multi-agent"]
        .iter()
        .map(|m| {
            let mut s = step("r", "a", 0, 0);
            s.control_mode = (*m).into();
            Record::from(s)
        })
        .collect();
    ts.store.append(&mut records, &[]).unwrap();
    let (steps, _, _) = read_all(&ts);
    let modes: Vec<&str> = steps.iter().map(|s| s.control_mode.as_str()).collect();
    assert_eq!(modes, ["agent", "unknown", "human", "multi_agent"]);
}

#[test]
fn a_resent_batch_is_stored_once_and_reported_as_duplicates() {
    let mut ts = TempStore::new();
    let batch = stamped(steps("run-1", "a", 5), "p1", 1);
    let mut first = batch.clone();
    let r1 = ts.store.append(&mut first, &[]).unwrap();
    assert_eq!((r1.stored, r1.duplicates), (5, 0));
    // Resend, overlapping with two new records.
    let mut again = batch.clone();
    again.extend(stamped(steps("run-1", "a", 2), "p1", 6));
    let r2 = ts.store.append(&mut again, &[]).unwrap();
    assert_eq!((r2.stored, r2.duplicates), (2, 5));
    assert_eq!(&r2.outcomes[..5], &[AppendOutcome::Duplicate; 5]);
    assert_eq!(
        &r2.outcomes[5..],
        &[
            AppendOutcome::Stored { seq: 6 },
            AppendOutcome::Stored { seq: 7 }
        ]
    );
    // Duplicates keep seq_id 0.
    assert!(again[..5].iter().all(|r| r.seq_id() == 0));
    assert_eq!(r2.watermarks, vec![("p1".to_string(), 7)]);
    assert_eq!(read_all(&ts).0.len(), 7);
    // A duplicate inside one batch (seq not increasing) is caught too.
    let mut inner = stamped(steps("run-1", "a", 2), "p2", 1);
    inner.push(inner[0].clone());
    let r3 = ts.store.append(&mut inner, &[]).unwrap();
    assert_eq!((r3.stored, r3.duplicates), (2, 1));
}

#[test]
fn producer_seq_zero_is_a_valid_first_record() {
    let mut ts = TempStore::new();
    let mut batch = stamped(steps("r", "a", 2), "p", 0);
    let report = ts.store.append(&mut batch, &[]).unwrap();
    assert_eq!(report.stored, 2);
    assert_eq!(ts.store.watermark("p").unwrap(), 1);
    let mut again = stamped(steps("r", "a", 1), "p", 0);
    assert_eq!(ts.store.append(&mut again, &[]).unwrap().duplicates, 1);
}

#[test]
fn records_without_producer_are_always_stored() {
    let mut ts = TempStore::new();
    for _ in 0..2 {
        let mut batch = steps("r", "a", 3);
        let report = ts.store.append(&mut batch, &[]).unwrap();
        assert_eq!(report.stored, 3);
        assert!(report.watermarks.is_empty());
    }
    assert_eq!(read_all(&ts).0.len(), 6);
}

#[test]
fn rejected_stamps_advance_watermarks_after_the_records() {
    let mut ts = TempStore::new();
    // Records 1 and 2 are valid, 3 was rejected by the caller: all three are "seen".
    let mut batch = stamped(steps("r", "a", 2), "p", 1);
    let report = ts
        .store
        .append(&mut batch, &[("p".to_string(), 3), ("q".to_string(), 9)])
        .unwrap();
    assert_eq!(report.stored, 2);
    assert_eq!(
        report.watermarks,
        vec![("p".to_string(), 3), ("q".to_string(), 9)]
    );
    // A rejected stamp above the batch's records does not turn them into duplicates.
    let mut batch = stamped(steps("r", "a", 1), "p", 4);
    let report = ts
        .store
        .append(&mut batch, &[("p".to_string(), 10)])
        .unwrap();
    assert_eq!(report.stored, 1);
    assert_eq!(ts.store.watermark("p").unwrap(), 10);
    // A lower rejected stamp never moves a watermark back.
    ts.store.append(&mut [], &[("p".to_string(), 2)]).unwrap();
    assert_eq!(ts.store.watermark("p").unwrap(), 10);
    // Resending a record at or below the watermark is a duplicate.
    let mut resend = stamped(steps("r", "a", 1), "p", 3);
    assert_eq!(ts.store.append(&mut resend, &[]).unwrap().duplicates, 1);
    assert_eq!(ts.store.watermark("nobody").unwrap(), 0);
}

#[test]
fn watermarks_are_reported_per_producer_in_order_of_appearance() {
    let mut ts = TempStore::new();
    let mut batch = Vec::new();
    for (i, p) in ["b", "a", "b", "c", "a"].iter().enumerate() {
        let mut r = Record::from(step("r", "x", 0, i as u64));
        r.set_producer(p, 10 + i as u64);
        batch.push(r);
    }
    let report = ts.store.append(&mut batch, &[]).unwrap();
    assert_eq!(
        report.watermarks,
        vec![
            ("b".to_string(), 12),
            ("a".to_string(), 14),
            ("c".to_string(), 13)
        ]
    );
}

#[test]
fn a_failing_batch_rolls_back_entirely() {
    let mut ts = TempStore::new();
    let mut ok = stamped(steps("good", "a", 2), "p", 1);
    ts.store.append(&mut ok, &[]).unwrap();
    // Make the third insert of the next batch fail inside SQLite.
    let side = rusqlite::Connection::open(ts.path()).unwrap();
    side.execute_batch(
        "CREATE TRIGGER boom BEFORE INSERT ON steps WHEN NEW.run_id = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'boom'); END;",
    )
    .unwrap();
    let mut batch = stamped(steps("good", "a", 2), "p", 3);
    batch.push(Record::from(step("boom", "a", 0, 0)));
    batch[2].set_producer("p", 5);
    let before = batch.clone();
    let err = ts
        .store
        .append(&mut batch, &[("p".to_string(), 9)])
        .unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err}");
    assert!(err.to_string().contains("boom"), "{err}");
    assert_eq!(batch, before, "records untouched (no seq_id)");
    assert_eq!(ts.store.watermark("p").unwrap(), 2);
    let reader = ts.store.reader().unwrap();
    assert_eq!(reader.last_seqs().unwrap().steps, 2);
    assert_eq!(reader.list_runs().unwrap()[0].step_count, 2);
    // The store keeps working and the seqs continue without a visible gap.
    side.execute_batch("DROP TRIGGER boom").unwrap();
    let report = ts.store.append(&mut batch, &[]).unwrap();
    assert_eq!(report.stored, 3);
    assert_eq!(batch[0].seq_id(), 3);
}

#[test]
fn a_locked_store_is_busy_and_retryable_and_nothing_is_stored() {
    let mut ts = TempStore::with(|cfg| {
        cfg.busy_timeout = std::time::Duration::ZERO;
    });
    let other = rusqlite::Connection::open(ts.path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut batch = stamped(steps("r", "a", 3), "p", 1);
    let err = ts.store.append(&mut batch, &[]).unwrap_err();
    assert!(matches!(err, StoreError::Busy), "{err}");
    assert!(err.is_retryable());
    assert!(batch.iter().all(|r| r.seq_id() == 0));
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(ts.store.watermark("p").unwrap(), 0);
    assert_eq!(ts.store.append(&mut batch, &[]).unwrap().stored, 3);
}

#[test]
fn an_empty_record_is_a_typed_error_and_stores_nothing() {
    let mut ts = TempStore::new();
    let mut batch = steps("r", "a", 2);
    batch.insert(1, Record::default());
    let err = ts.store.append(&mut batch, &[]).unwrap_err();
    assert!(matches!(err, StoreError::EmptyRecord { index: 1 }), "{err}");
    assert_eq!(ts.store.reader().unwrap().last_seqs().unwrap().steps, 0);
}

#[test]
fn the_store_survives_reopening_with_its_watermarks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::in_var_dir(dir.path());
    {
        let mut store = Store::open(cfg.clone()).unwrap();
        let mut batch = stamped(steps("r", "a", 4), "p", 1);
        store.append(&mut batch, &[]).unwrap();
    }
    let mut store = Store::open(cfg).unwrap();
    assert_eq!(store.watermark("p").unwrap(), 4);
    let mut batch = stamped(steps("r", "a", 5), "p", 1);
    let report = store.append(&mut batch, &[]).unwrap();
    assert_eq!((report.stored, report.duplicates), (1, 4));
    assert_eq!(report.outcomes[4], AppendOutcome::Stored { seq: 5 });
}

fn arb_step() -> impl Strategy<Value = RunStep> {
    (
        (
            "[a-z0-9-]{1,12}",
            any::<u64>(),
            any::<u64>(),
            "\\PC{0,20}",
            -1e12f64..1e12,
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(-4_000_000_000_000_000_000i64..4_000_000_000_000_000_000),
        ),
        (
            "\\PC{0,8}",
            "[a-z_]{0,6}",
            prop::sample::select(vec![
                "human",
                "agent",
                "multi_agent",
                "hybrid",
                "replay",
                "unknown",
            ]),
            any::<u32>(),
            "\\PC{0,30}",
        ),
    )
        .prop_map(
            |((run, ep, st, obs, reward, term, trunc, ts), (label, agent, mode, pv, info))| {
                RunStep {
                    run_id: run,
                    episode_index: ep,
                    step_index: st,
                    action_json: obs.clone(),
                    observation_json: obs,
                    reward,
                    terminated: term,
                    truncated: trunc,
                    timestamp: ts.map(telemetry_core::timestamp::from_unix_nanos),
                    policy_label: label.clone(),
                    backend: label,
                    agent_id: agent,
                    render_hint_json: info.clone(),
                    frame_ref: info.clone(),
                    payload_version: pv,
                    control_mode: mode.into(),
                    info_json: info,
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_step_reads_back_equal(steps in prop::collection::vec(arb_step(), 1..20)) {
        let mut ts = TempStore::new();
        let mut records: Vec<Record> = steps.into_iter().map(Record::from).collect();
        ts.store.append(&mut records, &[]).unwrap();
        let (read, _, _) = read_all(&ts);
        let read: Vec<Record> = read.into_iter().map(Record::from).collect();
        prop_assert_eq!(read, records);
    }

    /// Whatever mix of resends, reorderings and rejections a producer sends, every
    /// producer_seq is stored at most once, in the order it was first accepted, and the
    /// watermark is the highest seq seen.
    #[test]
    fn resends_are_stored_exactly_once(
        sends in prop::collection::vec((1u64..40, 1usize..8, any::<bool>()), 1..12)
    ) {
        let mut ts = TempStore::new();
        let mut stored_seqs = Vec::new();
        let mut high: Option<u64> = None;
        for (start, len, reject_last) in sends {
            let mut batch: Vec<Record> = (start..start + len as u64)
                .map(|s| {
                    let mut r = Record::from(step("r", "a", 0, s));
                    r.set_producer("p", s);
                    r
                })
                .collect();
            let rejected = if reject_last {
                batch.pop().map(|r| vec![("p".to_string(), r.producer().1)]).unwrap_or_default()
            } else {
                Vec::new()
            };
            let report = ts.store.append(&mut batch, &rejected).unwrap();
            for (r, o) in batch.iter().zip(&report.outcomes) {
                let seq = r.producer().1;
                let dup = high.is_some_and(|h| seq <= h);
                prop_assert_eq!(matches!(o, AppendOutcome::Duplicate), dup);
                if !dup {
                    stored_seqs.push(seq);
                    high = Some(seq);
                }
            }
            for (_, s) in &rejected {
                high = Some(high.map_or(*s, |h| h.max(*s)));
            }
            prop_assert_eq!(ts.store.watermark("p").unwrap(), high.unwrap_or(0));
        }
        let (read, _, _) = read_all(&ts);
        let read_seqs: Vec<u64> = read.iter().map(|s| s.producer_seq).collect();
        prop_assert_eq!(read_seqs, stored_seqs);
    }
}

#[test]
fn lifecycle_events_keep_their_kind_and_run() {
    let mut ts = TempStore::new();
    let mut batch: Vec<Record> = vec![
        run_started("a").into(),
        run_started("b").into(),
        run_completed("a", CompletionStatus::Failed).into(),
    ];
    ts.store.append(&mut batch, &[]).unwrap();
    let reader = ts.store.reader().unwrap();
    let only_a = reader.events_since(0, Some("a"), 10).unwrap();
    assert_eq!(only_a.len(), 2);
    assert!(matches!(only_a[1].kind, Some(Kind::RunCompleted(ref c)) if c.seq_id == 3));
    assert_eq!(reader.events_since(1, None, 1).unwrap()[0].run_id(), "b");
}
