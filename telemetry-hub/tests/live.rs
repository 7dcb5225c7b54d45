//! Live delivery: drops and Lagged, filters, completion, lifecycle of every run, rate limits,
//! bounds and counters.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use futures::StreamExt;
use telemetry_core::{
    pb::{record::Kind, Record, RunStep},
    ControlMode,
};
use telemetry_hub::{
    CloseReason, Delivery, EveryKthStep, HubConfig, ModeFilter, StreamKind, StripRender,
    SubscribeError, SubscribeOptions,
};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_loses_the_oldest_and_learns_exactly_how_many() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut slow = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).queue_capacity(4));
    let mut fast = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    let mut eps = hub.subscribe(SubscribeOptions::run("r", StreamKind::Episodes).queue_capacity(2));

    let mut published = vec![];
    for i in 0..10 {
        published.push(commit_publish(&store, &hub, step("r", "a", 0, i)).seq_id());
    }
    for i in 0..5 {
        commit_publish(&store, &hub, episode("r", i));
    }

    let got = drain(&mut slow).await;
    assert!(matches!(
        got[0],
        Delivery::Lagged {
            dropped_steps: 6,
            dropped_episodes: 0,
            dropped_lifecycle: 0,
            dropped_scalars: 0
        }
    ));
    assert_eq!(seqs(&got), &published[6..]);
    assert_eq!(notices(&got).len(), 1, "one Lagged, no Gap: {got:?}");

    let got = drain(&mut fast).await;
    assert_eq!(seqs(&got), published);
    assert!(notices(&got).is_empty());

    let got = drain(&mut eps).await;
    assert!(matches!(
        got[0],
        Delivery::Lagged {
            dropped_steps: 0,
            dropped_episodes: 3,
            ..
        }
    ));
    assert_eq!(seqs(&got), [4, 5]);

    let m = hub.metrics();
    assert_eq!(m.dropped_steps_total, 6);
    assert_eq!(m.dropped_episodes_total, 3);
    let run = &m.runs[0];
    assert_eq!(
        (run.dropped_steps_total, run.dropped_episodes_total),
        (6, 3)
    );
    let sub = m.subscribers.iter().find(|s| s.id == slow.id()).unwrap();
    assert_eq!(sub.dropped_steps_total, 6);
    assert_eq!(sub.delivered_total, 4);
    assert_eq!(sub.offered_total, 10);
    let sub = m.subscribers.iter().find(|s| s.id == fast.id()).unwrap();
    assert_eq!((sub.dropped_steps_total, sub.delivered_total), (0, 10));
}

#[tokio::test(start_paused = true)]
async fn lagged_comes_before_the_next_record_after_the_loss_not_before_earlier_ones() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).queue_capacity(3));
    for i in 0..3 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    // Take one record into hand (the subscription moves up to a chunk from the queue).
    let first = next_now(&mut sub).await.unwrap();
    assert_eq!(seqs(&[first]), [1]);
    for i in 3..8 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    let got = drain(&mut sub).await;
    // 2 and 3 were already in hand; of 4..=8 the queue (3) kept 6..=8.
    let lag_at = got
        .iter()
        .position(|d| matches!(d, Delivery::Lagged { .. }))
        .unwrap();
    assert_eq!(seqs(&got[..lag_at]), [2, 3]);
    assert!(matches!(
        got[lag_at],
        Delivery::Lagged {
            dropped_steps: 2,
            ..
        }
    ));
    assert_eq!(seqs(&got[lag_at..]), [6, 7, 8]);
}

#[tokio::test(start_paused = true)]
async fn strip_render_and_every_kth_filters_do_not_cause_gaps() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut hidden =
        hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).filter(Arc::new(StripRender)));
    let mut thinned = hub.subscribe(
        SubscribeOptions::run("r", StreamKind::Steps).filter(Arc::new(EveryKthStep::new(3))),
    );
    let mut full = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    for i in 0..10 {
        let mut r = step("r", "a", 0, i);
        if i == 7 {
            if let Some(Kind::Step(s)) = &mut r.kind {
                s.terminated = true;
            }
        }
        commit_publish(&store, &hub, r);
    }
    let got = drain(&mut hidden).await;
    assert!(notices(&got).is_empty());
    let steps: Vec<RunStep> = records(&got);
    assert_eq!(steps.len(), 10);
    assert!(steps
        .iter()
        .all(|s| s.render_hint_json.is_empty() && s.frame_ref.is_empty()));
    assert_eq!(steps[4].observation_json, "{\"i\":4}");

    // Other subscribers share the same record, unchanged.
    let steps: Vec<RunStep> = records(&drain(&mut full).await);
    assert!(steps.iter().all(|s| !s.render_hint_json.is_empty()));

    let got = drain(&mut thinned).await;
    assert!(notices(&got).is_empty(), "{got:?}");
    let idx: Vec<u64> = records(&got).iter().map(|s| s.step_index).collect();
    assert_eq!(idx, [0, 3, 6, 7, 9]);
    let m = hub.metrics();
    let t = m.subscribers.iter().find(|s| s.id == thinned.id()).unwrap();
    assert_eq!((t.offered_total, t.filtered_total), (5, 5));
}

