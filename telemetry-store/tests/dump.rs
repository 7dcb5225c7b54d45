//! Dump: JSONL that reads back to the stored records, filtered and resumable.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::{jsonl::parse_line, pb::Record};
use telemetry_store::{
    dump::{dump_jsonl, DumpOptions},
    ControlMode, Filter, ModeFilter, StoreError,
};

fn parse_all(out: &[u8]) -> Vec<Record> {
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| parse_line(l, i as u64 + 1).unwrap())
        .collect()
}

fn populated() -> TempStore {
    let mut ts = TempStore::with(|cfg| cfg.page_size = 8);
    let mut batch = Vec::new();
    for i in 0..40u64 {
        let mut s = step(if i % 2 == 0 { "even" } else { "odd" }, "a", i / 10, i);
        s.control_mode = if i % 4 == 0 { "human" } else { "agent" }.into();
        batch.push(Record::from(s));
    }
    batch.push(episode("even", "a", 0, "human").into());
    batch.push(episode("odd", "a", 0, "agent").into());
    ts.store.append(&mut batch, &[]).unwrap();
    ts
}

#[test]
fn a_dump_reads_back_as_the_stored_records() {
    let ts = populated();
    let reader = ts.store.reader().unwrap();
    let mut out = Vec::new();
    let report = dump_jsonl(&reader, &DumpOptions::default(), &mut out).unwrap();
    assert_eq!(report.records, 40);
    assert_eq!(report.last_seq, 40);
    assert_eq!(report.bytes, out.len() as u64);
    let stored: Vec<Record> = reader
        .stream_steps_since(0, &Filter::default())
        .map(|s| Record::from(s.unwrap()))
        .collect();
    assert_eq!(parse_all(&out), stored);
}

#[test]
fn dumps_filter_resume_and_switch_to_episodes() {
    let ts = populated();
    let reader = ts.store.reader().unwrap();
    let opts = DumpOptions {
        since_seq: 20,
        filter: Filter {
            run_id: Some("even".into()),
            control_mode: ModeFilter::Exact(ControlMode::Human),
            ..Filter::default()
        },
        episodes: false,
        scalars: false,
        events: false,
    };
    let mut out = Vec::new();
    let report = dump_jsonl(&reader, &opts, &mut out).unwrap();
    let records = parse_all(&out);
    let seqs: Vec<u64> = records.iter().map(Record::seq_id).collect();
    // Steps i = 20, 24, ..., 36 have seq i + 1.
    assert_eq!(seqs, [21, 25, 29, 33, 37]);
    assert_eq!(report.last_seq, 37);
    assert!(records.iter().all(|r| r.run_id() == "even"));
    // Resuming from the report's last_seq yields nothing new.
    let mut rest = Vec::new();
    let again = dump_jsonl(
        &reader,
        &DumpOptions {
            since_seq: report.last_seq,
            ..opts.clone()
        },
        &mut rest,
    )
    .unwrap();
    assert_eq!((again.records, again.last_seq, rest.len()), (0, 37, 0));

    let mut eps = Vec::new();
    let report = dump_jsonl(
        &reader,
        &DumpOptions {
            episodes: true,
            ..DumpOptions::default()
        },
        &mut eps,
    )
    .unwrap();
    assert_eq!(report.records, 2);
    let eps = parse_all(&eps);
    assert_eq!(eps[1].run_id(), "odd");
    assert!(matches!(
        eps[0].kind,
        Some(telemetry_core::pb::record::Kind::Episode(_))
    ));
}

/// A writer that fails after some bytes, like a closed pipe.
struct Broken(usize);

impl std::io::Write for Broken {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 < buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "closed",
            ));
        }
        self.0 -= buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_output_is_a_typed_error() {
    let ts = populated();
    let reader = ts.store.reader().unwrap();
    let err = dump_jsonl(&reader, &DumpOptions::default(), Broken(100)).unwrap_err();
    match err {
        StoreError::Output(e) => assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe),
        other => panic!("expected an output error, got {other}"),
    }
}

#[test]
fn scalars_dump_as_lines_that_read_back_nan_included() {
    let mut ts = populated();
    let mut batch: Vec<Record> = (0..5)
        .map(|i| {
            Record::from(telemetry_core::pb::Scalar {
                run_id: "even".into(),
                tag: "losses/td_loss".into(),
                value: if i == 3 { f64::NAN } else { i as f64 },
                step: i * 100,
                ..Default::default()
            })
        })
        .collect();
    ts.store.append(&mut batch, &[]).unwrap();
    let reader = ts.store.reader().unwrap();
    let mut out = Vec::new();
    let opts = DumpOptions {
        scalars: true,
        filter: Filter::run("even"),
        ..DumpOptions::default()
    };
    let report = dump_jsonl(&reader, &opts, &mut out).unwrap();
    assert_eq!((report.records, report.last_seq), (5, 5));
    let back = parse_all(&out);
    assert_eq!(back.len(), 5);
    match &back[3].kind {
        Some(telemetry_core::pb::record::Kind::Scalar(s)) => {
            assert!(s.value.is_nan());
            assert_eq!(s.step, 300);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Resuming after the last seq dumps nothing.
    let mut again = Vec::new();
    let opts = DumpOptions {
        since_seq: report.last_seq,
        ..opts
    };
    assert_eq!(dump_jsonl(&reader, &opts, &mut again).unwrap().records, 0);
}

#[test]
fn events_dump_as_lines_of_their_run_across_pages() {
    let mut ts = populated();
    // 20 events (page size 8: three pages), alternating runs.
    let mut batch: Vec<Record> = (0..20)
        .map(|i| {
            let run = if i % 2 == 0 { "even" } else { "odd" };
            match i % 3 {
                0 => Record::from(run_started(run)),
                1 => Record::from(artifact(run)),
                _ => Record::from(run_completed(
                    run,
                    telemetry_core::pb::CompletionStatus::Succeeded,
                )),
            }
        })
        .collect();
    ts.store.append(&mut batch, &[]).unwrap();
    let reader = ts.store.reader().unwrap();
    let opts = DumpOptions {
        events: true,
        filter: Filter::run("even"),
        ..DumpOptions::default()
    };
    let mut out = Vec::new();
    let report = dump_jsonl(&reader, &opts, &mut out).unwrap();
    let back = parse_all(&out);
    assert_eq!(report.records, 10);
    assert_eq!(report.last_seq, 19);
    assert!(back.iter().all(|r| r.run_id() == "even"));
    let seqs: Vec<u64> = back.iter().map(Record::seq_id).collect();
    assert_eq!(seqs, (0..10).map(|i| 2 * i + 1).collect::<Vec<_>>());
}
