//! Embedding the server in a Rust application: start it on your own tokio runtime, publish
//! records in-process (no gRPC, the same validation, commit and ack), and follow a run through
//! the hub with catch-up then live. The gRPC endpoint is served too, so the terminal viewer
//! (`gym-telemetry-viewer --endpoint ...`) can watch the same run.
//!
//! Run: `cargo run -p telemetry-server --example embed`

use std::time::Duration;

use telemetry_core::pb::{IngestBatch, Record, RunStep};
use telemetry_server::{start, Delivery, ServerConfig, StreamKind, SubscribeOptions};

fn step(i: u64) -> Record {
    RunStep {
        run_id: "embedded".into(),
        agent_id: "agent-0".into(),
        episode_index: i / 10,
        step_index: i % 10,
        action_json: (i % 4).to_string(),
        observation_json: format!("{{\"x\":{i}}}"),
        reward: if i % 10 == 9 { 1.0 } else { 0.0 },
        control_mode: "agent".into(),
        producer_id: "embed-example".into(),
        producer_seq: i + 1,
        ..Default::default()
    }
    .into()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = tempfile::tempdir()?;
    let server = start(ServerConfig::ephemeral(var.path())).await?;
    println!("serving gRPC on {}", server.endpoint());
    let publisher = server.publisher();

    // Some history before anyone watches.
    let ack = publisher
        .publish(IngestBatch {
            batch_id: 1,
            records: (0..20).map(step).collect(),
        })
        .await?;
    println!(
        "stored {} records, durable through producer seq {}",
        ack.stored, ack.watermarks[0].durable_seq
    );

    // A subscriber that catches up from the store (since seq 0), then follows live.
    let mut follow =
        server.subscribe(SubscribeOptions::run("embedded", StreamKind::Steps).since(0))?;

    // Live records, pipelined on an in-process stream, as the shim does over gRPC.
    let mut stream = publisher.open_stream();
    for b in 0..3u64 {
        let records = (20 + b * 10..30 + b * 10).map(step).collect();
        stream
            .send(IngestBatch {
                batch_id: 2 + b,
                records,
            })
            .await?;
    }
    for _ in 0..3 {
        if let Some(ack) = stream.next_ack().await {
            println!("ack: durable through {}", ack?.watermarks[0].durable_seq);
        }
    }

    let (mut seen, mut caught_up) = (0, false);
    while seen < 50 || !caught_up {
        match tokio::time::timeout(Duration::from_secs(5), follow.next()).await? {
            Some(Delivery::Records(records)) => seen += records.len(),
            Some(Delivery::CaughtUp { last_seq }) => {
                caught_up = true;
                println!("caught up at seq {last_seq}: stored records delivered, live from here");
            }
            Some(other) => println!("notice: {other:?}"),
            None => break,
        }
    }
    println!("followed {seen} records in seq order, no gap and no duplicate at the seam");
    server.shutdown().await?;
    Ok(())
}
