//! The conformance suite every [`Backend`] must pass (feature `conformance`).
//!
//! Each check takes a fresh, empty backend and panics with a message naming the broken clause
//! of the contract in [`crate::backend`]. A backend's test file runs them all with one macro:
//!
//! ```text
//! telemetry_store::conformance_tests!(|| my_fresh_backend());
//! ```
//!
//! which expands to one `#[test]` per check, so a failure names the check. A backend that needs
//! an outside server may skip when it has none:
//!
//! ```text
//! telemetry_store::conformance_tests!(optional: || my_backend_if_configured());
//! ```
//!
//! where the closure returns `Option<Arc<dyn Backend>>` (`None`: the test returns at once; the
//! closure says why, and should fail instead where skipping is not allowed, e.g. in CI).

use std::sync::Arc;

use telemetry_core::pb::{self, Record, RunCompleted, RunEpisode, RunInfo, RunStep};

use crate::{AppendOutcome, Backend, Filter, ModeFilter};

/// One conformance check: panics when the backend breaks a clause of the contract.
pub type Check = fn(&dyn Backend);

/// Every check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("seqs_increase_per_stream", seqs_increase_per_stream),
    ("resends_are_duplicates", resends_are_duplicates),
    (
        "a_first_seq_of_zero_is_stored",
        a_first_seq_of_zero_is_stored,
    ),
    (
        "rejected_stamps_advance_watermarks",
        rejected_stamps_advance_watermarks,
    ),
    (
        "a_failed_append_leaves_nothing",
        a_failed_append_leaves_nothing,
    ),
    ("keyset_pages_never_skip", keyset_pages_never_skip),
    (
        "filters_select_run_agent_and_mode",
        filters_select_run_agent_and_mode,
    ),
    ("the_run_registry_round_trips", the_run_registry_round_trips),
    ("run_stats_and_completion", run_stats_and_completion),
    (
        "watermarks_survive_a_new_writer",
        watermarks_survive_a_new_writer,
    ),
    (
        "tails_are_the_latest_in_seq_order",
        tails_are_the_latest_in_seq_order,
    ),
    (
        "scalars_keep_nan_and_downsample_in_the_store",
        scalars_keep_nan_and_downsample_in_the_store,
    ),
    (
        "policy_provenance_round_trips",
        policy_provenance_round_trips,
    ),
];

/// Runs every check, each on its own fresh backend from `fresh`.
pub fn run_all(fresh: &mut dyn FnMut() -> Arc<dyn Backend>) {
    for (name, check) in CHECKS {
        let backend = fresh();
        eprintln!("conformance: {name} on {}", backend.describe());
        check(backend.as_ref());
    }
}

/// One `#[test]` per conformance check, each on a backend made by `$fresh` (an expression
/// callable as `$fresh() -> Arc<dyn Backend>`; keep whatever owns its files alive inside it,
/// e.g. by leaking a temporary directory into the backend's path).
#[macro_export]
macro_rules! conformance_tests {
    (@each [$make:expr]) => {
        $crate::conformance_tests!(@list [$make];
            seqs_increase_per_stream, resends_are_duplicates, a_first_seq_of_zero_is_stored,
            rejected_stamps_advance_watermarks, a_failed_append_leaves_nothing,
            keyset_pages_never_skip, filters_select_run_agent_and_mode,
            the_run_registry_round_trips, run_stats_and_completion,
            watermarks_survive_a_new_writer, tails_are_the_latest_in_seq_order,
            scalars_keep_nan_and_downsample_in_the_store, policy_provenance_round_trips);
    };
    (@list [$make:expr]; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let backend: ::std::option::Option<::std::sync::Arc<dyn $crate::Backend>> =
                    $make;
                let ::std::option::Option::Some(backend) = backend else {
                    return;
                };
                $crate::conformance::$name(backend.as_ref());
            }
        )*
    };
    (optional: $fresh:expr) => {
        $crate::conformance_tests!(@each [($fresh)()]);
    };
    ($fresh:expr) => {
        $crate::conformance_tests!(@each [::std::option::Option::Some(($fresh)())]);
    };
}

fn step(run: &str, agent: &str, mode: &str, producer: &str, pseq: u64, i: u64) -> Record {
    RunStep {
        run_id: run.into(),
        agent_id: agent.into(),
        episode_index: i / 10,
        step_index: i % 10,
        action_json: "1".into(),
        observation_json: format!("{{\"i\":{i}}}"),
        reward: i as f64 * 0.5,
        control_mode: mode.into(),
        producer_id: producer.into(),
        producer_seq: pseq,
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + i as i64,
            nanos: 0,
        }),
        ..Default::default()
    }
    .into()
}

