//! The bad-input table of docs/RELIABILITY.md, one test per row: each bad record, line or
//! message gets a typed answer (or a documented acceptance), is counted, and costs nothing else
//! of its batch or stream: the good records around it are stored.
//!
//! gRPC rows talk to the in-process daemon over loopback; JSONL rows replay a file through the
//! real `gym-telemetry-proxy` binary into it.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, process::Output};

use common::*;
use prost::Message;
use telemetry_core::pb::{
    ingest_client::IngestClient, record::Kind, IngestAck, Record, RunEpisode, RunStep,
};
use telemetry_server::ServerHandle;
use telemetry_store::{Filter, StoreConfig, StoreReader};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code};

/// A daemon with metrics, and an Ingest client.
async fn daemon(dir: &Path) -> (ServerHandle, IngestClient<Channel>) {
    let d = telemetry_server::start(config_with_metrics(dir))
        .await
        .unwrap();
    let (ingest, _, _) = clients(&d).await;
    (d, ingest)
}

/// A counter's value in the Prometheus text (0 when the series does not exist yet).
fn counter(text: &str, name: &str, reason: &str) -> u64 {
    let series = format!("gym_telemetry_{name}_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The plain counter `gym_telemetry_{name}_total`.
fn plain_counter(text: &str, name: &str) -> u64 {
    let series = format!("gym_telemetry_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Producer seqs of the stored steps and episodes of `run`, in store order.
fn stored_seqs(var: &Path, run: &str) -> (Vec<u64>, Vec<u64>) {
    let reader = StoreReader::open(&StoreConfig::in_var_dir(var).path).unwrap();
    let steps = reader
        .stream_steps_since(0, &Filter::run(run))
        .map(|s| s.unwrap().producer_seq)
        .collect();
    let episodes = reader
        .stream_episodes_since(0, &Filter::run(run))
        .map(|e| e.unwrap().producer_seq)
        .collect();
    (steps, episodes)
}

fn stored_steps(var: &Path, run: &str) -> Vec<RunStep> {
    let reader = StoreReader::open(&StoreConfig::in_var_dir(var).path).unwrap();
    reader
        .stream_steps_since(0, &Filter::run(run))
        .map(Result::unwrap)
        .collect()
}

/// `f` applied to a good step of `run` stamped `seq`.
fn step_with(run: &str, seq: u64, f: impl FnOnce(&mut RunStep)) -> Record {
    let mut r = step(run, "p", seq);
    if let Some(Kind::Step(s)) = &mut r.kind {
        f(s);
    }
    r
}

fn episode_with(run: &str, seq: u64, f: impl FnOnce(&mut RunEpisode)) -> Record {
    let mut r = episode(run, "p", seq, "agent");
    if let Some(Kind::Episode(e)) = &mut r.kind {
        f(e);
    }
    r
}

/// Publishes one batch (unary) and returns its ack.
async fn publish(ingest: &mut IngestClient<Channel>, records: Vec<Record>) -> IngestAck {
    ingest
        .publish_batch(batch(1, records))
        .await
        .unwrap()
        .into_inner()
}

/// The ack's rejected indices and the watermark of producer `p`.
fn rejected_and_watermark(ack: &IngestAck) -> (Vec<u32>, u64) {
    let idx = ack.rejected.iter().map(|r| r.index).collect();
    let wm = ack
        .watermarks
        .iter()
        .find(|w| w.producer_id == "p")
        .map_or(0, |w| w.durable_seq);
    (idx, wm)
}

#[tokio::test]
async fn nan_and_infinite_rewards_are_rejected_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let (d, mut ingest) = daemon(dir.path()).await;
    let ack = publish(
        &mut ingest,
        vec![
            step("r", "p", 1),
            step_with("r", 2, |s| s.reward = f64::NAN),
            step("r", "p", 3),
            episode_with("r", 4, |e| e.total_reward = f64::INFINITY),
            step_with("r", 5, |s| s.reward = f64::NEG_INFINITY),
            step("r", "p", 6),
        ],
    )
    .await;
    assert_eq!(rejected_and_watermark(&ack), (vec![1, 3, 4], 6));
    assert!(ack.rejected.iter().all(|r| r.reason.contains("not finite")));
    assert_eq!(ack.stored, 3);
    let m = metrics_text(&d).await;
    assert_eq!(counter(&m, "rejected_records", "non_finite_reward"), 3);
    assert_eq!(stored_seqs(dir.path(), "r"), (vec![1, 3, 6], vec![]));
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unknown_control_mode_is_rejected_and_a_legacy_spelling_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let (d, mut ingest) = daemon(dir.path()).await;
    let ack = publish(
        &mut ingest,
        vec![
            step("r", "p", 1),
            step_with("r", 2, |s| s.control_mode = "telepathy".into()),
            episode_with("r", 3, |e| e.control_mode = "mind-control".into()),
            step_with("r", 4, |s| s.control_mode = "agent_only".into()),
        ],
    )
    .await;
    assert_eq!(rejected_and_watermark(&ack), (vec![1, 2], 4));
    assert!(ack.rejected[0].reason.contains("telepathy"), "{ack:?}");
    let m = metrics_text(&d).await;
    assert_eq!(counter(&m, "rejected_records", "control_mode"), 2);
    let steps = stored_steps(dir.path(), "r");
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.producer_seq, s.control_mode.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "agent"), (4, "agent")]
    );
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn huge_metadata_and_observations_are_rejected_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let (d, mut ingest) = daemon(dir.path()).await;
    let blob = "x".repeat(2 << 20);
    let ack = publish(
        &mut ingest,
        vec![
            episode("r", "p", 1, "agent"),
            episode_with("r", 2, |e| {
                e.metadata_json = format!(r#"{{"seed":1,"blob":"{blob}"}}"#);
            }),
            step_with("r", 3, |s| s.observation_json = format!("\"{blob}\"")),
            episode("r", "p", 4, "agent"),
        ],
    )
    .await;
    assert_eq!(rejected_and_watermark(&ack), (vec![1, 2], 4));
    assert!(ack.rejected[0].reason.contains("the limit is 1048576"));
    let m = metrics_text(&d).await;
    assert_eq!(counter(&m, "rejected_records", "too_large"), 2);
    assert_eq!(stored_seqs(dir.path(), "r"), (vec![], vec![1, 4]));
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_json_payloads_and_empty_records_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (d, mut ingest) = daemon(dir.path()).await;
    let ack = publish(
        &mut ingest,
        vec![
            step("r", "p", 1),
            step_with("r", 2, |s| s.action_json = "{oops".into()),
            episode_with("r", 3, |e| e.metadata_json = "[1,".into()),
            Record::default(),
            step_with("r", 5, |s| s.run_id = String::new()),
            step("r", "p", 6),
        ],
    )
    .await;
    assert_eq!(rejected_and_watermark(&ack).0, vec![1, 2, 3, 4]);
    assert!(ack.rejected[0]
        .reason
        .contains("action_json is not valid JSON"));
    let m = metrics_text(&d).await;
    assert_eq!(counter(&m, "rejected_records", "invalid_json"), 2);
    assert_eq!(counter(&m, "rejected_records", "empty_record"), 1);
    assert_eq!(counter(&m, "rejected_records", "empty_run_id"), 1);
    assert_eq!(stored_seqs(dir.path(), "r"), (vec![1, 6], vec![]));
    d.shutdown().await.unwrap();
}

/// Indices are `uint64` on the wire: a client's `-1` arrives as `u64::MAX`. They are labels, so
/// any value is accepted and stored exactly (documented acceptance).
#[tokio::test]
async fn the_largest_indices_are_stored_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (d, mut ingest) = daemon(dir.path()).await;
    let ack = publish(
        &mut ingest,
        vec![
            step_with("r", 1, |s| {
                s.episode_index = u64::MAX;
                s.step_index = u64::MAX;
            }),
            episode_with("r", 2, |e| {
                e.episode_index = u64::MAX;
                e.steps = u64::MAX;
            }),
        ],
    )
    .await;
    assert_eq!((ack.stored, ack.rejected.len()), (2, 0));
    let s = &stored_steps(dir.path(), "r")[0];
    assert_eq!((s.episode_index, s.step_index), (u64::MAX, u64::MAX));
    let reader = StoreReader::open(&StoreConfig::in_var_dir(dir.path()).path).unwrap();
    let e = reader
        .stream_episodes_since(0, &Filter::run("r"))
        .next()
        .unwrap()
        .unwrap();
    assert_eq!((e.episode_index, e.steps), (u64::MAX, u64::MAX));
    d.shutdown().await.unwrap();
}

