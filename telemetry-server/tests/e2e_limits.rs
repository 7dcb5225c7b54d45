//! Limits per client: stream messages bounded in bytes, streams per connection, WatchRuns
//! watchers, run metadata sizes.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::pb::{stream_notice::Kind as Notice, RunStep, StreamRequest};
use tokio_stream::StreamExt;

/// A step whose observation is a JSON string of `bytes` characters.
fn big_step(run: &str, seq: u64, bytes: usize) -> telemetry_core::pb::Record {
    RunStep {
        run_id: run.into(),
        agent_id: "agent-0".into(),
        step_index: seq,
        action_json: "1".into(),
        observation_json: format!("\"{}\"", "x".repeat(bytes)),
        control_mode: "agent".into(),
        producer_id: "big".into(),
        producer_seq: seq,
        ..Default::default()
    }
    .into()
}

/// Reads a step stream to its `CaughtUp` notice; returns the steps' producer seqs.
async fn read_to_caught_up(
    stream: &mut tonic::Streaming<telemetry_core::pb::StepStreamMessage>,
) -> Vec<u64> {
    bounded("the stream to catch up", async {
        let mut seqs = Vec::new();
        loop {
            let msg = stream.next().await.unwrap().unwrap();
            seqs.extend(msg.steps.iter().map(|s| s.producer_seq));
            if let Some(Notice::CaughtUp(_)) = msg.notice.and_then(|n| n.kind) {
                return seqs;
            }
        }
    })
    .await
}

#[tokio::test]
async fn three_hundred_records_of_900_kb_stream_back_with_default_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (mut ingest, mut query, _) = clients(&d).await;
    const N: u64 = 300;
    const PER_BATCH: u64 = 15; // ~13.5 MB: under the 16 MiB message limit
    for first in (1..=N).step_by(PER_BATCH as usize) {
        let records = (first..(first + PER_BATCH).min(N + 1))
            .map(|s| big_step("big", s, 900_000))
            .collect();
        let ack = ingest
            .publish_batch(batch(first, records))
            .await
            .unwrap()
            .into_inner();
        assert!(ack.rejected.is_empty(), "{:?}", ack.rejected);
    }
    let expected: Vec<u64> = (1..=N).collect();

    // One run: hub-backed (catch-up from the store). Before: OUT_OF_RANGE, "encoded message
    // length too large" (256 records of 900 KB in one message).
    let mut one_run = query
        .stream_run_steps(StreamRequest {
            run_id: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read_to_caught_up(&mut one_run).await, expected);

    // Every run: store-backed.
    let mut every_run = query
        .stream_run_steps(StreamRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read_to_caught_up(&mut every_run).await, expected);
    d.shutdown().await.unwrap();
}