fn episode(run: &str, agent: &str, producer: &str, pseq: u64, i: u64) -> Record {
    RunEpisode {
        run_id: run.into(),
        agent_id: agent.into(),
        episode_index: i,
        total_reward: i as f64,
        steps: 10,
        terminated: true,
        control_mode: "agent".into(),
        producer_id: producer.into(),
        producer_seq: pseq,
        ..Default::default()
    }
    .into()
}

fn steps_of(producer: &str, from: u64, n: u64) -> Vec<Record> {
    (from..from + n)
        .map(|s| step("r", "a", "agent", producer, s, s))
        .collect()
}

/// The seqs of an append's stored records, in order (duplicates have none).
pub fn stored_seqs(outcomes: &[AppendOutcome]) -> Vec<u64> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            AppendOutcome::Stored { seq } => Some(*seq),
            AppendOutcome::Duplicate => None,
        })
        .collect()
}

fn all_steps(b: &dyn Backend, filter: &Filter) -> Vec<RunStep> {
    let reader = b.reader().expect("reader");
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let page = reader.steps_page(since, filter, 7).expect("steps page");
        let Some(last) = page.last() else { break };
        since = last.seq_id;
        out.extend(page);
    }
    out
}

/// Steps, episodes and lifecycle events each get their own strictly increasing seq, written
/// back into the records.
pub fn seqs_increase_per_stream(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    let mut batch = steps_of("p", 1, 3);
    batch.push(episode("r", "a", "p", 4, 0));
    batch.push(
        RunCompleted {
            run_id: "r".into(),
            status: pb::CompletionStatus::Succeeded as i32,
            ..Default::default()
        }
        .into(),
    );
    let report = w.append(&mut batch, &[]).expect("append");
    assert_eq!(report.stored, 5, "every new record is stored");
    let mut more = steps_of("p", 5, 2);
    let again = w.append(&mut more, &[]).expect("append");
    let first = stored_seqs(&report.outcomes);
    let second = stored_seqs(&again.outcomes);
    assert!(
        first[0] < first[1] && first[1] < first[2],
        "steps: {first:?}"
    );
    assert!(
        second[0] > first[2] && second[1] > second[0],
        "steps continue: {second:?}"
    );
    assert_eq!(
        batch[0].seq_id(),
        first[0],
        "seq written back into the record"
    );
    let reader = b.reader().expect("reader");
    assert_eq!(
        reader.events_page(0, Some("r"), 10).expect("events").len(),
        1
    );
    assert_eq!(
        reader
            .episodes_page(0, &Filter::default(), 10)
            .expect("episodes")
            .len(),
        1
    );
}

/// A record at or below its producer's watermark is a duplicate and is not stored again; the
/// report carries the watermark.
pub fn resends_are_duplicates(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    w.append(&mut steps_of("p", 1, 5), &[]).expect("append");
    let mut resend = steps_of("p", 3, 5); // 3..=7: 3 duplicates, 2 new
    let report = w.append(&mut resend, &[]).expect("append");
    assert_eq!((report.stored, report.duplicates), (2, 3));
    assert_eq!(report.watermarks, vec![("p".to_owned(), 7)]);
    assert_eq!(w.watermark("p").expect("watermark"), 7);
    assert_eq!(
        all_steps(b, &Filter::default()).len(),
        7,
        "stored once each"
    );
    // Records without a producer are always stored.
    let mut anon = vec![
        step("r", "a", "agent", "", 0, 1),
        step("r", "a", "agent", "", 0, 1),
    ];
    assert_eq!(w.append(&mut anon, &[]).expect("append").stored, 2);
}

/// A producer with no watermark yet has seen nothing, so its first seq may be 0.
pub fn a_first_seq_of_zero_is_stored(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    assert_eq!(w.watermark("z").expect("watermark"), 0);
    let report = w.append(&mut steps_of("z", 0, 2), &[]).expect("append");
    assert_eq!(report.stored, 2, "seq 0 and 1 stored");
    let again = w.append(&mut steps_of("z", 0, 2), &[]).expect("append");
    assert_eq!(again.duplicates, 2, "and only once");
}