/// Telemetry for a run nobody submitted is a worker started by hand: stored, and the run
/// registered as running (documented acceptance).
#[tokio::test]
async fn a_record_for_an_unknown_run_registers_it() {
    let dir = tempfile::tempdir().unwrap();
    let (d, mut ingest) = daemon(dir.path()).await;
    let (_, mut query, _) = clients(&d).await;
    let ack = publish(&mut ingest, vec![step("by-hand", "p", 1)]).await;
    assert_eq!(ack.stored, 1);
    let runs = query
        .list_runs(telemetry_core::pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    let run = runs.iter().find(|r| r.run_id == "by-hand").unwrap();
    assert_eq!(run.state, telemetry_core::pb::RunState::Running as i32);
    d.shutdown().await.unwrap();
}

/// A seq that goes backwards inside one batch is a producer bug (a sender stamps each record
/// once, in order): rejected with its reason. Across batches a seq at or below the watermark is
/// indistinguishable from a resend: a duplicate, counted as such and not stored again.
#[tokio::test]
async fn a_producer_seq_going_backwards_is_refused_or_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (d, mut ingest) = daemon(dir.path()).await;
    let first = publish(&mut ingest, (1..=3).map(|i| step("r", "p", i)).collect()).await;
    assert_eq!(first.stored, 3);
    let ack = publish(
        &mut ingest,
        vec![
            step("r", "p", 5),
            step("r", "p", 4),
            step("r", "p", 5),
            step("r", "p", 6),
        ],
    )
    .await;
    assert_eq!(rejected_and_watermark(&ack), (vec![1, 2], 6));
    assert!(ack.rejected[0].reason.contains("not above 5"), "{ack:?}");
    assert_eq!((ack.stored, ack.duplicates), (2, 0));
    let resend = publish(&mut ingest, vec![step("r", "p", 2), step("r", "p", 7)]).await;
    assert_eq!((resend.stored, resend.duplicates), (1, 1));
    let m = metrics_text(&d).await;
    assert_eq!(counter(&m, "rejected_records", "seq_not_increasing"), 2);
    assert_eq!(plain_counter(&m, "duplicate_records"), 1);
    assert_eq!(stored_seqs(dir.path(), "r").0, vec![1, 2, 3, 5, 6, 7]);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_batch_over_the_record_limit_is_refused_whole_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with_metrics(dir.path());
    cfg.ingest.max_batch_records = 4;
    let d = telemetry_server::start(cfg).await.unwrap();
    let (mut ingest, _, _) = clients(&d).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = ingest
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(batch(1, (1..=4).map(|i| step("r", "p", i)).collect()))
        .await
        .unwrap();
    assert_eq!(
        bounded("ack 1", acks.next()).await.unwrap().unwrap().stored,
        4
    );
    tx.send(batch(2, (5..=9).map(|i| step("r", "p", i)).collect()))
        .await
        .unwrap();
    let err = bounded("refusal", acks.next()).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("the limit is 4"));
    let m = metrics_text(&d).await;
    assert_eq!(counter(&m, "rejected_records", "batch_too_large"), 5);
    assert_eq!(stored_seqs(dir.path(), "r").0, vec![1, 2, 3, 4]);
    d.shutdown().await.unwrap();
}

