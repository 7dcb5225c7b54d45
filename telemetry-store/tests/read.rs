//! Readers: keyset paging, filters, summaries, replay queries, and independence from the writer.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::pb::{CompletionStatus, Record, RunInfo, RunState, RunStep};
use telemetry_store::{ControlMode, Filter, LastSeqs, ModeFilter, StoreError, StoreReader};

/// 3 runs x 2 agents x mixed modes, 60 steps and 12 episodes, interleaved.
fn populated() -> TempStore {
    let mut ts = TempStore::with(|cfg| cfg.page_size = 7);
    let modes = ["agent", "human", "unknown"];
    let mut batch = Vec::new();
    for i in 0..60u64 {
        let run = format!("run-{}", i % 3);
        let agent = format!("agent-{}", i % 2);
        let mut s = step(&run, &agent, i / 20, i);
        s.control_mode = modes[(i % 3) as usize].into();
        batch.push(Record::from(s));
        if i % 5 == 4 {
            batch.push(episode(&run, &agent, i / 5, modes[(i / 5 % 3) as usize]).into());
        }
    }
    ts.store.append(&mut batch, &[]).unwrap();
    ts
}

fn all_steps(reader: &StoreReader) -> Vec<RunStep> {
    reader
        .stream_steps_since(0, &Filter::default())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn matches(filter: &Filter, run: &str, agent: &str, mode: &str) -> bool {
    filter.run_id.as_deref().is_none_or(|r| r == run)
        && filter.agent_id.as_deref().is_none_or(|a| a == agent)
        && match filter.control_mode {
            ModeFilter::Any => true,
            ModeFilter::Exact(m) => m.as_str() == mode,
            ModeFilter::HumanOrUnknown => mode == "human" || mode == "unknown",
        }
}

fn all_filters() -> Vec<Filter> {
    let mut out = Vec::new();
    for run in [None, Some("run-1".to_string())] {
        for agent in [None, Some("agent-0".to_string())] {
            for mode in [
                ModeFilter::Any,
                ModeFilter::Exact(ControlMode::Human),
                ModeFilter::Exact(ControlMode::Unknown),
                ModeFilter::HumanOrUnknown,
            ] {
                out.push(Filter {
                    run_id: run.clone(),
                    agent_id: agent.clone(),
                    control_mode: mode,
                });
            }
        }
    }
    out
}

#[test]
fn streams_page_through_everything_in_seq_order_and_resume_anywhere() {
    let ts = populated();
    let reader = ts.store.reader().unwrap();
    assert_eq!(reader.page_size(), 7);
    let steps = all_steps(&reader);
    let seqs: Vec<u64> = steps.iter().map(|s| s.seq_id).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    for since in [0, 1, 6, 7, 8, 59, 60, 1000, u64::MAX] {
        let rest: Vec<u64> = reader
            .stream_steps_since(since, &Filter::default())
            .map(|s| s.unwrap().seq_id)
            .collect();
        assert_eq!(
            rest,
            seqs.iter()
                .copied()
                .filter(|s| *s > since)
                .collect::<Vec<_>>()
        );
    }
    let episodes: Vec<u64> = reader
        .stream_episodes_since(0, &Filter::default())
        .map(|e| e.unwrap().seq_id)
        .collect();
    assert_eq!(episodes, (1..=12).collect::<Vec<_>>());
}

#[test]
fn every_filter_selects_exactly_the_matching_rows() {
    let ts = populated();
    let reader = ts.store.reader().unwrap();
    let steps = all_steps(&reader);
    let episodes: Vec<_> = reader
        .stream_episodes_since(0, &Filter::default())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    for filter in all_filters() {
        let want: Vec<u64> = steps
            .iter()
            .filter(|s| matches(&filter, &s.run_id, &s.agent_id, &s.control_mode))
            .map(|s| s.seq_id)
            .collect();
        let got: Vec<u64> = reader
            .stream_steps_since(0, &filter)
            .map(|s| s.unwrap().seq_id)
            .collect();
        assert_eq!(got, want, "steps {filter:?}");
        let want: Vec<u64> = episodes
            .iter()
            .filter(|e| matches(&filter, &e.run_id, &e.agent_id, &e.control_mode))
            .map(|e| e.seq_id)
            .collect();
        let got: Vec<u64> = reader
            .stream_episodes_since(0, &filter)
            .map(|e| e.unwrap().seq_id)
            .collect();
        assert_eq!(got, want, "episodes {filter:?}");
        // One bounded page from the middle.
        let page = reader.read_steps_page(10, &filter, 3).unwrap();
        assert!(page.len() <= 3);
        assert!(page.iter().all(|s| s.seq_id > 10));
    }
}

#[test]
fn a_reader_never_blocks_the_writer_and_sees_new_rows_on_its_next_page() {
    let mut ts = TempStore::with(|cfg| cfg.page_size = 4);
    let mut batch = steps("r", "a", 10);
    ts.store.append(&mut batch, &[]).unwrap();
    let reader = ts.store.reader().unwrap();
    let mut iter = reader.stream_steps_since(0, &Filter::default());
    let first: Vec<u64> = iter.by_ref().take(5).map(|s| s.unwrap().seq_id).collect();
    assert_eq!(first, [1, 2, 3, 4, 5]);
    // Mid-iteration, the writer commits more rows (and checkpoints) without waiting.
    let mut more = steps("r", "a", 5);
    ts.store.append(&mut more, &[]).unwrap();
    ts.store.checkpoint().unwrap();
    let rest: Vec<u64> = iter.map(|s| s.unwrap().seq_id).collect();
    assert_eq!(rest, (6..=15).collect::<Vec<_>>());
}

#[test]
fn readers_are_send_and_open_independently() {
    fn assert_send<T: Send>() {}
    assert_send::<StoreReader>();
    assert_send::<telemetry_store::Store>();
    let ts = populated();
    let path = ts.path();
    let handle = std::thread::spawn(move || {
        let reader = StoreReader::open(&path).unwrap();
        reader.last_seqs().unwrap()
    });
    assert_eq!(
        handle.join().unwrap(),
        LastSeqs {
            scalars: 0,
            steps: 60,
            episodes: 12,
            events: 0
        }
    );
}

#[test]
fn list_runs_summarises_each_run_from_the_writer_bookkeeping() {
    let mut ts = populated();
    let mut batch: Vec<Record> = vec![
        run_started("run-0").into(),
        run_completed("run-0", CompletionStatus::Failed).into(),
        run_completed("run-0", CompletionStatus::Succeeded).into(),
    ];
    ts.store.append(&mut batch, &[]).unwrap();
    let reader = ts.store.reader().unwrap();
    let runs = reader.list_runs().unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
        ["run-0", "run-1", "run-2"]
    );
    let steps = all_steps(&reader);
    let episodes: Vec<_> = reader
        .stream_episodes_since(0, &Filter::default())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    for run in &runs {
        let rs: Vec<&RunStep> = steps.iter().filter(|s| s.run_id == run.run_id).collect();
        let re: Vec<_> = episodes.iter().filter(|e| e.run_id == run.run_id).collect();
        assert_eq!(run.step_count, rs.len() as u64);
        assert_eq!(run.episode_count, re.len() as u64);
        assert_eq!(run.last_step_seq, rs.last().unwrap().seq_id);
        assert_eq!(run.last_episode_seq, re.last().unwrap().seq_id);
        let mut agents: Vec<String> = rs.iter().map(|s| s.agent_id.clone()).collect();
        agents.sort();
        agents.dedup();
        assert_eq!(run.agent_ids, agents);
        let mut modes: Vec<String> = rs
            .iter()
            .map(|s| s.control_mode.clone())
            .chain(re.iter().map(|e| e.control_mode.clone()))
            .collect();
        modes.sort();
        modes.dedup();
        assert_eq!(run.control_modes, modes);
    }
    let run0 = &runs[0];
    // Lifecycle events count for the time range: run_started is the earliest record.
    assert_eq!(run0.first_timestamp_ns, Some(1_795_914_100_000_000_000));
    let completion = run0.completion.as_ref().unwrap();
    assert_eq!(completion.status, CompletionStatus::Succeeded as i32);
    assert_eq!(completion.seq_id, 3);
    assert!(runs[1].completion.is_none());
}