/// A rejected stamp advances its producer's watermark (so a resend of it is a duplicate) and
/// never moves it back.
pub fn rejected_stamps_advance_watermarks(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    let report = w
        .append(
            &mut steps_of("p", 1, 2),
            &[("p".into(), 3), ("q".into(), 9)],
        )
        .expect("append");
    assert_eq!(report.stored, 2);
    assert_eq!(w.watermark("p").expect("watermark"), 3);
    assert_eq!(w.watermark("q").expect("watermark"), 9);
    w.append(&mut [], &[("q".into(), 4)]).expect("append");
    assert_eq!(w.watermark("q").expect("watermark"), 9, "never backwards");
    let resend = w.append(&mut steps_of("p", 3, 2), &[]).expect("append");
    assert_eq!((resend.stored, resend.duplicates), (1, 1));
}

/// A failed append stores nothing, moves no watermark, leaves the records unchanged, and the
/// backend keeps working.
pub fn a_failed_append_leaves_nothing(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    w.append(&mut steps_of("p", 1, 2), &[]).expect("append");
    let mut bad = steps_of("p", 3, 3);
    bad.insert(1, Record::default());
    let before = bad.clone();
    let err = w
        .append(&mut bad, &[])
        .expect_err("an empty record fails the call");
    assert!(!err.is_retryable(), "bad data is not worth retrying: {err}");
    assert_eq!(bad, before, "records untouched");
    assert_eq!(w.watermark("p").expect("watermark"), 2);
    assert_eq!(all_steps(b, &Filter::default()).len(), 2);
    let ok = w.append(&mut steps_of("p", 3, 3), &[]).expect("append");
    assert_eq!(ok.stored, 3, "the backend keeps working");
}

/// Keyset pages from any `since_seq` return every later row once, in seq order.
pub fn keyset_pages_never_skip(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    for chunk in 0..10 {
        w.append(&mut steps_of("p", 1 + chunk * 25, 25), &[])
            .expect("append");
    }
    let all = all_steps(b, &Filter::default());
    assert_eq!(all.len(), 250);
    assert!(
        all.windows(2).all(|p| p[0].seq_id < p[1].seq_id),
        "seq order"
    );
    let middle = all[99].seq_id;
    let reader = b.reader().expect("reader");
    let page = reader
        .steps_page(middle, &Filter::default(), 1000)
        .expect("page");
    assert_eq!(page.len(), 150);
    assert_eq!(page[0].seq_id, all[100].seq_id);
}

/// Filters select by run, agent and control mode.
pub fn filters_select_run_agent_and_mode(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    let mut batch = vec![
        step("r1", "a", "agent", "p", 1, 1),
        step("r1", "b", "human", "p", 2, 2),
        step("r2", "a", "agent", "p", 3, 3),
        step("r1", "a", "human", "p", 4, 4),
    ];
    w.append(&mut batch, &[]).expect("append");
    let count = |f: Filter| all_steps(b, &f).len();
    assert_eq!(count(Filter::run("r1")), 3);
    assert_eq!(
        count(Filter {
            run_id: Some("r1".into()),
            agent_id: Some("a".into()),
            ..Filter::default()
        }),
        2
    );
    assert_eq!(
        count(Filter {
            control_mode: ModeFilter::Exact(crate::ControlMode::Human),
            ..Filter::default()
        }),
        2
    );
}

/// The run registry keeps the last info put for each run.
pub fn the_run_registry_round_trips(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    let mut info = RunInfo {
        run_id: "r".into(),
        state: pb::RunState::Running as i32,
        agent_id: "a".into(),
        ..Default::default()
    };
    w.put_run_info(&info).expect("put");
    info.state = pb::RunState::Completed as i32;
    w.put_run_info(&info).expect("put again");
    w.put_run_info(&RunInfo {
        run_id: "s".into(),
        ..Default::default()
    })
    .expect("put");
    let infos = b.reader().expect("reader").run_infos().expect("run infos");
    assert_eq!(infos.len(), 2);
    let r = infos.iter().find(|i| i.run_id == "r").expect("r");
    assert_eq!(r.state, pb::RunState::Completed as i32, "the last put wins");
}

/// Run statistics count what was stored; the last completion is found.
pub fn run_stats_and_completion(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    let mut batch = steps_of("p", 1, 4);
    batch.push(episode("r", "a", "p", 5, 0));
    w.append(&mut batch, &[]).expect("append");
    let reader = b.reader().expect("reader");
    assert_eq!(reader.run_completion("r").expect("completion"), None);
    let done = RunCompleted {
        run_id: "r".into(),
        status: pb::CompletionStatus::Failed as i32,
        error: "boom".into(),
        ..Default::default()
    };
    w.append(&mut [done.clone().into()], &[]).expect("append");
    let runs = reader.list_runs().expect("list runs");
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].step_count, runs[0].episode_count), (4, 1));
    assert_eq!(runs[0].agent_ids, vec!["a".to_owned()]);
    let stored = reader
        .run_completion("r")
        .expect("completion")
        .expect("stored");
    assert_eq!(stored.error, "boom");
}

