//! Every stream round-trips through the parquet crate's own reader: exact rows, schema (names
//! and Arrow types), values (NaN, infinities, u64 above `i64::MAX`, null timestamps), row
//! groups cut as configured, and the same selection as the JSONL dump.
#![allow(clippy::unwrap_used)]

use std::{fs::File, path::Path};

use arrow_array::{
    cast::AsArray,
    types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType, UInt32Type, UInt64Type},
    Array, RecordBatch,
};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use telemetry_core::{
    jsonl::parse_line,
    pb::{
        Artifact, CompletionStatus, Record, RunCompleted, RunEpisode, RunStarted, RunStep, Scalar,
    },
    timestamp::from_unix_nanos,
};
use telemetry_export::{export_parquet, ExportError, ParquetOptions, Stream};
use telemetry_store::{
    dump::{dump_jsonl, DumpOptions},
    ControlMode, Filter, ModeFilter, Store, StoreConfig, StoreReader,
};

const BIG: u64 = (1 << 63) + 12_345;
const TS0: i64 = 1_795_914_168_088_378_923;

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn reader(&self) -> StoreReader {
        self.store.reader().unwrap()
    }

    fn out(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn step(i: u64) -> RunStep {
    RunStep {
        run_id: if i.is_multiple_of(2) { "even" } else { "odd" }.into(),
        episode_index: if i == 5 { BIG } else { i / 10 },
        step_index: if i == 5 { u64::MAX } else { i % 10 },
        action_json: format!("{}", i % 4),
        observation_json: format!(r#"{{"x":[{i},0.5],"s":"é\n"}}"#),
        reward: match i {
            3 => f64::NAN,
            4 => f64::NEG_INFINITY,
            _ => 0.25 * i as f64,
        },
        terminated: i % 7 == 6,
        truncated: i % 5 == 4,
        timestamp: (i != 7).then(|| from_unix_nanos(TS0 + 1_000 * i as i64)),
        policy_label: "ppo".into(),
        backend: "torch".into(),
        agent_id: format!("a{}", i % 3),
        render_hint_json: r#"{"w":84}"#.into(),
        frame_ref: format!("frames/{i}.png"),
        payload_version: 2,
        control_mode: if i.is_multiple_of(4) {
            "human"
        } else {
            "agent"
        }
        .into(),
        producer_id: "p".into(),
        producer_seq: i + 1,
        info_json: if i == 2 {
            String::new()
        } else {
            r#"{"epsilon":0.1}"#.into()
        },
        ..Default::default()
    }
}

const STEPS: u64 = 25;

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::in_var_dir(&dir.path().join("var"));
    cfg.page_size = 7; // several store pages per row group and groups across pages
    let mut store = Store::open(cfg).unwrap();
    let mut batch: Vec<Record> = (0..STEPS).map(|i| step(i).into()).collect();
    for i in 0..4u64 {
        batch.push(
            RunEpisode {
                run_id: "even".into(),
                episode_index: if i == 3 { BIG } else { i },
                total_reward: if i == 1 { f64::NAN } else { 1.5 + i as f64 },
                steps: 10 + i,
                terminated: i % 2 == 0,
                truncated: i % 2 == 1,
                metadata_json: format!(r#"{{"seed":{i}}}"#),
                timestamp: (i != 2).then(|| from_unix_nanos(TS0 + i as i64)),
                agent_id: "a0".into(),
                control_mode: if i == 0 { "human" } else { "agent" }.into(),
                producer_id: "p".into(),
                producer_seq: 100 + i,
                ..Default::default()
            }
            .into(),
        );
    }
    for i in 0..6i64 {
        batch.push(
            Scalar {
                run_id: if i == 5 { "odd" } else { "even" }.into(),
                agent_id: if i % 2 == 0 { "" } else { "a1" }.into(),
                tag: "losses/td_loss".into(),
                value: match i {
                    1 => f64::NAN,
                    2 => f64::INFINITY,
                    _ => i as f64 / 3.0,
                },
                step: if i == 4 { i64::MAX } else { i * 100 },
                timestamp: (i != 3).then(|| from_unix_nanos(TS0 + i)),
                producer_id: "p".into(),
                producer_seq: 200 + i as u64,
                ..Default::default()
            }
            .into(),
        );
    }
    batch.push(
        RunStarted {
            run_id: "even".into(),
            timestamp: Some(from_unix_nanos(TS0)),
            config_json: r#"{"lr":0.001}"#.into(),
            agent_id: "a0".into(),
            control_mode: "agent".into(),
            producer_id: "p".into(),
            producer_seq: 300,
            ..Default::default()
        }
        .into(),
    );
    batch.push(
        Artifact {
            run_id: "odd".into(),
            kind: "policy".into(),
            path: "/tmp/policy.pt".into(),
            info_json: "{}".into(),
            producer_id: "p".into(),
            producer_seq: 301,
            ..Default::default()
        }
        .into(),
    );
    batch.push(
        RunCompleted {
            run_id: "even".into(),
            timestamp: Some(from_unix_nanos(TS0 + 9)),
            status: CompletionStatus::Failed as i32,
            exit_code: Some(3),
            error: "boom".into(),
            producer_id: "p".into(),
            producer_seq: 302,
            ..Default::default()
        }
        .into(),
    );
    let report = store.append(&mut batch, &[]).unwrap();
    assert_eq!(report.stored, batch.len());
    Fixture { dir, store }
}

/// The file's schema, its batches (one per row group) and the stream named in its metadata.
fn read_back(path: &Path) -> (arrow_schema::SchemaRef, Vec<RecordBatch>, String) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let meta = builder.metadata().clone();
    let stream = meta
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "gym_telemetry.stream"))
        .and_then(|k| k.value.clone())
        .unwrap_or_default();
    let schema = builder.schema().clone();
    let mut batches = Vec::new();
    for rg in 0..meta.num_row_groups() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .with_row_groups(vec![rg])
            .with_batch_size(1 << 20)
            .build()
            .unwrap();
        for b in reader {
            batches.push(b.unwrap());
        }
    }
    (schema, batches, stream)
}

