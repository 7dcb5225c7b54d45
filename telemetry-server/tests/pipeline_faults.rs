//! The pipeline under injected store failures, in-process (no gRPC): the fence that keeps a
//! producer from overtaking its own failed batch, the one retry policy, and what a failed
//! group does to its members and to live subscribers. Every interleaving that matters is forced
//! with the backend's gate, never with sleeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    sync::{atomic::Ordering, Arc},
};

use common::{
    batch, bounded,
    faulty::{Faults, FaultyBackend},
    step,
};
use telemetry_core::pb::{record::Kind, IngestAck};
use telemetry_server::{
    Delivery, PublishError, RetryPolicy, ServerConfig, ServerHandle, StreamKind, SubscribeOptions,
    WriteError,
};
use telemetry_store::{Filter, StoreConfig, StoreReader};

async fn start_faulty(dir: &Path, retry: RetryPolicy) -> (ServerHandle, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let mut cfg = ServerConfig::ephemeral(dir)
        .with_backend(Arc::new(FaultyBackend::new(dir, faults.clone())));
    cfg.store_retry = retry;
    (telemetry_server::start(cfg).await.unwrap(), faults)
}

fn steps(
    run: &str,
    producer: &str,
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<telemetry_core::pb::Record> {
    seqs.map(|s| step(run, producer, s)).collect()
}

/// The producer seqs stored for `producer`, in seq order.
fn stored(dir: &Path, producer: &str) -> Vec<u64> {
    let reader = StoreReader::open(&StoreConfig::in_var_dir(dir).path).unwrap();
    reader
        .stream_steps_since(0, &Filter::default())
        .map(Result::unwrap)
        .filter(|s| s.producer_id == producer)
        .map(|s| s.producer_seq)
        .collect()
}

fn durable(ack: &IngestAck, producer: &str) -> u64 {
    ack.watermarks
        .iter()
        .find(|w| w.producer_id == producer)
        .map(|w| w.durable_seq)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_batch_never_commits_past_a_failed_one_and_the_resend_stores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (d, faults) = start_faulty(dir.path(), RetryPolicy::default()).await;
    let publisher = d.publisher();
    let mut stream = publisher.open_stream();

    // Batch A (1..=10) is held inside the store and will fail; batch B (11..=20) is queued
    // behind it, in its own group.
    let held = faults.hold_next();
    faults.fail.store(1, Ordering::SeqCst);
    stream
        .send(batch(1, steps("r", "p", 1..=10)))
        .await
        .unwrap();
    tokio::task::block_in_place(|| held.wait_entered());
    stream
        .send(batch(2, steps("r", "p", 11..=20)))
        .await
        .unwrap();
    // B reaches the pipeline's queue while A is still inside the store.
    bounded("B queued", async {
        while faults.attempts.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    held.release();

    let first = bounded("first ack", stream.next_ack()).await.unwrap();
    let err = first.expect_err("A failed in the store");
    assert!(
        matches!(err, PublishError::Write(WriteError::Store(_))),
        "{err}"
    );
    assert!(err.is_retryable(), "{err}");
    // The stream ends after its first error: B is not acknowledged on it.
    assert!(bounded("stream end", stream.next_ack()).await.is_none());
    assert_eq!(
        stored(dir.path(), "p"),
        Vec::<u64>::new(),
        "B did not overtake A"
    );

    // A pipelined unary call of the same producer past the hole is refused too.
    let refused = publisher
        .publish(batch(3, steps("r", "p", 21..=25)))
        .await
        .expect_err("fenced");
    assert!(
        matches!(&refused, PublishError::Write(WriteError::Fenced { producer_id, durable_seq: 0 }) if producer_id == "p"),
        "{refused}"
    );

    // The shim's recovery: a new stream resending from the last ack (0).
    let mut again = publisher.open_stream();
    again.send(batch(4, steps("r", "p", 1..=10))).await.unwrap();
    again
        .send(batch(5, steps("r", "p", 11..=20)))
        .await
        .unwrap();
    let a = bounded("ack", again.next_ack()).await.unwrap().unwrap();
    let b = bounded("ack", again.next_ack()).await.unwrap().unwrap();
    // Each ack carries the watermark after its commit: 10 then 20, or 20 and 20 when the writer
    // merged both batches into one transaction (group commit).
    assert!(matches!(durable(&a, "p"), 10 | 20), "{a:?}");
    assert_eq!(durable(&b, "p"), 20);
    assert_eq!(stored(dir.path(), "p"), (1..=20).collect::<Vec<_>>());
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_producer_is_not_fenced_by_a_failure_it_was_not_part_of() {
    let dir = tempfile::tempdir().unwrap();
    let (d, faults) = start_faulty(dir.path(), RetryPolicy::default()).await;
    let publisher = d.publisher();
    faults.fail.store(1, Ordering::SeqCst);
    publisher
        .publish(batch(1, steps("r", "p", 1..=5)))
        .await
        .expect_err("injected");
    let ack = publisher
        .publish(batch(2, steps("r", "q", 7..=9)))
        .await
        .unwrap();
    assert_eq!((ack.stored, durable(&ack, "q")), (3, 9));
    // p resending from its watermark is admitted; a gap-free continuation in the same call too.
    let ack = publisher
        .publish(batch(3, steps("r", "p", 1..=8)))
        .await
        .unwrap();
    assert_eq!(ack.stored, 8);
    assert_eq!(stored(dir.path(), "p"), (1..=8).collect::<Vec<_>>());
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_error_is_retried_by_the_one_policy_and_the_retries_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let policy = RetryPolicy {
        attempts: 3,
        first_pause: std::time::Duration::from_millis(1),
    };
    let (d, faults) = start_faulty(dir.path(), policy).await;
    let publisher = d.publisher();

    // Two busy answers, then success: one publish, three attempts, stored once.
    faults.busy.store(2, Ordering::SeqCst);
    let ack = publisher
        .publish(batch(1, steps("r", "p", 1..=4)))
        .await
        .unwrap();
    assert_eq!(ack.stored, 4);
    assert_eq!(faults.attempts.load(Ordering::SeqCst), 3);

    // Busy through every attempt: the batch fails (retryable) after exactly 3 attempts, and
    // nothing of it is stored.
    faults.busy.store(100, Ordering::SeqCst);
    let err = publisher
        .publish(batch(2, steps("r", "p", 5..=6)))
        .await
        .expect_err("busy throughout");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(faults.attempts.load(Ordering::SeqCst), 6);
    assert_eq!(stored(dir.path(), "p"), (1..=4).collect::<Vec<_>>());
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_fails_every_member_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (d, faults) = start_faulty(dir.path(), RetryPolicy::default()).await;
    let mut live = d
        .subscribe(SubscribeOptions::run("r", StreamKind::Steps))
        .unwrap();
    let publisher = d.publisher();

    // Hold a first append (a) inside the store; queue two more (x, y, from two producers on
    // two streams) behind it, so the writer merges them into one group; that group fails.
    let held = faults.hold_next();
    let first = {
        let p = publisher.clone();
        tokio::spawn(async move { p.publish(batch(1, steps("r", "a", 1..=2))).await })
    };
    tokio::task::block_in_place(|| held.wait_entered());
    let (mut s1, mut s2) = (publisher.open_stream(), publisher.open_stream());
    s1.send(batch(2, steps("r", "x", 1..=3))).await.unwrap();
    s2.send(batch(3, steps("r", "y", 1..=3))).await.unwrap();
    bounded("x and y queued behind a", async {
        while d.writer_queue_depth() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // a commits; the next append (the merged group x + y) is held too, and made to fail.
    let held_group = faults.hold_next();
    held.release();
    bounded("a", first).await.unwrap().unwrap();
    tokio::task::block_in_place(|| held_group.wait_entered());
    faults.fail.store(1, Ordering::SeqCst);
    held_group.release();
    let r1 = bounded("x", s1.next_ack()).await.unwrap();
    let r2 = bounded("y", s2.next_ack()).await.unwrap();
    assert!(
        r1.is_err() && r2.is_err(),
        "every member fails: {r1:?} {r2:?}"
    );
    assert_eq!(
        faults.attempts.load(Ordering::SeqCst),
        2,
        "x and y were one transaction"
    );

    // Publish something that commits, so the subscriber has a delivery to end on.
    publisher
        .publish(batch(4, steps("r", "z", 1..=1)))
        .await
        .unwrap();
    let mut published = Vec::new();
    while !published
        .iter()
        .any(|(p, _, _): &(String, u64, u64)| p == "z")
    {
        match bounded("live", live.next()).await.unwrap() {
            Delivery::Records(recs) => {
                for r in recs.iter() {
                    if let Some(Kind::Step(s)) = &r.kind {
                        published.push((s.producer_id.clone(), s.producer_seq, s.seq_id));
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let producers: Vec<&str> = published.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        producers,
        vec!["a", "a", "z"],
        "only stored records are published"
    );
    assert_eq!(stored(dir.path(), "x"), Vec::<u64>::new());
    assert_eq!(stored(dir.path(), "y"), Vec::<u64>::new());
    let seqs: Vec<u64> = published.iter().map(|(_, _, s)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "commit order: {seqs:?}"
    );
    d.shutdown().await.unwrap();
}