/// A new writer of the same store (a restart) sees the watermarks and continues the seqs.
pub fn watermarks_survive_a_new_writer(b: &dyn Backend) {
    let last = {
        let mut w = b.open_writer().expect("open writer");
        let mut batch = steps_of("p", 1, 3);
        w.append(&mut batch, &[]).expect("append");
        batch[2].seq_id()
    };
    let mut w = b.open_writer().expect("reopen writer");
    assert_eq!(w.watermark("p").expect("watermark"), 3);
    let mut batch = steps_of("p", 3, 2);
    let report = w.append(&mut batch, &[]).expect("append");
    assert_eq!((report.stored, report.duplicates), (1, 1));
    assert!(batch[1].seq_id() > last, "seqs continue after a restart");
}

/// `tail_steps` and `run_agent_episodes` return the latest rows, oldest first.
pub fn tails_are_the_latest_in_seq_order(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    let mut batch = steps_of("p", 1, 20);
    batch.extend((0..6).map(|i| episode("r", if i % 2 == 0 { "a" } else { "b" }, "p", 21 + i, i)));
    w.append(&mut batch, &[]).expect("append");
    let reader = b.reader().expect("reader");
    let tail = reader.tail_steps("r", 5).expect("tail");
    let idx: Vec<u64> = tail
        .iter()
        .map(|s| s.episode_index * 10 + s.step_index)
        .collect();
    assert_eq!(idx, vec![16, 17, 18, 19, 20]);
    let eps = reader
        .run_agent_episodes("r", Some("a"), 2)
        .expect("episodes");
    let got: Vec<u64> = eps.iter().map(|e| e.episode_index).collect();
    assert_eq!(got, vec![2, 4]);
}

/// The wall time of the conformance scalars' step 0 (Unix ns).
const SCALAR_T0: i64 = 1_795_000_000_000_000_000;

fn scalar(run: &str, agent: &str, tag: &str, step: i64, value: f64, pseq: u64) -> Record {
    pb::Scalar {
        run_id: run.into(),
        agent_id: agent.into(),
        tag: tag.into(),
        step,
        value,
        producer_id: "ps".into(),
        producer_seq: pseq,
        ..Default::default()
    }
    .into()
}

