//! One record stamped far ahead cannot poison its producer: an append whose seqs reach more
//! than `MAX_SEQ_JUMP` past the producer's durable watermark is refused whole, typed, counted,
//! and the producer's normal records are stored afterwards. In-process, through the publisher.
#![allow(clippy::unwrap_used)]

mod common;

use common::{batch, bounded, config_with_metrics, metrics_text, step};
use telemetry_core::MAX_SEQ_JUMP;
use telemetry_server::{PublishError, StreamKind, SubscribeOptions, WriteError};
use tonic::Code;

#[tokio::test]
async fn a_seq_far_past_the_watermark_is_refused_and_later_records_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = telemetry_server::start(config_with_metrics(dir.path()))
        .await
        .unwrap();
    let publisher = d.publisher();

    // A fresh producer (no watermark: counts as 0) sends u64::MAX.
    let err = publisher
        .publish(batch(1, vec![step("r", "p", u64::MAX)]))
        .await
        .unwrap_err();
    match &err {
        PublishError::Write(WriteError::SeqJump {
            producer_id,
            durable_seq,
            first_seq,
            last_seq,
        }) => {
            assert_eq!(producer_id, "p");
            assert_eq!(
                (*durable_seq, *first_seq, *last_seq),
                (0, u64::MAX, u64::MAX)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);

    // One bad seq hidden behind good ones is caught too; nothing of that append is stored.
    let err = publisher
        .publish(batch(
            2,
            vec![step("r", "p", 1), step("r", "p", MAX_SEQ_JUMP + 1)],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::Write(WriteError::SeqJump { first_seq: 1, .. })
        ),
        "{err:?}"
    );

    // The producer's normal records are stored, from seq 1.
    let ack = publisher
        .publish(batch(3, (1..=5).map(|s| step("r", "p", s)).collect()))
        .await
        .unwrap();
    assert_eq!((ack.stored, ack.duplicates), (5, 0));
    assert_eq!(ack.watermarks[0].durable_seq, 5);
    // Right at the bound is still admitted.
    let ack = publisher
        .publish(batch(4, vec![step("r", "p", 5 + MAX_SEQ_JUMP)]))
        .await
        .unwrap();
    assert_eq!(ack.stored, 1);

    // Visible through a store read: the hub's catch-up from seq 0.
    let mut sub = d
        .subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(0))
        .unwrap();
    let mut seqs = Vec::new();
    bounded("the stored steps", async {
        while seqs.len() < 6 {
            if let Some(telemetry_server::Delivery::Records(rs)) = sub.next().await {
                seqs.extend(rs.iter().map(|r| r.producer().1));
            }
        }
    })
    .await;
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 5 + MAX_SEQ_JUMP]);

    let body = metrics_text(&d).await;
    assert!(
        body.contains("gym_telemetry_seq_jumps_refused_total 2"),
        "{body}"
    );
    d.shutdown().await.unwrap();
}