/// A `Publish` message over the gRPC limit. Before: the daemon ended the stream with `OK` and
/// no word of it (a sender could not tell), and nothing was counted.
#[tokio::test]
async fn a_publish_message_over_the_grpc_limit_ends_its_stream_with_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with_metrics(dir.path());
    cfg.max_message_bytes = 64 * 1024;
    let d = telemetry_server::start(cfg).await.unwrap();
    let (mut ingest, _, _) = clients(&d).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = ingest
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(batch(1, vec![step("r", "p", 1)])).await.unwrap();
    assert_eq!(
        bounded("ack 1", acks.next()).await.unwrap().unwrap().stored,
        1
    );
    let big = step_with("r", 2, |s| {
        s.observation_json = format!("\"{}\"", "x".repeat(100_000))
    });
    tx.send(batch(2, vec![big])).await.unwrap();
    let err = bounded("refusal", acks.next()).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("the limit is: 65536"), "{err}");
    // Unary: refused by tonic before the handler, counted by the service wrapper.
    let big = step_with("r", 2, |s| {
        s.observation_json = format!("\"{}\"", "x".repeat(100_000))
    });
    let err = ingest.publish_batch(batch(2, vec![big])).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    // The producer goes on on a new stream; nothing before the big message was lost.
    let ack = publish(&mut ingest, vec![step("r", "p", 3)]).await;
    assert_eq!(ack.stored, 1);
    let m = metrics_text(&d).await;
    assert_eq!(counter(&m, "rejected_messages", "too_large"), 2);
    assert_eq!(stored_seqs(dir.path(), "r").0, vec![1, 3]);
    d.shutdown().await.unwrap();
}

