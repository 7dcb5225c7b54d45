//! Publish -> durable ack -> query -> live follow; resends stored once; invalid records rejected
//! alone; restart keeps everything; slow and fast subscribers; metrics and health.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::pb::{stream_notice::Kind as Notice, ListRunsRequest, StreamRequest};
use tokio_stream::StreamExt;

#[tokio::test]
async fn publish_ack_query_and_follow_live() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (mut ingest, mut query, _) = clients(&d).await;

    let first: Vec<_> = (1..=10).map(|s| step("r1", "p1", s)).collect();
    let ack = ingest
        .publish_batch(batch(7, first.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.batch_id, ack.stored, ack.duplicates), (7, 10, 0));
    assert_eq!(ack.watermarks.len(), 1);
    assert_eq!(ack.watermarks[0].durable_seq, 10);

    // A resend after a reconnect is recognised and stored once.
    let again = ingest
        .publish_batch(batch(8, first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.stored, again.duplicates), (0, 10));

    let mut stream = query
        .stream_run_steps(StreamRequest {
            run_id: "r1".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut steps = Vec::new();
    let mut caught_up = None;
    while caught_up.is_none() {
        let msg = bounded("catch-up", stream.next()).await.unwrap().unwrap();
        steps.extend(msg.steps);
        if let Some(Notice::CaughtUp(c)) = msg.notice.and_then(|n| n.kind) {
            caught_up = Some(c.last_seq);
        }
    }
    assert_eq!(steps.len(), 10);
    assert!(steps.windows(2).all(|w| w[0].seq_id < w[1].seq_id));
    assert_eq!(caught_up, Some(steps[9].seq_id));

    // Live: new records arrive, then the completion ends the stream.
    let live: Vec<_> = (11..=15).map(|s| step("r1", "p1", s)).collect();
    let mut all = live;
    all.push(completed("r1", "p1", 16));
    ingest.publish_batch(batch(9, all)).await.unwrap();
    let mut live_steps = Vec::new();
    let mut done = false;
    while let Some(msg) = bounded("live", stream.next()).await {
        let msg = msg.unwrap();
        live_steps.extend(msg.steps);
        if let Some(Notice::RunCompleted(_)) = msg.notice.and_then(|n| n.kind) {
            done = true;
        }
    }
    assert!(done, "the completion notice arrives before the stream ends");
    let idx: Vec<u64> = live_steps.iter().map(|s| s.step_index).collect();
    assert_eq!(idx, (11..=15).collect::<Vec<_>>());
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_invalid_record_is_rejected_alone_and_the_rest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (mut ingest, _, _) = clients(&d).await;
    let mut bad = step("r2", "p2", 2);
    if let Some(telemetry_core::pb::record::Kind::Step(s)) = &mut bad.kind {
        s.observation_json = "{not json".into();
    }
    let records = vec![step("r2", "p2", 1), bad, step("r2", "p2", 3)];
    let ack = ingest
        .publish_batch(batch(1, records))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 2);
    assert_eq!(ack.rejected.len(), 1);
    assert_eq!(ack.rejected[0].index, 1);
    assert!(
        ack.rejected[0].reason.contains("observation_json"),
        "{}",
        ack.rejected[0].reason
    );
    // The rejected record's seq is final: the watermark passes it.
    assert_eq!(ack.watermarks[0].durable_seq, 3);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_batch_is_refused_with_a_clear_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ingest.max_batch_records = 4;
    let d = telemetry_server::start(cfg).await.unwrap();
    let (mut ingest, _, _) = clients(&d).await;
    let err = ingest
        .publish_batch(batch(1, (1..=5).map(|s| step("r3", "p3", s)).collect()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("limit is 4"), "{}", err.message());
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let d = start(dir.path()).await;
        let (mut ingest, _, _) = clients(&d).await;
        let mut records: Vec<_> = (1..=20).map(|s| step("keep", "p", s)).collect();
        records.push(episode("keep", "p", 21, "human"));
        ingest.publish_batch(batch(1, records)).await.unwrap();
        d.shutdown().await.unwrap();
    }
    let d = start(dir.path()).await;
    let (mut ingest, mut query, _) = clients(&d).await;
    let runs = query
        .list_runs(ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    let keep = runs
        .iter()
        .find(|r| r.run_id == "keep")
        .expect("run listed");
    assert_eq!((keep.step_count, keep.episode_count), (20, 1));
    // The producer's watermark survived: a resend is still a duplicate.
    let ack = ingest
        .publish_batch(batch(2, vec![step("keep", "p", 5)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored, ack.duplicates), (0, 1));
    let mut s = query
        .stream_run_episodes(StreamRequest {
            run_id: "keep".into(),
            control_mode: "human".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut eps = Vec::new();
    while let Some(m) = bounded("episodes", s.next()).await {
        eps.extend(m.unwrap().episodes);
    }
    assert_eq!(eps.len(), 1);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_and_fast_subscribers_each_account_for_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.hub.subscriber_queue = 16;
    let d = telemetry_server::start(cfg).await.unwrap();
    let (mut ingest, mut query, _) = clients(&d).await;
    // Separate connections, as two viewers would have: on one HTTP/2 connection the slow
    // reader's unread bytes would hold the shared connection window and stall the fast one.
    // The slow viewer's transport buffers are kept small so its backlog reaches the hub.
    let slow_channel = tonic::transport::Endpoint::from_shared(d.endpoint())
        .unwrap()
        .initial_stream_window_size(Some(4096))
        .initial_connection_window_size(Some(4096))
        .connect()
        .await
        .unwrap();
    let mut slow_query = telemetry_core::pb::query_client::QueryClient::new(slow_channel);
    // Both subscribe before anything is published, live only.
    let req = StreamRequest {
        run_id: "speed".into(),
        follow: true,
        ..Default::default()
    };
    let mut fast = query
        .stream_run_steps(req.clone())
        .await
        .unwrap()
        .into_inner();
    // One record per message, so transport buffers hold little and the hub queue overflows.
    let slow_req = StreamRequest {
        max_batch: 1,
        ..req
    };
    let mut slow = slow_query
        .stream_run_steps(slow_req)
        .await
        .unwrap()
        .into_inner();
    // Wait until both are live (their CaughtUp notice).
    for s in [&mut fast, &mut slow] {
        loop {
            let m = bounded("caught up", s.next()).await.unwrap().unwrap();
            if matches!(m.notice.and_then(|n| n.kind), Some(Notice::CaughtUp(_))) {
                break;
            }
        }
    }
    const N: u64 = 2000;
    let mut fast_seen = 0u64;
    let mut seq = 1;
    while seq <= N {
        // Batches no larger than the subscriber queue: a consumer that keeps up loses nothing.
        let records: Vec<_> = (seq..(seq + 10).min(N + 1))
            .map(|s| step("speed", "p", s))
            .collect();
        seq += records.len() as u64;
        ingest.publish_batch(batch(seq, records)).await.unwrap();
        // The fast subscriber keeps up batch by batch; the slow one reads nothing yet.
        while fast_seen < seq - 1 {
            let m = bounded("fast", fast.next()).await.unwrap().unwrap();
            fast_seen += m.steps.len() as u64;
        }
    }
    ingest
        .publish_batch(batch(0, vec![completed("speed", "p", N + 1)]))
        .await
        .unwrap();
    assert_eq!(fast_seen, N);
    let (mut delivered, mut lagged) = (0u64, 0u64);
    while let Some(m) = bounded("slow", slow.next()).await {
        let m = m.unwrap();
        delivered += m.steps.len() as u64;
        if let Some(Notice::Lagged(l)) = m.notice.and_then(|n| n.kind) {
            lagged += l.dropped_steps;
        }
    }
    assert!(lagged > 0, "the slow subscriber must have lost records");
    assert_eq!(
        delivered + lagged,
        N,
        "delivered + reported dropped == published"
    );
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_reflection_and_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let d = telemetry_server::start(cfg).await.unwrap();
    let ch = channel(&d).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "gym_telemetry.v1.Ingest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let (mut ingest, _, _) = clients(&d).await;
    ingest
        .publish_batch(batch(1, vec![step("m", "p", 1)]))
        .await
        .unwrap();
    let addr = d.metrics_addr.expect("metrics bound");
    let body = http_get(addr, "/metrics").await;
    assert!(
        body.contains("gym_telemetry_ingested_records_total 1"),
        "{body}"
    );
    d.shutdown().await.unwrap();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    bounded("metrics", s.read_to_string(&mut out))
        .await
        .unwrap();
    out
}