fn col<'a>(batches: &'a [RecordBatch], name: &str) -> Vec<&'a dyn Array> {
    batches
        .iter()
        .map(|b| b.column_by_name(name).unwrap().as_ref())
        .collect()
}

fn u64s(b: &[RecordBatch], name: &str) -> Vec<u64> {
    col(b, name)
        .into_iter()
        .flat_map(|a| a.as_primitive::<UInt64Type>().values().to_vec())
        .collect()
}

fn f64s(b: &[RecordBatch], name: &str) -> Vec<f64> {
    col(b, name)
        .into_iter()
        .flat_map(|a| a.as_primitive::<Float64Type>().values().to_vec())
        .collect()
}

fn strs(b: &[RecordBatch], name: &str) -> Vec<String> {
    col(b, name)
        .into_iter()
        .flat_map(|a| {
            let a = a.as_string::<i32>();
            (0..a.len())
                .map(|i| a.value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn dict_strs(b: &[RecordBatch], name: &str) -> Vec<String> {
    col(b, name)
        .into_iter()
        .flat_map(|a| {
            let d = a.as_dictionary::<Int32Type>();
            let values = d.values().as_string::<i32>();
            d.keys()
                .values()
                .iter()
                .map(|k| values.value(*k as usize).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn bools(b: &[RecordBatch], name: &str) -> Vec<bool> {
    col(b, name)
        .into_iter()
        .flat_map(|a| {
            let a = a.as_boolean();
            (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

fn timestamps(b: &[RecordBatch]) -> Vec<Option<i64>> {
    col(b, "timestamp")
        .into_iter()
        .flat_map(|a| {
            let a = a.as_primitive::<TimestampNanosecondType>();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i)))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn export(fx: &Fixture, name: &str, opts: &DumpOptions, rows: usize) -> std::path::PathBuf {
    let path = fx.out(name);
    let file = std::io::BufWriter::new(File::create(&path).unwrap());
    let parquet = ParquetOptions {
        row_group_rows: rows,
        ..ParquetOptions::default()
    };
    let report = export_parquet(&fx.reader(), opts, &parquet, file).unwrap();
    assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
    path
}

/// The names and Arrow types of a schema.
fn shape(schema: &arrow_schema::Schema) -> Vec<(String, DataType, bool)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect()
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

#[test]
fn steps_round_trip_with_types_nan_and_u64_above_i64_max() {
    let fx = fixture();
    let path = export(&fx, "steps.parquet", &DumpOptions::default(), 10);
    let (schema, batches, stream) = read_back(&path);
    assert_eq!(stream, "steps");
    assert_eq!(shape(&schema), shape(&Stream::Steps.schema()));
    let names: Vec<String> = shape(&schema).into_iter().map(|f| f.0).collect();
    assert_eq!(
        names,
        [
            "seq",
            "run_id",
            "episode_index",
            "step_index",
            "action_json",
            "observation_json",
            "reward",
            "terminated",
            "truncated",
            "timestamp",
            "policy_label",
            "backend",
            "agent_id",
            "render_hint_json",
            "frame_ref",
            "payload_version",
            "control_mode",
            "producer_id",
            "producer_seq",
            "info_json"
        ]
    );
    let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
    assert_eq!(ty("episode_index"), DataType::UInt64);
    assert_eq!(ty("reward"), DataType::Float64);
    assert_eq!(ty("terminated"), DataType::Boolean);
    assert_eq!(ty("timestamp"), utc());
    assert!(schema.field_with_name("timestamp").unwrap().is_nullable());
    assert_eq!(
        ty("control_mode"),
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
    );
    assert_eq!(ty("observation_json"), DataType::Utf8);

    // 25 rows in groups of 10: 10, 10, 5.
    let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
    assert_eq!(sizes, [10, 10, 5]);
    let want: Vec<RunStep> = (0..STEPS).map(step).collect();
    assert_eq!(u64s(&batches, "seq"), (1..=STEPS).collect::<Vec<_>>());
    assert_eq!(
        u64s(&batches, "episode_index"),
        want.iter().map(|s| s.episode_index).collect::<Vec<_>>()
    );
    assert_eq!(u64s(&batches, "episode_index")[5], BIG);
    assert_eq!(u64s(&batches, "step_index")[5], u64::MAX);
    let rewards = f64s(&batches, "reward");
    assert!(rewards[3].is_nan());
    assert_eq!(rewards[4], f64::NEG_INFINITY);
    for (i, s) in want.iter().enumerate() {
        if i != 3 {
            assert_eq!(rewards[i].to_bits(), s.reward.to_bits(), "reward {i}");
        }
    }
    assert_eq!(
        strs(&batches, "observation_json"),
        want.iter()
            .map(|s| s.observation_json.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(strs(&batches, "info_json")[2], "");
    assert_eq!(
        bools(&batches, "terminated"),
        want.iter().map(|s| s.terminated).collect::<Vec<_>>()
    );
    assert_eq!(
        bools(&batches, "truncated"),
        want.iter().map(|s| s.truncated).collect::<Vec<_>>()
    );
    let ts = timestamps(&batches);
    assert_eq!(ts[7], None);
    assert_eq!(ts[8], Some(TS0 + 8_000));
    assert_eq!(
        dict_strs(&batches, "control_mode"),
        want.iter()
            .map(|s| s.control_mode.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        strs(&batches, "agent_id"),
        want.iter().map(|s| s.agent_id.clone()).collect::<Vec<_>>()
    );
    let pv: Vec<u32> = col(&batches, "payload_version")
        .into_iter()
        .flat_map(|a| a.as_primitive::<UInt32Type>().values().to_vec())
        .collect();
    assert_eq!(pv, vec![2; STEPS as usize]);
    assert_eq!(
        u64s(&batches, "producer_seq"),
        (1..=STEPS).collect::<Vec<_>>()
    );
}

#[test]
fn filters_and_resume_select_what_the_jsonl_dump_selects() {
    let fx = fixture();
    let reader = fx.reader();
    let opts = DumpOptions {
        since_seq: 6,
        filter: Filter {
            run_id: Some("even".into()),
            agent_id: None,
            control_mode: ModeFilter::Exact(ControlMode::Agent),
        },
        ..DumpOptions::default()
    };
    let mut jsonl = Vec::new();
    let dumped = dump_jsonl(&reader, &opts, &mut jsonl).unwrap();
    let jsonl_seqs: Vec<u64> = jsonl
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_line(l, 1).unwrap().seq_id())
        .collect();
    let path = fx.out("filtered.parquet");
    let report = export_parquet(
        &reader,
        &opts,
        &ParquetOptions::default(),
        File::create(&path).unwrap(),
    )
    .unwrap();
    let (_, batches, _) = read_back(&path);
    assert_eq!(u64s(&batches, "seq"), jsonl_seqs);
    assert_eq!(report.rows, dumped.records);
    assert_eq!(report.last_seq, dumped.last_seq);
    assert_eq!(report.row_groups, 1);
    assert!(strs(&batches, "run_id").iter().all(|r| r == "even"));
    assert!(dict_strs(&batches, "control_mode")
        .iter()
        .all(|m| m == "agent"));
    // Seqs 7.. of run "even" (odd seqs) with mode agent (i % 4 != 0).
    assert_eq!(jsonl_seqs, [7, 11, 15, 19, 23]);

    // Resuming after the last seq writes a valid file with the schema and no rows.
    let empty = fx.out("empty.parquet");
    let again = export_parquet(
        &reader,
        &DumpOptions {
            since_seq: report.last_seq,
            ..opts.clone()
        },
        &ParquetOptions::default(),
        File::create(&empty).unwrap(),
    )
    .unwrap();
    assert_eq!((again.rows, again.row_groups), (0, 0));
    assert_eq!(again.last_seq, report.last_seq);
    let (schema, batches, _) = read_back(&empty);
    assert_eq!(shape(&schema), shape(&Stream::Steps.schema()));
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
}

#[test]
fn episodes_round_trip() {
    let fx = fixture();
    let opts = DumpOptions {
        episodes: true,
        ..DumpOptions::default()
    };
    let path = export(&fx, "episodes.parquet", &opts, 3);
    let (schema, batches, stream) = read_back(&path);
    assert_eq!(stream, "episodes");
    assert_eq!(shape(&schema), shape(&Stream::Episodes.schema()));
    assert_eq!(
        batches
            .iter()
            .map(RecordBatch::num_rows)
            .collect::<Vec<_>>(),
        [3, 1]
    );
    assert_eq!(u64s(&batches, "seq"), [1, 2, 3, 4]);
    assert_eq!(u64s(&batches, "episode_index"), [0, 1, 2, BIG]);
    assert_eq!(u64s(&batches, "steps"), [10, 11, 12, 13]);
    let rewards = f64s(&batches, "total_reward");
    assert!(rewards[1].is_nan());
    assert_eq!((rewards[0], rewards[2], rewards[3]), (1.5, 3.5, 4.5));
    assert_eq!(bools(&batches, "terminated"), [true, false, true, false]);
    assert_eq!(bools(&batches, "truncated"), [false, true, false, true]);
    assert_eq!(
        timestamps(&batches),
        [Some(TS0), Some(TS0 + 1), None, Some(TS0 + 3)]
    );
    assert_eq!(
        dict_strs(&batches, "control_mode"),
        ["human", "agent", "agent", "agent"]
    );
    assert_eq!(strs(&batches, "metadata_json")[2], r#"{"seed":2}"#);
    assert_eq!(u64s(&batches, "producer_seq"), [100, 101, 102, 103]);
}

#[test]
fn scalars_round_trip_nan_and_infinity_included() {
    let fx = fixture();
    let opts = DumpOptions {
        scalars: true,
        ..DumpOptions::default()
    };
    let path = export(&fx, "scalars.parquet", &opts, 65_536);
    let (schema, batches, stream) = read_back(&path);
    assert_eq!(stream, "scalars");
    assert_eq!(shape(&schema), shape(&Stream::Scalars.schema()));
    assert_eq!(
        schema.field_with_name("step").unwrap().data_type(),
        &DataType::Int64
    );
    assert_eq!(u64s(&batches, "seq"), [1, 2, 3, 4, 5, 6]);
    let values = f64s(&batches, "value");
    assert!(values[1].is_nan());
    assert_eq!(values[2], f64::INFINITY);
    assert_eq!(values[3], 1.0);
    let steps: Vec<i64> = col(&batches, "step")
        .into_iter()
        .flat_map(|a| a.as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(steps, [0, 100, 200, 300, i64::MAX, 500]);
    assert_eq!(strs(&batches, "agent_id"), ["", "a1", "", "a1", "", "a1"]);
    assert_eq!(timestamps(&batches)[3], None);

    // The run filter applies; the control mode does not (scalars have none).
    let opts = DumpOptions {
        scalars: true,
        filter: Filter {
            run_id: Some("even".into()),
            agent_id: Some("a1".into()),
            control_mode: ModeFilter::Exact(ControlMode::Human),
        },
        ..DumpOptions::default()
    };
    let path = export(&fx, "scalars-a1.parquet", &opts, 65_536);
    let (_, batches, _) = read_back(&path);
    assert_eq!(u64s(&batches, "seq"), [2, 4]);
}

#[test]
fn events_are_one_row_each_with_their_fields_as_a_json_document() {
    let fx = fixture();
    let opts = DumpOptions {
        events: true,
        ..DumpOptions::default()
    };
    let path = export(&fx, "events.parquet", &opts, 2);
    let (schema, batches, stream) = read_back(&path);
    assert_eq!(stream, "events");
    assert_eq!(shape(&schema), shape(&Stream::Events.schema()));
    assert_eq!(u64s(&batches, "seq"), [1, 2, 3]);
    assert_eq!(
        strs(&batches, "kind"),
        ["run_started", "artifact", "run_completed"]
    );
    assert_eq!(strs(&batches, "run_id"), ["even", "odd", "even"]);
    assert_eq!(timestamps(&batches), [Some(TS0), None, Some(TS0 + 9)]);
    assert_eq!(strs(&batches, "producer_id"), ["p", "p", "p"]);
    assert_eq!(u64s(&batches, "producer_seq"), [300, 301, 302]);
    // Each document is the event's canonical JSON line: it parses back to the stored record.
    let stored = fx.reader().events_since(0, None, 100).unwrap();
    let docs = strs(&batches, "document");
    for (doc, record) in docs.iter().zip(&stored) {
        assert_eq!(&parse_line(doc.as_bytes(), 1).unwrap(), record);
    }
    assert!(
        docs[0].contains(r#""config_json":"{\"lr\":0.001}""#),
        "{}",
        docs[0]
    );
    assert!(docs[2].contains(r#""exit_code":3"#), "{}", docs[2]);

    let opts = DumpOptions {
        events: true,
        filter: Filter::run("odd"),
        ..DumpOptions::default()
    };
    let path = export(&fx, "events-odd.parquet", &opts, 2);
    let (_, batches, _) = read_back(&path);
    assert_eq!(u64s(&batches, "seq"), [2]);
}

/// A writer that fails after some bytes, like a full disk.
struct Broken(usize);

impl std::io::Write for Broken {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 < buf.len() {
            return Err(std::io::Error::other("disk full"));
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
    let fx = fixture();
    let err = export_parquet(
        &fx.reader(),
        &DumpOptions::default(),
        &ParquetOptions {
            row_group_rows: 5,
            ..ParquetOptions::default()
        },
        Broken(64),
    )
    .unwrap_err();
    assert!(
        matches!(err, ExportError::Parquet(_) | ExportError::Output(_)),
        "{err}"
    );
    assert!(err.to_string().contains("disk full"), "{err}");
}

#[test]
fn large_rows_close_row_groups_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(StoreConfig::in_var_dir(&dir.path().join("var"))).unwrap();
    const N: u64 = 10_000;
    let pad = "x".repeat(1000);
    let mut batch: Vec<Record> = (0..N)
        .map(|i| {
            RunStep {
                run_id: "r".into(),
                step_index: i,
                observation_json: format!(r#"{{"i":{i},"pad":"{pad}"}}"#),
                control_mode: "agent".into(),
                ..Default::default()
            }
            .into()
        })
        .collect();
    store.append(&mut batch, &[]).unwrap();
    let path = dir.path().join("bytes.parquet");
    let report = export_parquet(
        &store.reader().unwrap(),
        &DumpOptions::default(),
        &ParquetOptions {
            row_group_rows: 1 << 20,
            row_group_bytes: 1024 * 1024,
        },
        File::create(&path).unwrap(),
    )
    .unwrap();
    // ~10 MB of observations: cut by bytes, not by the (unreached) row limit.
    assert_eq!(report.rows, N);
    assert!(report.row_groups >= 3, "{report:?}");
    let (_, batches, _) = read_back(&path);
    assert_eq!(batches.len() as u64, report.row_groups);
    assert!(batches.iter().all(|b| b.num_rows() <= 4096));
    assert_eq!(u64s(&batches, "seq"), (1..=N).collect::<Vec<_>>());
}

#[test]
fn pushed_records_give_the_same_file_as_the_store_export() {
    use telemetry_export::{export_parquet_tags, RecordWriter};
    let fx = fixture();
    let reader = fx.reader();
    let opts = ParquetOptions::default();
    let same = |dump: DumpOptions, push: &dyn Fn(&mut RecordWriter<&mut Vec<u8>>)| {
        let mut exported = Vec::new();
        let report = export_parquet(&reader, &dump, &opts, &mut exported).unwrap();
        let mut pushed = Vec::new();
        let mut w = RecordWriter::new(Stream::of(&dump), &opts, &mut pushed).unwrap();
        push(&mut w);
        let pushed_report = w.finish().unwrap();
        assert!(report.rows > 0);
        assert_eq!(pushed_report.rows, report.rows);
        assert_eq!(pushed_report.last_seq, report.last_seq);
        assert_eq!(pushed, exported, "byte for byte");
    };
    same(DumpOptions::default(), &|w| {
        for s in reader.stream_steps_since(0, &Filter::default()) {
            w.push_step(&s.unwrap()).unwrap();
        }
    });
    let episodes = DumpOptions {
        episodes: true,
        ..DumpOptions::default()
    };
    same(episodes, &|w| {
        for e in reader.stream_episodes_since(0, &Filter::default()) {
            w.push_episode(&e.unwrap()).unwrap();
        }
    });
    let scalars = DumpOptions {
        scalars: true,
        ..DumpOptions::default()
    };
    same(scalars, &|w| {
        for s in reader
            .read_scalars_page(0, &Filter::default(), 1000)
            .unwrap()
        {
            w.push_scalar(&s).unwrap();
        }
        // A record of another stream is refused, not written.
        assert!(matches!(
            w.push_step(&step(0)),
            Err(ExportError::WrongStream { .. })
        ));
    });
    // Exact tags: only those scalars, and last_seq still moves past the others.
    let mut out = Vec::new();
    let all = reader
        .read_scalars_page(0, &Filter::default(), 1000)
        .unwrap();
    let tag = all[0].tag.clone();
    let dump = DumpOptions {
        scalars: true,
        ..DumpOptions::default()
    };
    let report =
        export_parquet_tags(&reader, &dump, &opts, std::slice::from_ref(&tag), &mut out).unwrap();
    assert_eq!(
        report.rows,
        all.iter().filter(|s| s.tag == tag).count() as u64
    );
    let none = export_parquet_tags(&reader, &dump, &opts, &["no/such".into()], Vec::new()).unwrap();
    assert_eq!(none.rows, 0);
    assert_eq!(none.last_seq, all.last().unwrap().seq_id);
    assert!(matches!(
        RecordWriter::new(Stream::Events, &opts, Vec::new()),
        Err(ExportError::WrongStream { .. })
    ));
}