/// An `IngestBatch` whose records field holds raw bytes, so a test can put a record that is not
/// one on the wire (the layout is that of `IngestBatch`: field 2 length-delimited).
#[derive(Clone, PartialEq, prost::Message)]
struct RawBatch {
    #[prost(uint64, tag = "1")]
    batch_id: u64,
    #[prost(bytes = "vec", repeated, tag = "2")]
    records: Vec<Vec<u8>>,
}

fn raw(id: u64, records: &[Record]) -> RawBatch {
    RawBatch {
        batch_id: id,
        records: records.iter().map(Message::encode_to_vec).collect(),
    }
}

/// Wrong types on the wire: a record field that is not a `Record` (a varint where a string
/// belongs). Before: the stream ended with `OK`, uncounted.
#[tokio::test]
async fn an_undecodable_publish_message_ends_its_stream_with_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let d = telemetry_server::start(config_with_metrics(dir.path()))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel(&d).await);
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<RawBatch>(4);
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/gym_telemetry.v1.Ingest/Publish");
    let codec = tonic_prost::ProstCodec::<RawBatch, IngestAck>::default();
    let mut acks = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path,
            codec,
        )
        .await
        .unwrap()
        .into_inner();
    tx.send(raw(1, &[step("r", "p", 1)])).await.unwrap();
    assert_eq!(
        bounded("ack 1", acks.next()).await.unwrap().unwrap().stored,
        1
    );
    // Field 1 of a Record's step (run_id, a string) sent as a varint.
    let mut bad = raw(2, &[step("r", "p", 2)]);
    bad.records.push(vec![0x0a, 0x02, 0x08, 0x01]);
    tx.send(bad).await.unwrap();
    let err = bounded("refusal", acks.next()).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("not an IngestBatch"), "{err}");
    let m = metrics_text(&d).await;
    assert_eq!(counter(&m, "rejected_messages", "undecodable"), 1);
    assert_eq!(stored_seqs(dir.path(), "r").0, vec![1]);
    d.shutdown().await.unwrap();
}

/// Replays `lines` through `gym-telemetry-proxy --input` into the daemon as run `run`; returns
/// the proxy's output.
async fn replay(d: &ServerHandle, dir: &Path, run: &str, lines: &[&[u8]]) -> Output {
    let file = dir.join(format!("{run}.jsonl"));
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l);
        data.push(b'\n');
    }
    std::fs::write(&file, data).unwrap();
    let out = tokio::process::Command::new(workspace_bin("gym-telemetry-proxy"))
        .arg("--input")
        .arg(&file)
        .args(["--endpoint", &d.endpoint(), "--run-id", run])
        .args(["--max-line-bytes", "4096"])
        .env_remove("GYM_TELEMETRY_QUEUE_DIR")
        .output();
    let out = bounded("the proxy", out).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const GOOD_1: &[u8] = br#"{"type":"step","run_id":"x","episode":0,"step":1,"reward":1.0}"#;