#[test]
fn run_infos_are_upserted_by_run_id() {
    let mut ts = TempStore::new();
    let info = |state: RunState, reason: &str| RunInfo {
        run_id: "run-9".into(),
        state: state as i32,
        failure_reason: reason.into(),
        exit_code: Some(3),
        created_at: Some(telemetry_core::timestamp::from_unix_nanos(5)),
        ..Default::default()
    };
    ts.store.put_run_info(&info(RunState::Running, "")).unwrap();
    ts.store
        .put_run_info(&RunInfo {
            run_id: "run-1".into(),
            ..Default::default()
        })
        .unwrap();
    ts.store
        .put_run_info(&info(RunState::Failed, "oom"))
        .unwrap();
    let infos = ts.store.reader().unwrap().run_infos().unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].run_id, "run-1");
    assert_eq!(infos[1], info(RunState::Failed, "oom"));
}

#[test]
fn replay_queries_are_bounded_and_ordered() {
    let ts = populated();
    let reader = ts.store.reader().unwrap();
    let human = reader.human_replay_episodes(0, 100).unwrap();
    assert!(!human.is_empty());
    assert!(human
        .iter()
        .all(|e| e.control_mode == "human" || e.control_mode == "unknown"));
    let page = reader.human_replay_episodes(human[0].seq_id, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq_id, human[1].seq_id);

    let latest = reader.run_agent_episodes("run-1", None, 2).unwrap();
    let all_run1: Vec<u64> = reader
        .stream_episodes_since(0, &Filter::run("run-1"))
        .map(|e| e.unwrap().seq_id)
        .collect();
    assert_eq!(
        latest.iter().map(|e| e.seq_id).collect::<Vec<_>>(),
        all_run1[all_run1.len() - 2..]
    );
    let by_agent = reader
        .run_agent_episodes("run-1", Some("agent-0"), 100)
        .unwrap();
    assert!(by_agent.iter().all(|e| e.agent_id == "agent-0"));
    assert!(by_agent.windows(2).all(|w| w[0].seq_id < w[1].seq_id));
}