#[tokio::test(start_paused = true)]
async fn agent_and_mode_filters_select_and_never_gap() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut agent_b = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).agent("b"));
    let mut human = hub
        .subscribe(SubscribeOptions::run("r", StreamKind::Steps).mode(ModeFilter::HumanOrUnknown));
    let mut exact = hub.subscribe(
        SubscribeOptions::run("r", StreamKind::Steps).mode(ModeFilter::Exact(ControlMode::Human)),
    );
    for i in 0..6 {
        commit_publish(
            &store,
            &hub,
            step("r", if i % 3 == 0 { "b" } else { "a" }, 0, i),
        );
    }
    for (i, mode) in ["human", "", "agent", "unknown"].iter().enumerate() {
        commit_publish(&store, &hub, step_mode("r", mode, 10 + i as u64));
    }
    let got = drain(&mut agent_b).await;
    assert!(notices(&got).is_empty());
    assert_eq!(seqs(&got), [1, 4]);
    let got = drain(&mut human).await;
    assert!(notices(&got).is_empty());
    assert_eq!(seqs(&got), [7, 8, 10]);
    let got = drain(&mut exact).await;
    assert_eq!(seqs(&got), [7]);
}

#[tokio::test(start_paused = true)]
async fn completion_reaches_every_subscriber_after_its_records_and_ends_the_stream() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut steps = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    let mut eps = hub.subscribe(SubscribeOptions::run("r", StreamKind::Episodes));
    let mut life = hub.subscribe(SubscribeOptions::run("r", StreamKind::Lifecycle));
    let mut other = hub.subscribe(SubscribeOptions::run("other", StreamKind::Steps));
    commit_publish(&store, &hub, started("r"));
    for i in 0..3 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    commit_publish(&store, &hub, episode("r", 0));
    commit_publish(&store, &hub, completed("r"));
    // Late records of a completed run are not delivered live.
    commit_publish(&store, &hub, step("r", "a", 0, 3));

    let got = drain(&mut steps).await;
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert!(matches!(got.last(), Some(Delivery::Completed(c)) if c.run_id == "r"));
    assert!(steps.next().await.is_none(), "the stream ended");
    let got = drain(&mut eps).await;
    assert_eq!(seqs(&got), [1]);
    assert!(matches!(got.last(), Some(Delivery::Completed(_))));
    let got = drain(&mut life).await;
    assert_eq!(seqs(&got), [1], "RunStarted, then Completed ends it");
    assert!(matches!(got.last(), Some(Delivery::Completed(c)) if c.seq_id == 2));

    // A subscriber arriving after completion is told at once.
    let mut late = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    assert!(matches!(
        next_now(&mut late).await,
        Some(Delivery::Completed(_))
    ));
    assert!(late.next().await.is_none());

    // Other runs are unaffected.
    assert!(next_now(&mut other).await.is_none());
    commit_publish(&store, &hub, step("other", "a", 0, 0));
    assert_eq!(seqs(&drain(&mut other).await), [5]);
    let m = hub.metrics();
    assert!(m.runs.iter().any(|r| r.run_id == "r" && r.completed));
    assert_eq!(
        m.subscribers.len(),
        1,
        "ended streams unsubscribe themselves"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_ending_a_run_delivers_what_precedes_the_completion() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut steps = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    let mut other = hub.subscribe(SubscribeOptions::run("o", StreamKind::Steps));
    let batch: Vec<Record> = vec![
        step("r", "a", 0, 0),
        step("o", "a", 0, 0),
        step("r", "a", 0, 1),
        completed("r"),
        step("r", "a", 0, 2),
        step("o", "a", 0, 1),
    ]
    .into_iter()
    .map(|r| store.commit(r))
    .collect();
    hub.publish_batch(batch);
    let got = drain(&mut steps).await;
    assert_eq!(seqs(&got), [1, 3]);
    assert!(matches!(got.last(), Some(Delivery::Completed(_))));
    assert_eq!(seqs(&drain(&mut other).await), [2, 5]);
    assert_eq!(hub.metrics().published_total, 6);
}