const GOOD_2: &[u8] = br#"{"type":"step","run_id":"x","episode":0,"step":2,"reward":1.0}"#;

/// Replays good, `bad`, good; asserts the proxy rejected exactly one line (and its message
/// names `expect`) and both good steps are stored.
async fn one_bad_line(run: &str, bad: &[u8], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let out = replay(&d, dir.path(), run, &[GOOD_1, bad, GOOD_2]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lines parsed=2 rejected=1 "), "{err}");
    assert!(err.contains("line 2: "), "{err}");
    assert!(err.contains(expect), "{expect:?} not in {err}");
    let steps: Vec<u64> = stored_steps(dir.path(), run)
        .iter()
        .map(|s| s.step_index)
        .collect();
    assert_eq!(steps, vec![1, 2]);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn jsonl_a_malformed_line_is_rejected_and_the_stream_goes_on() {
    one_bad_line(
        "malformed",
        br#"{"type":"step","run_id":"x","#,
        "malformed JSON",
    )
    .await;
}

#[tokio::test]
async fn jsonl_an_oversized_line_is_rejected_and_the_stream_goes_on() {
    let long = format!(
        r#"{{"type":"step","run_id":"x","episode":0,"step":9,"obs":"{}"}}"#,
        "x".repeat(5000)
    );
    one_bad_line("oversized", long.as_bytes(), "the limit is 4096").await;
}

#[tokio::test]
async fn jsonl_wrong_types_are_rejected_naming_the_field() {
    one_bad_line(
        "wrong-types",
        br#"{"type":"step","run_id":"x","episode":0,"step":"three"}"#,
        "expected a non-negative integer, got a string",
    )
    .await;
}

#[tokio::test]
async fn jsonl_negative_and_overflowing_indices_are_rejected() {
    one_bad_line(
        "negative",
        br#"{"type":"step","run_id":"x","episode":0,"step":-1}"#,
        "invalid field \"step\"",
    )
    .await;
    one_bad_line(
        "overflowing",
        br#"{"type":"step","run_id":"x","episode":18446744073709551616,"step":3}"#,
        "invalid field \"episode\"",
    )
    .await;
}

/// Python's `json.dumps` writes `NaN` / `Infinity` for non-finite floats. Before: "malformed
/// JSON: expected value at line 1 column 53". Now a typed error naming the field.
#[tokio::test]
async fn jsonl_nan_and_infinite_rewards_are_rejected_naming_the_field() {
    one_bad_line(
        "nan",
        br#"{"type":"step","run_id":"x","episode":0,"step":5,"reward":NaN}"#,
        "reward is NaN",
    )
    .await;
    one_bad_line(
        "inf",
        br#"{"type":"episode","run_id":"x","episode":0,"total_reward":-Infinity}"#,
        "total_reward is -Infinity",
    )
    .await;
}

#[tokio::test]
async fn jsonl_an_unknown_control_mode_is_rejected() {
    one_bad_line(
        "mode",
        br#"{"type":"step","run_id":"x","episode":0,"step":5,"control_mode":"telepathy"}"#,
        "telepathy",
    )
    .await;
}

/// A worker's non-UTF-8 output is not telemetry: a worker run under the proxy has it passed
/// through to the proxy's stdout, like any `print()`; a replayed file has it rejected.
#[tokio::test]
async fn jsonl_an_invalid_utf8_line_is_rejected_in_a_replay() {
    one_bad_line(
        "utf8",
        b"{\"type\":\"step\",\"run_id\":\"x\",\"episode\":0,\"step\":\xff}",
        "not valid UTF-8",
    )
    .await;
}