#[test]
fn episode_steps_come_in_step_order_and_page_by_step_index() {
    let mut ts = TempStore::new();
    // Steps of two episodes arrive interleaved and out of order.
    let mut batch: Vec<Record> = [3u64, 0, 2, 1, 4]
        .iter()
        .flat_map(|&i| [step("r", "a", 7, i).into(), step("r", "a", 8, i).into()])
        .chain([step("r", "b", 7, 0).into()])
        .collect();
    ts.store.append(&mut batch, &[]).unwrap();
    let reader = ts.store.reader().unwrap();
    let ep = reader.episode_steps("r", "a", 7, 100).unwrap();
    assert_eq!(
        ep.iter().map(|s| s.step_index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert!(ep.iter().all(|s| s.episode_index == 7 && s.agent_id == "a"));
    assert_eq!(reader.episode_steps("r", "a", 7, 2).unwrap().len(), 2);
    let from3 = reader.episode_steps_from("r", "a", 7, 3, 100).unwrap();
    assert_eq!(
        from3.iter().map(|s| s.step_index).collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(reader.episode_steps("r", "zz", 7, 10).unwrap().is_empty());
}

#[test]
fn events_since_is_bounded() {
    let mut ts = TempStore::new();
    let mut batch: Vec<Record> = (0..10)
        .map(|i| run_started(&format!("r{i}")).into())
        .collect();
    ts.store.append(&mut batch, &[]).unwrap();
    let reader = ts.store.reader().unwrap();
    let page = reader.events_since(3, None, 4).unwrap();
    assert_eq!(
        page.iter().map(Record::seq_id).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert!(reader.events_since(10, None, 4).unwrap().is_empty());
}

#[test]
fn a_row_that_cannot_be_decoded_is_a_typed_error_naming_its_seq() {
    let mut ts = TempStore::new();
    let mut batch = steps("r", "a", 3);
    ts.store.append(&mut batch, &[]).unwrap();
    // Another tool wrote bytes that are not UTF-8 into a text column.
    let side = rusqlite::Connection::open(ts.path()).unwrap();
    side.execute(
        "UPDATE steps SET observation_json = CAST(x'ff00fe' AS TEXT) WHERE seq = 2",
        [],
    )
    .unwrap();
    let reader = ts.store.reader().unwrap();
    let items: Vec<_> = reader.stream_steps_since(0, &Filter::default()).collect();
    // The page holding the bad row fails as a whole, and the iterator stops there.
    assert_eq!(items.len(), 1);
    match &items[0] {
        Err(StoreError::Decode { what, seq, .. }) => assert_eq!((*what, *seq), ("step", 2)),
        other => panic!("expected a decode error, got {other:?}"),
    }
    // Reading past it works.
    assert_eq!(
        reader
            .read_steps_page(2, &Filter::default(), 10)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn iterating_huge_rows_cuts_pages_by_bytes_without_losing_any() {
    // 24 rows of 1 MiB: far more than one page's byte budget, with a page size that would
    // otherwise take them all at once.
    let mut ts = TempStore::with(|cfg| cfg.page_size = 4096);
    let mut batch: Vec<Record> = (0..24u64)
        .map(|i| {
            let mut s = step("big", "a", 0, i);
            s.observation_json = format!("\"{}\"", "o".repeat(1024 * 1024));
            Record::from(s)
        })
        .collect();
    ts.store.append(&mut batch, &[]).unwrap();
    let reader = ts.store.reader().unwrap();
    let seqs: Vec<u64> = reader
        .stream_steps_since(0, &Filter::default())
        .map(|s| {
            let s = s.unwrap();
            assert_eq!(s.observation_json.len(), 1024 * 1024 + 2);
            s.seq_id
        })
        .collect();
    assert_eq!(seqs, (1..=24).collect::<Vec<_>>());
    // An explicit page keeps its exact semantics: `limit` rows unless the stream ends.
    assert_eq!(
        reader
            .read_steps_page(0, &Filter::default(), 20)
            .unwrap()
            .len(),
        20
    );
}

#[test]
fn tail_steps_and_run_completion_serve_restart_warming() {
    let mut ts = populated();
    let reader = ts.store.reader().unwrap();
    let tail = reader.tail_steps("run-1", 5).unwrap();
    let expected: Vec<u64> = all_steps(&reader)
        .into_iter()
        .filter(|s| s.run_id == "run-1")
        .map(|s| s.seq_id)
        .collect();
    let got: Vec<u64> = tail.iter().map(|s| s.seq_id).collect();
    assert_eq!(
        got,
        expected[expected.len() - 5..],
        "the latest five, oldest first"
    );

    assert!(reader.run_completion("run-1").unwrap().is_none());
    let mut done: Vec<Record> = vec![
        run_completed("run-1", CompletionStatus::Failed).into(),
        run_completed("run-1", CompletionStatus::Succeeded).into(),
    ];
    ts.store.append(&mut done, &[]).unwrap();
    let last = reader.run_completion("run-1").unwrap().expect("stored");
    assert_eq!(
        last.status,
        CompletionStatus::Succeeded as i32,
        "the latest completion"
    );
    assert!(reader.run_completion("run-0").unwrap().is_none());
}