/// Scalars: their own seq stream, exactly once, NaN and infinities kept, the tag summary kept
/// by appends, and the downsampled read (min/max/last per bucket) computed by the backend.
pub fn scalars_keep_nan_and_downsample_in_the_store(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    let mut batch: Vec<Record> = (0..1000)
        .map(|i| {
            let v = match i {
                250 => 1e9,
                420 => f64::NAN,
                421 => f64::NEG_INFINITY,
                _ => i as f64,
            };
            let mut r = scalar("r", "", "losses/value_loss", i, v, i as u64 + 1);
            // Every point has a wall time but the last one.
            if let Some(pb::record::Kind::Scalar(s)) = &mut r.kind {
                s.timestamp = (i != 999).then(|| {
                    telemetry_core::timestamp::from_unix_nanos(SCALAR_T0 + i * 1_000_000_000)
                });
            }
            r
        })
        .collect();
    batch.push(scalar("r", "a", "charts/episodic_return", 7, 1.5, 1001));
    batch.push(scalar("other", "", "losses/value_loss", 7, 2.5, 1002));
    let report = w.append(&mut batch, &[]).expect("append");
    assert_eq!(
        stored_seqs(&report.outcomes),
        (1..=1002).collect::<Vec<_>>()
    );
    let mut resend = vec![scalar("r", "", "losses/value_loss", 0, 0.0, 5)];
    let again = w.append(&mut resend, &[]).expect("append");
    assert_eq!(again.outcomes, vec![AppendOutcome::Duplicate]);

    let reader = b.reader().expect("reader");
    let page = reader
        .scalars_page(0, &Filter::run("r"), 2000)
        .expect("page");
    assert_eq!(page.len(), 1001);
    assert!(page[420].value.is_nan());
    assert_eq!(page[421].value, f64::NEG_INFINITY);
    assert_eq!(page[420].seq_id, 421);

    let tags = reader.list_tags("r", 100).expect("tags");
    let names: Vec<(&str, &str, u64)> = tags
        .iter()
        .map(|t| (t.tag.as_str(), t.agent_id.as_str(), t.points))
        .collect();
    assert_eq!(
        names,
        vec![
            ("charts/episodic_return", "a", 1),
            ("losses/value_loss", "", 1000)
        ]
    );
    assert_eq!((tags[1].first_step, tags[1].last_step), (0, 999));
    assert_eq!(tags[1].last_value, 999.0);

    let q = crate::ScalarQuery {
        run_id: "r".into(),
        tag_prefix: Some("losses/".into()),
        max_points: 10,
        ..Default::default()
    };
    let series = reader.read_scalars(&q).expect("read");
    assert_eq!(series.len(), 1);
    let s = &series[0];
    assert_eq!((s.points, s.buckets.len()), (1000, 10));
    assert_eq!(s.buckets[2].max, 1e9);
    assert_eq!(s.buckets[4].nan_count, 1);
    assert_eq!(s.buckets[4].min, f64::NEG_INFINITY);
    assert_eq!(s.buckets[9].last, 999.0);
    // Each bucket's time is its last point's; a point without one gives 0.
    assert_eq!(s.buckets[8].last_time_ns, SCALAR_T0 + 899 * 1_000_000_000);
    assert_eq!(s.buckets[9].last_time_ns, 0);
    let ranged = reader
        .read_scalars(&crate::ScalarQuery {
            min_step: Some(100),
            max_step: Some(104),
            ..q
        })
        .expect("range");
    let steps: Vec<i64> = ranged[0].buckets.iter().map(|b| b.first_step).collect();
    assert_eq!(steps, vec![100, 101, 102, 103, 104]);
    let times: Vec<i64> = ranged[0].buckets.iter().map(|b| b.last_time_ns).collect();
    let expected: Vec<i64> = (100..=104).map(|i| SCALAR_T0 + i * 1_000_000_000).collect();
    assert_eq!(times, expected);
}

/// The equipped policy's id and digest on steps and episodes, and a run's policy bindings and
/// evaluation links, read back as written (replays and charts show which policy acted).
pub fn policy_provenance_round_trips(b: &dyn Backend) {
    let mut w = b.open_writer().expect("open writer");
    let digest = "0123456789abcdef".repeat(4);
    let with_policy = |r: Record| match r.kind {
        Some(pb::record::Kind::Step(mut s)) => {
            s.policy_id = "FrozenLake-v1/q.json".into();
            s.policy_digest = digest.clone();
            Record::from(s)
        }
        Some(pb::record::Kind::Episode(mut e)) => {
            e.policy_id = "FrozenLake-v1/q.json".into();
            e.policy_digest = digest.clone();
            Record::from(e)
        }
        other => Record { kind: other },
    };
    let mut batch = vec![
        with_policy(step("r", "a", "replay", "p", 1, 0)),
        step("r", "b", "agent", "p", 2, 1),
        with_policy(episode("r", "a", "p", 3, 0)),
    ];
    w.append(&mut batch, &[]).expect("append");
    let steps = all_steps(b, &Filter::run("r"));
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].policy_id, "FrozenLake-v1/q.json");
    assert_eq!(steps[0].policy_digest, digest);
    assert_eq!(steps[1].policy_id, "", "an agent without a policy has none");
    let episodes = b
        .reader()
        .expect("reader")
        .episodes_page(0, &Filter::run("r"), 10)
        .expect("episodes");
    assert_eq!(episodes[0].policy_id, "FrozenLake-v1/q.json");
    assert_eq!(episodes[0].policy_digest, digest);
    let info = RunInfo {
        run_id: "eval".into(),
        policy_bindings: vec![pb::PolicyBinding {
            agent_id: "a".into(),
            policy_id: "FrozenLake-v1/q.json".into(),
            policy_digest: digest.clone(),
        }],
        evaluation_source_run_id: "r".into(),
        evaluation_source_policy_id: "FrozenLake-v1/q.json".into(),
        ..Default::default()
    };
    w.put_run_info(&info).expect("put");
    let infos = b.reader().expect("reader").run_infos().expect("infos");
    let got = infos.iter().find(|i| i.run_id == "eval").expect("eval");
    assert_eq!(got.policy_bindings, info.policy_bindings);
    assert_eq!(got.evaluation_source_run_id, "r");
    assert_eq!(got.evaluation_source_policy_id, "FrozenLake-v1/q.json");
}