#[tokio::test(start_paused = true)]
async fn all_runs_lifecycle_subscription_sees_every_run_and_never_completes() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut all = hub.subscribe(SubscribeOptions::all_runs_lifecycle());
    commit_publish(&store, &hub, started("a"));
    commit_publish(&store, &hub, step("a", "x", 0, 0));
    commit_publish(&store, &hub, started("b"));
    commit_publish(&store, &hub, artifact("a", "policy.pt"));
    commit_publish(&store, &hub, completed("a"));
    commit_publish(&store, &hub, episode("b", 0));
    let got = drain(&mut all).await;
    assert!(notices(&got).is_empty(), "{got:?}");
    let kinds: Vec<(String, &str)> = got
        .iter()
        .flat_map(|d| match d {
            Delivery::Records(rs) => rs.clone(),
            _ => vec![],
        })
        .map(|r| {
            let k = match r.kind {
                Some(Kind::RunStarted(_)) => "started",
                Some(Kind::Artifact(_)) => "artifact",
                Some(Kind::RunCompleted(_)) => "completed",
                _ => "other",
            };
            (r.run_id().to_owned(), k)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("a".to_owned(), "started"),
            ("b".to_owned(), "started"),
            ("a".to_owned(), "artifact"),
            ("a".to_owned(), "completed")
        ]
    );
    commit_publish(&store, &hub, completed("b"));
    assert_eq!(seqs(&drain(&mut all).await), [5], "still following");

    let err = hub
        .try_subscribe(SubscribeOptions {
            run_id: None,
            stream: StreamKind::Steps,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        err,
        SubscribeError::AllRunsNeedsLifecycle(StreamKind::Steps)
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_delivery_batches_at_most_every_interval() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut ui = hub.subscribe(
        SubscribeOptions::run("r", StreamKind::Steps).rate(Duration::from_millis(100), 4),
    );
    for i in 0..10 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    let t0 = Instant::now();
    let mut batches = vec![];
    while let Some(d) = next_now(&mut ui).await {
        let Delivery::Records(rs) = d else {
            panic!("unexpected {d:?}")
        };
        batches.push((t0.elapsed(), rs.len()));
    }
    assert_eq!(
        batches,
        [
            (Duration::ZERO, 4),
            (Duration::from_millis(100), 4),
            (Duration::from_millis(200), 2)
        ]
    );
    // Long after the last batch: the next record goes at once...
    let t1 = Instant::now();
    commit_publish(&store, &hub, step("r", "a", 0, 10));
    let d = next_now(&mut ui).await.unwrap();
    assert_eq!(seqs(&[d]), [11]);
    assert_eq!(t1.elapsed(), Duration::ZERO);
    // ...and records arriving mid-interval wait for the next slot, then go together.
    tokio::time::advance(Duration::from_millis(30)).await;
    commit_publish(&store, &hub, step("r", "a", 0, 11));
    commit_publish(&store, &hub, step("r", "a", 0, 12));
    let t2 = Instant::now();
    let d = next_now(&mut ui).await.unwrap();
    assert_eq!(seqs(&[d]), [12, 13]);
    assert_eq!(t2.elapsed(), Duration::from_millis(70));
}

#[tokio::test(start_paused = true)]
async fn zero_interval_batches_whatever_is_queued() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut s =
        hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).rate(Duration::ZERO, 3));
    for i in 0..7 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    let sizes: Vec<usize> = drain(&mut s)
        .await
        .iter()
        .map(|d| match d {
            Delivery::Records(r) => r.len(),
            _ => 0,
        })
        .collect();
    assert_eq!(sizes, [3, 3, 1]);
}

#[tokio::test(start_paused = true)]
async fn ring_stays_within_its_byte_and_record_bounds() {
    let store = FakeStore::new();
    let config = HubConfig {
        ring_records: 100,
        ring_bytes: 16 * 1024,
        ..Default::default()
    };
    let hub = hub_with(&store, config);
    let mut sizes = vec![];
    for i in 0..50 {
        let mut r = step("r", "a", 0, i);
        if let Some(Kind::Step(s)) = &mut r.kind {
            s.observation_json = "x".repeat(300);
        }
        let r = commit_publish(&store, &hub, r);
        sizes.push(telemetry_hub::record_footprint(&r));
    }
    let m = hub.metrics();
    let run = &m.runs[0];
    assert!(run.ring_bytes <= 16 * 1024, "{}", run.ring_bytes);
    // The ring keeps the newest records that fit.
    let mut fit = 0;
    let mut bytes = 0;
    for s in sizes.iter().rev() {
        if bytes + s > 16 * 1024 {
            break;
        }
        bytes += s;
        fit += 1;
    }
    assert_eq!(run.ring_records, fit);
    assert_eq!(run.ring_bytes, bytes);
    assert_eq!(run.ring_evicted_total, 50 - fit as u64);
    assert_eq!(m.ring_evicted_total, 50 - fit as u64);

    // Small records: the record bound is the one that binds.
    let hub = hub_with(
        &store,
        HubConfig {
            ring_records: 100,
            ..Default::default()
        },
    );
    for i in 0..200 {
        commit_publish(&store, &hub, episode("r", i));
    }
    let run = &hub.metrics().runs[0];
    assert_eq!((run.ring_records, run.ring_evicted_total), (100, 100));
}

