//! Two daemons' writers on one PostgreSQL store, and a reader paging with `since_seq` while
//! they append: the reader's pages must never skip a committed row (a seq that became visible
//! after a larger one would be skipped for good) nor repeat one, and a producer whose records
//! reach both daemons is stored exactly once.
//!
//! Deterministic checking: every writer records the seqs it was told were committed; once both
//! writers have joined, the reader drains what is left, and its union must equal the committed
//! set exactly. No sleeps: the interleavings are whatever the two writer threads and the
//! database make of them, over many rounds.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
};

use telemetry_core::pb::{self, Record};
use telemetry_store::{AppendOutcome, Backend, BackendReader, Filter};
use telemetry_store_pg::{testing, PgBackend};

const ROUNDS: u64 = 150;

fn step(producer: &str, pseq: u64, run: &str) -> Record {
    pb::RunStep {
        run_id: run.into(),
        agent_id: "a".into(),
        episode_index: pseq / 10,
        step_index: pseq % 10,
        action_json: "0".into(),
        observation_json: "{}".into(),
        reward: pseq as f64,
        control_mode: "agent".into(),
        producer_id: producer.into(),
        producer_seq: pseq,
        ..Default::default()
    }
    .into()
}

fn scalar(producer: &str, pseq: u64) -> Record {
    pb::Scalar {
        run_id: "r".into(),
        tag: "loss".into(),
        step: pseq as i64,
        value: 1.0 / pseq as f64,
        producer_id: producer.into(),
        producer_seq: pseq,
        ..Default::default()
    }
    .into()
}

/// One daemon's writer: its own producer's steps and scalars, plus the records of a producer
/// that both daemons receive (a worker whose shim failed over and resent).
fn writer(backend: PgBackend, me: &'static str) -> (BTreeSet<u64>, BTreeSet<u64>, u64) {
    let mut w = backend.open_writer().expect("open writer");
    let (mut steps, mut scalars, mut shared_stored) = (BTreeSet::new(), BTreeSet::new(), 0);
    let mut pseq = 0;
    for round in 0..ROUNDS {
        let mut batch = Vec::new();
        // 1 to 4 steps of our own producer, a scalar every other round.
        for _ in 0..=(round % 4) {
            pseq += 1;
            batch.push(step(me, pseq, me));
        }
        if round % 2 == 0 {
            pseq += 1;
            batch.push(scalar(me, pseq));
        }
        // Both daemons send the shared producer's seqs 2*round+1 and 2*round+2.
        batch.push(step("shared", 2 * round + 1, "shared"));
        batch.push(scalar("shared", 2 * round + 2));
        let report = w.append(&mut batch, &[]).expect("append");
        for (record, outcome) in batch.iter().zip(&report.outcomes) {
            if let AppendOutcome::Stored { seq } = outcome {
                let is_step = matches!(record.kind, Some(pb::record::Kind::Step(_)));
                let set = if is_step { &mut steps } else { &mut scalars };
                assert!(set.insert(*seq), "{me}: seq {seq} handed out twice");
                if record.producer().0 == "shared" {
                    shared_stored += 1;
                }
            }
        }
    }
    (steps, scalars, shared_stored)
}

/// Pages a stream from `since` to its current end; checks order within and across pages.
fn drain<T>(
    page: impl Fn(u64) -> Vec<T>,
    seq_of: fn(&T) -> u64,
    since: &mut u64,
    seen: &mut BTreeSet<u64>,
) {
    loop {
        let rows = page(*since);
        let Some(last) = rows.last().map(seq_of) else {
            return;
        };
        for row in &rows {
            let seq = seq_of(row);
            assert!(seq > *since, "page out of order: {seq} after {since}");
            assert!(seen.insert(seq), "seq {seq} read twice");
            *since = seq;
        }
        assert_eq!(*since, last);
    }
}

#[test]
fn two_writers_and_a_paging_reader_never_lose_or_repeat_a_row() {
    let Some(url) = testing::test_url("concurrency") else {
        return;
    };
    let cfg = testing::fresh_config(&url, "conc");
    let (a, b, c) = (
        PgBackend::new(cfg.clone()).expect("daemon a"),
        PgBackend::new(cfg.clone()).expect("daemon b"),
        PgBackend::new(cfg).expect("reader"),
    );
    // Create the schema before anyone reads it.
    a.migrate().expect("migrate");
    let reader: Arc<dyn BackendReader> = c.reader().expect("reader");
    let done = Arc::new(AtomicBool::new(false));
    let paging = {
        let (reader, done) = (reader.clone(), done.clone());
        thread::spawn(move || {
            let (mut steps, mut scalars) = (BTreeSet::new(), BTreeSet::new());
            let (mut step_since, mut scalar_since) = (0, 0);
            let mut passes = 0u64;
            loop {
                // Read `done` before the pass: a pass that starts after both writers joined
                // sees every commit, so it is the last one needed.
                let finished = done.load(Ordering::Acquire);
                drain(
                    |s| reader.steps_page(s, &Filter::default(), 5).expect("steps"),
                    |r| r.seq_id,
                    &mut step_since,
                    &mut steps,
                );
                drain(
                    |s| {
                        reader
                            .scalars_page(s, &Filter::default(), 3)
                            .expect("scalars")
                    },
                    |r| r.seq_id,
                    &mut scalar_since,
                    &mut scalars,
                );
                passes += 1;
                if finished {
                    break;
                }
                assert!(passes < 10_000_000, "the writers never finished");
            }
            (steps, scalars, passes)
        })
    };
    let wa = thread::spawn(move || writer(a, "pa"));
    let wb = thread::spawn(move || writer(b, "pb"));
    let (sa, ca, shared_a) = wa.join().expect("writer a");
    let (sb, cb, shared_b) = wb.join().expect("writer b");
    done.store(true, Ordering::Release);
    let (read_steps, read_scalars, passes) = paging.join().expect("reader");

    assert!(
        sa.is_disjoint(&sb) && ca.is_disjoint(&cb),
        "a seq given to both"
    );
    let committed_steps: BTreeSet<u64> = sa.union(&sb).copied().collect();
    let committed_scalars: BTreeSet<u64> = ca.union(&cb).copied().collect();
    assert_eq!(
        read_steps, committed_steps,
        "the reader's steps are the committed ones"
    );
    assert_eq!(read_scalars, committed_scalars, "and its scalars");
    // Seqs are dense: a rolled-back transaction gives its numbers back.
    assert_eq!(
        committed_steps.iter().copied().collect::<Vec<_>>(),
        (1..=committed_steps.len() as u64).collect::<Vec<_>>()
    );
    // The shared producer's 2 * ROUNDS records were stored once, between both daemons.
    assert_eq!(
        shared_a + shared_b,
        2 * ROUNDS,
        "exactly once across daemons"
    );
    eprintln!(
        "steps {}, scalars {}, shared split {shared_a}/{shared_b}, reader passes {passes}",
        committed_steps.len(),
        committed_scalars.len()
    );
}
