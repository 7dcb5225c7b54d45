//! Training scalars end to end over gRPC: a shim logs learning curves, a follower streams them
//! (stored first, then live, with a tag filter), `ReadScalars` downsamples in the store and
//! `ListTags` lists the series; bad tags are refused at the shim and, from a raw client, in the
//! ack, without losing the good scalars of the same batch.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use telemetry_core::pb::{
    stream_notice::Kind as Notice, ListTagsRequest, ReadScalarsRequest, Record, Scalar,
    ScalarStreamRequest,
};
use telemetry_shim::{ShimConfig, ShimError, Telemetry};

fn scalar(tag: &str, step: i64, value: f64) -> Scalar {
    Scalar {
        tag: tag.into(),
        step,
        value,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalars_are_stored_streamed_downsampled_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (_, mut query, _) = clients(&d).await;
    let endpoint = d.endpoint();
    let shim = tokio::task::spawn_blocking(move || {
        let t = Telemetry::new(ShimConfig {
            endpoint,
            run_id: Some("ppo".into()),
            ..Default::default()
        })
        .unwrap();
        for step in 0..2000i64 {
            let loss = if step == 1234 {
                f64::NAN
            } else {
                1.0 / (step + 1) as f64
            };
            t.scalar(scalar("losses/value_loss", step * 128, loss))
                .unwrap();
            if step % 10 == 0 {
                t.scalar(scalar("charts/SPS", step * 128, 900.0)).unwrap();
            }
        }
        // Refused at the call, typed: nothing is sent.
        assert!(matches!(
            t.scalar(scalar("", 1, 1.0)),
            Err(ShimError::Invalid(_))
        ));
        assert!(matches!(
            t.scalar(scalar("losses/x", -1, 1.0)),
            Err(ShimError::Invalid(_))
        ));
        t.flush(Duration::from_secs(20)).unwrap();
        t
    })
    .await
    .unwrap();

    // A run fed only by scalars is registered (and kept alive) like one fed steps.
    let runs = query
        .list_runs(telemetry_core::pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    let ppo = runs.iter().find(|r| r.run_id == "ppo").expect("listed");
    assert_eq!(ppo.state, telemetry_core::pb::RunState::Running as i32);

    let tags = query
        .list_tags(ListTagsRequest {
            run_id: "ppo".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tags;
    let listed: Vec<(&str, u64, i64)> = tags
        .iter()
        .map(|t| (t.tag.as_str(), t.points, t.last_step))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("charts/SPS", 200, 1990 * 128),
            ("losses/value_loss", 2000, 1999 * 128)
        ]
    );

    let read = query
        .read_scalars(ReadScalarsRequest {
            run_id: "ppo".into(),
            tag_prefix: "losses/".into(),
            max_points: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.series.len(), 1);
    let s = &read.series[0];
    assert_eq!((s.points, s.buckets.len()), (2000, 100));
    assert_eq!(s.buckets.iter().map(|b| b.count).sum::<u64>(), 2000);
    assert_eq!(s.buckets.iter().map(|b| b.nan_count).sum::<u64>(), 1);
    assert_eq!(s.buckets[0].max, 1.0);

    let bad = query
        .read_scalars(ReadScalarsRequest {
            run_id: "ppo".into(),
            min_step: Some(10),
            max_step: Some(5),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // A follower with a tag filter: the stored SPS points, CaughtUp, then live ones.
    let mut stream = query
        .stream_run_scalars(ScalarStreamRequest {
            run_id: "ppo".into(),
            follow: true,
            tags: vec!["charts/SPS".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut caught_up = None;
    while caught_up.is_none() {
        let m = bounded("catch-up", stream.message())
            .await
            .unwrap()
            .unwrap();
        got.extend(m.scalars.iter().map(|s| (s.tag.clone(), s.step)));
        if let Some(Notice::CaughtUp(c)) = m.notice.and_then(|n| n.kind) {
            caught_up = Some(c.last_seq);
        }
    }
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|(t, _)| t == "charts/SPS"));
    let shim = tokio::task::spawn_blocking(move || {
        shim.scalar(scalar("losses/value_loss", 999_999, 0.5))
            .unwrap();
        shim.scalar(scalar("charts/SPS", 999_999, 1000.0)).unwrap();
        shim.flush(Duration::from_secs(20)).unwrap();
        shim
    })
    .await
    .unwrap();
    let live = loop {
        let m = bounded("live", stream.message()).await.unwrap().unwrap();
        if let Some(s) = m.scalars.first() {
            break s.clone();
        }
    };
    assert_eq!(
        (live.tag.as_str(), live.step, live.value),
        ("charts/SPS", 999_999, 1000.0)
    );
    shim.close(Duration::from_secs(10)).unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_scalar_is_rejected_in_the_ack_and_its_batch_neighbours_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let (mut ingest, mut query, _) = clients(&d).await;
    let rec = |tag: &str, step: i64, seq: u64| -> Record {
        Scalar {
            run_id: "r".into(),
            tag: tag.into(),
            step,
            value: f64::INFINITY,
            producer_id: "raw".into(),
            producer_seq: seq,
            ..Default::default()
        }
        .into()
    };
    let ack = ingest
        .publish_batch(batch(
            1,
            vec![
                rec("ok/a", 1, 1),
                rec("bad\u{1}tag", 2, 2),
                rec("ok/a", -5, 3),
                rec(&"t".repeat(300), 4, 4),
                rec("ok/a", 5, 5),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 2);
    let reasons: Vec<(u32, bool)> = ack
        .rejected
        .iter()
        .map(|r| {
            (
                r.index,
                r.reason.contains("tag") || r.reason.contains("negative"),
            )
        })
        .collect();
    assert_eq!(reasons, vec![(1, true), (2, true), (3, true)]);
    assert_eq!(ack.watermarks[0].durable_seq, 5);
    let tags = query
        .list_tags(ListTagsRequest { run_id: "r".into() })
        .await
        .unwrap()
        .into_inner()
        .tags;
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].points, 2);
    assert_eq!(tags[0].last_value, f64::INFINITY);
    d.shutdown().await.unwrap();
}