#[tokio::test(start_paused = true)]
async fn bad_and_duplicate_publishes_are_ignored_and_counted() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    let ok = commit_publish(&store, &hub, step("r", "a", 0, 0));
    hub.publish(ok.clone()); // a resent publish
    hub.publish(step("r", "a", 0, 1)); // never stored: seq 0
    hub.publish(Record::default());
    hub.publish(store.commit(step("", "a", 0, 2)));
    let got = drain(&mut sub).await;
    assert_eq!(seqs(&got), [1]);
    let m = hub.metrics();
    assert_eq!(m.published_total, 1);
    assert_eq!(m.rejected.out_of_order, 1);
    assert_eq!(m.rejected.unsequenced, 1);
    assert_eq!(m.rejected.no_payload, 1);
    assert_eq!(m.rejected.no_run, 1);
}

#[tokio::test(start_paused = true)]
async fn max_runs_evicts_completed_runs_first_and_never_runs_with_subscribers() {
    let store = FakeStore::new();
    let hub = hub_with(
        &store,
        HubConfig {
            max_runs: 3,
            ..Default::default()
        },
    );
    let _watching = hub.subscribe(SubscribeOptions::run("watched", StreamKind::Steps));
    commit_publish(&store, &hub, step("old", "a", 0, 0));
    tokio::time::advance(Duration::from_secs(1)).await;
    commit_publish(&store, &hub, step("done", "a", 0, 0));
    commit_publish(&store, &hub, completed("done"));
    commit_publish(&store, &hub, step("new", "a", 0, 0));
    let runs: Vec<String> = hub.metrics().runs.into_iter().map(|r| r.run_id).collect();
    assert_eq!(runs, ["new", "old", "watched"]);
    commit_publish(&store, &hub, step("newer", "a", 0, 0));
    let m = hub.metrics();
    let runs: Vec<String> = m.runs.into_iter().map(|r| r.run_id).collect();
    assert_eq!(
        runs,
        ["new", "newer", "watched"],
        "then the least recently active"
    );
    assert_eq!(m.runs_evicted_total, 2);
}

#[tokio::test(start_paused = true)]
async fn subscription_is_a_stream_and_dropping_it_unsubscribes() {
    let store = FakeStore::new();
    let hub = hub_with(
        &store,
        HubConfig {
            max_subscribers: 2,
            ..Default::default()
        },
    );
    let mut a = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    let b = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    let mut refused = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    assert!(matches!(
        refused.next().await,
        Some(Delivery::Closed(CloseReason::Refused(
            SubscribeError::TooManySubscribers { limit: 2 }
        )))
    ));
    assert!(refused.next().await.is_none());
    assert_eq!(hub.metrics().subscribers_refused_total, 1);

    commit_publish(&store, &hub, step("r", "a", 0, 0));
    let d = StreamExt::next(&mut a).await.unwrap();
    assert_eq!(seqs(&[d]), [1]);
    b.unsubscribe();
    assert_eq!(hub.metrics().subscribers.len(), 1);
    assert_eq!(hub.metrics().runs[0].subscribers, 1);
    drop(a);
    let m = hub.metrics();
    assert_eq!((m.subscribers_active, m.runs[0].subscribers), (0, 0));
    assert_eq!(m.delivered_total, 1);
    // Publishing to a run nobody watches is fine.
    commit_publish(&store, &hub, step("r", "a", 0, 1));
}

#[tokio::test(start_paused = true)]
async fn metrics_report_queue_depth_lag_and_throughput() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    hub.metrics();
    for i in 0..5 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    let m = hub.metrics();
    let s = &m.subscribers[0];
    assert_eq!((s.queue_depth, s.lag_records), (5, 5));
    assert_eq!(s.lag, Duration::from_secs(2));
    assert_eq!(m.runs[0].published_per_sec, 2.5);
    assert_eq!(m.published_per_sec, 2.5);
    assert_eq!(seqs(&drain(&mut sub).await).len(), 5);
    tokio::time::advance(Duration::from_secs(1)).await;
    let m = hub.metrics();
    let s = &m.subscribers[0];
    assert_eq!(
        (s.queue_depth, s.lag_records, s.lag),
        (0, 0, Duration::ZERO)
    );
    assert!(s.delivered_per_sec > 0.0);
    assert_eq!(m.runs[0].published_per_sec, 0.0);
}

fn records(got: &[Delivery]) -> Vec<RunStep> {
    got.iter()
        .flat_map(|d| match d {
            Delivery::Records(rs) => rs.clone(),
            _ => vec![],
        })
        .filter_map(|r| match &r.kind {
            Some(Kind::Step(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}
