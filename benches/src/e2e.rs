//! The in-process daemon and raw-gRPC producers that e2e_bench and pg_e2e_bench both drive:
//! one definition of "a daemon", "a batch of producer P" and "a Publish stream until every
//! step is acked", so the two benches' figures measure the same thing.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use telemetry_core::{
    pb::{ingest_client::IngestClient, IngestBatch, Record, RunStep},
    timestamp::from_unix_nanos,
};
use telemetry_server::{start, Backend, ServerConfig, ServerHandle};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{template, AnyError, AnyResult};

/// Steps per batch of the producers.
pub const BATCH: usize = 1024;

/// Bound of every wait for an ack.
pub const WAIT: Duration = Duration::from_secs(120);

/// A daemon on `var_dir` (an ephemeral config), on `backend` or its embedded SQLite.
pub async fn daemon(var_dir: &Path, backend: Option<Arc<dyn Backend>>) -> AnyResult<ServerHandle> {
    let mut cfg = ServerConfig::ephemeral(var_dir);
    if let Some(b) = backend {
        cfg = cfg.with_backend(b);
    }
    // The benches' raw tonic clients carry no token. Authentication runs once per RPC (a stream
    // open), not per record, so it does not change these figures.
    cfg.auth = telemetry_server::AuthConfig::InsecureNoAuth;
    Ok(start(cfg).await?)
}

/// A new HTTP/2 connection (each client of a real deployment has its own).
pub async fn connect(d: &ServerHandle) -> AnyResult<Channel> {
    Ok(Channel::from_shared(d.endpoint())?.connect().await?)
}

/// Batch `b` (0-based) of `producer`: steps with producer_seq `b*1024+1 ..= (b+1)*1024`.
pub fn batch_of(templates: &[RunStep], producer: &str, b: u64) -> IngestBatch {
    let first = b * BATCH as u64;
    let records = templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let seq = first + i as u64 + 1;
            let mut s = t.clone();
            s.producer_id = producer.to_owned();
            s.producer_seq = seq;
            s.episode_index = seq / 500;
            s.step_index = seq % 500;
            Record::from(s)
        })
        .collect();
    IngestBatch {
        batch_id: b + 1,
        records,
    }
}

/// One producer on one `Publish` stream: `batches` batches of [`BATCH`] steps, at most
/// `in_flight` unacknowledged. Returns the steps the acks report stored (every one is checked).
pub async fn publish_stream(
    mut client: IngestClient<Channel>,
    producer: String,
    batches: u64,
    in_flight: usize,
) -> AnyResult<u64> {
    let templates: Arc<Vec<RunStep>> = Arc::new((0..BATCH as u64).map(template).collect());
    let window = Arc::new(Semaphore::new(in_flight));
    let (tx, rx) = mpsc::channel::<IngestBatch>(in_flight);
    let sender = {
        let window = Arc::clone(&window);
        let producer = producer.clone();
        tokio::spawn(async move {
            for b in 0..batches {
                window.acquire().await?.forget();
                let batch = batch_of(&templates, &producer, b);
                if tx.send(batch).await.is_err() {
                    return Err::<(), AnyError>("the Publish stream closed early".into());
                }
            }
            Ok(())
        })
    };
    let mut acks = client.publish(ReceiverStream::new(rx)).await?.into_inner();
    let (mut stored, mut acked) = (0u64, 0u64);
    while acked < batches {
        let ack = tokio::time::timeout(WAIT, acks.message())
            .await??
            .ok_or("the ack stream ended early")?;
        if ack.duplicates != 0 || !ack.rejected.is_empty() {
            return Err(format!(
                "batch {}: {} duplicates, {} rejected",
                ack.batch_id,
                ack.duplicates,
                ack.rejected.len()
            )
            .into());
        }
        stored += u64::from(ack.stored);
        acked += 1;
        window.add_permits(1);
    }
    sender.await??;
    let expected = batches * BATCH as u64;
    if stored != expected {
        return Err(format!("{producer}: {stored} of {expected} steps stored").into());
    }
    Ok(stored)
}

/// Wall-clock nanoseconds since the epoch (the latency benches' one clock).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A small step of `run` that carries its send time, for latency measurements.
pub fn small_step(run: &str, producer: &str, seq: u64, sent_ns: i64) -> Record {
    RunStep {
        run_id: run.into(),
        agent_id: "agent-0".into(),
        episode_index: seq / 1000,
        step_index: seq % 1000,
        action_json: "1".into(),
        observation_json: format!("{{\"x\":{seq}}}"),
        reward: 0.5,
        control_mode: "agent".into(),
        timestamp: Some(from_unix_nanos(sent_ns)),
        producer_id: producer.into(),
        producer_seq: seq,
        ..Default::default()
    }
    .into()
}

/// The value at percentile `p` (0..=1) of sorted samples (NaN when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
