//! Property test over random interleavings of publish, subscribe (live and catch-up, with
//! and without filters), slow and fast consumption and unsubscribe. For every subscriber:
//! records arrive in seq order without duplicates (also across the catch-up seam), every
//! record it should get is either delivered or counted in a `Lagged` delivered right before
//! the next record, drained subscribers account for everything (delivered + dropped ==
//! published since it subscribed, or stored after its `since_seq`), and nothing was lost, so
//! there is never a `Gap`. Drop counters agree with what subscribers were told.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use proptest::prelude::*;
use telemetry_core::pb::{record::Kind, Record};
use telemetry_hub::{
    Delivery, EveryKthStep, HubConfig, RecordFilter, StreamKind, SubscribeOptions, Subscription,
};

const RUNS: [&str; 2] = ["r0", "r1"];
const AGENTS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Op {
    Publish {
        run: usize,
        episodes: bool,
        agent: usize,
        index: u64,
    },
    Subscribe {
        run: usize,
        episodes: bool,
        since: Option<u64>,
        cap: usize,
        agent: Option<usize>,
        kth: Option<u64>,
        rate: bool,
    },
    /// One committed batch: records of several runs and streams, published together.
    PublishBatch {
        records: Vec<(usize, bool, usize, u64)>,
    },
    Consume {
        sub: usize,
        n: usize,
    },
    Unsubscribe {
        sub: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..2usize, any::<bool>(), 0..2usize, 0..12u64).prop_map(|(run, episodes, agent, index)| {
            Op::Publish { run, episodes, agent, index }
        }),
        1 => (
            0..2usize,
            any::<bool>(),
            prop::option::of(0..40u64),
            1..6usize,
            prop::option::weighted(0.3, 0..2usize),
            prop::option::weighted(0.3, 2..4u64),
            any::<bool>(),
        )
            .prop_map(|(run, episodes, since, cap, agent, kth, rate)| Op::Subscribe {
                run, episodes, since, cap, agent, kth, rate
            }),
        2 => prop::collection::vec((0..2usize, any::<bool>(), 0..2usize, 0..12u64), 1..8)
            .prop_map(|records| Op::PublishBatch { records }),
        2 => (0..8usize, 0..8usize).prop_map(|(sub, n)| Op::Consume { sub, n }),
        1 => (0..8usize).prop_map(|sub| Op::Unsubscribe { sub }),
    ]
}

struct Tracked {
    sub: Option<Subscription>,
    id: u64,
    run: &'static str,
    stream: StreamKind,
    agent: Option<&'static str>,
    kth: Option<EveryKthStep>,
    since: Option<u64>,
    log_start: usize,
    events: Vec<Delivery>,
    /// dropped_steps + dropped_episodes from the hub's metrics, at unsubscribe or at the end.
    dropped_metric: u64,
}

impl Tracked {
    fn wants(&self, r: &Record) -> bool {
        let agent = match &r.kind {
            Some(Kind::Step(s)) => &s.agent_id,
            Some(Kind::Episode(e)) => &e.agent_id,
            _ => return false,
        };
        r.run_id() == self.run
            && StreamKind::of(r) == Some(self.stream)
            && self.agent.is_none_or(|a| a == agent)
            && self.kth.as_ref().is_none_or(|k| k.keep(r))
    }

    fn expected(&self, log: &[Record]) -> Vec<u64> {
        match self.since {
            Some(s) => log
                .iter()
                .filter(|r| r.seq_id() > s && self.wants(r))
                .map(Record::seq_id)
                .collect(),
            None => log[self.log_start..]
                .iter()
                .filter(|r| self.wants(r))
                .map(Record::seq_id)
                .collect(),
        }
    }

    fn check(&self, log: &[Record], drained: bool) -> Result<(), TestCaseError> {
        let expected = self.expected(log);
        let (mut pos, mut pending_lag, mut lag_total) = (0usize, 0u64, 0u64);
        let (mut last, mut caught_up) = (0u64, None::<u64>);
        for d in &self.events {
            match d {
                Delivery::Records(rs) => {
                    for r in rs {
                        let seq = r.seq_id();
                        prop_assert!(seq > last, "order/duplicate: {} after {}", seq, last);
                        last = seq;
                        match caught_up {
                            Some(c) => prop_assert!(seq > c, "live {} at/below seam {}", seq, c),
                            None if self.since.is_some() => {}
                            None => {}
                        }
                        let k = expected[pos..].iter().position(|&e| e == seq);
                        prop_assert!(
                            k.is_some(),
                            "unexpected seq {} (expected {:?})",
                            seq,
                            expected
                        );
                        let k = k.unwrap_or_default();
                        prop_assert_eq!(
                            k as u64,
                            pending_lag,
                            "Lagged must count exactly the skipped records"
                        );
                        pending_lag = 0;
                        pos += k + 1;
                    }
                }
                Delivery::Lagged {
                    dropped_steps,
                    dropped_episodes,
                    dropped_lifecycle,
                    dropped_scalars,
                } => {
                    prop_assert_eq!(*dropped_lifecycle, 0);
                    prop_assert_eq!(*dropped_scalars, 0);
                    match self.stream {
                        StreamKind::Steps => prop_assert_eq!(*dropped_episodes, 0),
                        _ => prop_assert_eq!(*dropped_steps, 0),
                    }
                    if self.since.is_some() {
                        prop_assert!(caught_up.is_some(), "no Lagged during catch-up");
                    }
                    pending_lag += dropped_steps + dropped_episodes;
                    lag_total += dropped_steps + dropped_episodes;
                }
                Delivery::CaughtUp { last_seq } => {
                    prop_assert!(self.since.is_some());
                    prop_assert!(caught_up.is_none(), "one CaughtUp");
                    prop_assert!(*last_seq >= last);
                    caught_up = Some(*last_seq);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert!(lag_total <= self.dropped_metric);
        if drained {
            prop_assert_eq!(pending_lag, 0);
            prop_assert_eq!(pos, expected.len(), "delivered + dropped == expected");
            prop_assert_eq!(lag_total, self.dropped_metric);
            if self.since.is_some() {
                prop_assert!(caught_up.is_some());
            }
        }
        Ok(())
    }
}

async fn consume(t: &mut Tracked, n: usize) {
    if let Some(sub) = t.sub.as_mut() {
        for _ in 0..n {
            match next_now(sub).await {
                Some(d) => t.events.push(d),
                None => break,
            }
        }
    }
}

fn dropped_of(hub: &telemetry_hub::Hub, id: u64) -> u64 {
    hub.metrics()
        .subscribers
        .iter()
        .find(|s| s.id == id)
        .map_or(0, |s| s.dropped_steps_total + s.dropped_episodes_total)
}

fn make(run: usize, episodes: bool, agent: usize, index: u64) -> Record {
    let mut r = if episodes {
        episode(RUNS[run], index)
    } else {
        step(RUNS[run], AGENTS[agent], 0, index)
    };
    match &mut r.kind {
        Some(Kind::Episode(e)) => e.agent_id = AGENTS[agent].into(),
        Some(Kind::Step(s)) => s.terminated = index == 11,
        _ => {}
    }
    r
}

async fn scenario(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = FakeStore::new();
    let hub = hub_with(
        &store,
        HubConfig {
            ring_records: 6,
            catch_up_page: 3,
            ..Default::default()
        },
    );
    let mut log: Vec<Record> = vec![];
    let mut subs: Vec<Tracked> = vec![];
    for op in ops {
        match op {
            Op::Publish {
                run,
                episodes,
                agent,
                index,
            } => {
                log.push(commit_publish(
                    &store,
                    &hub,
                    make(run, episodes, agent, index),
                ));
            }
            Op::PublishBatch { records } => {
                // Commit the whole batch, then publish it (the daemon's order).
                let batch: Vec<Record> = records
                    .into_iter()
                    .map(|(run, episodes, agent, index)| {
                        store.commit(make(run, episodes, agent, index))
                    })
                    .collect();
                log.extend(batch.iter().cloned());
                hub.publish_batch(batch);
            }
            Op::Subscribe {
                run,
                episodes,
                since,
                cap,
                agent,
                kth,
                rate,
            } => {
                let stream = if episodes {
                    StreamKind::Episodes
                } else {
                    StreamKind::Steps
                };
                let max_seq = log
                    .iter()
                    .filter(|r| StreamKind::of(r) == Some(stream))
                    .map(Record::seq_id)
                    .max()
                    .unwrap_or(0);
                let since = since.map(|s| s % (max_seq + 2));
                let mut opts = SubscribeOptions::run(RUNS[run], stream).queue_capacity(cap);
                opts.since_seq = since;
                if let Some(a) = agent {
                    opts = opts.agent(AGENTS[a]);
                }
                let kth = kth.map(EveryKthStep::new);
                if let Some(k) = kth {
                    opts = opts.filter(Arc::new(k));
                }
                if rate {
                    opts = opts.rate(Duration::from_millis(10), 3);
                }
                let sub = hub.try_subscribe(opts).expect("within limits");
                subs.push(Tracked {
                    id: sub.id(),
                    sub: Some(sub),
                    run: RUNS[run],
                    stream,
                    agent: agent.map(|a| AGENTS[a]),
                    kth,
                    since,
                    log_start: log.len(),
                    events: vec![],
                    dropped_metric: 0,
                });
            }
            Op::Consume { sub, n } => {
                if !subs.is_empty() {
                    let i = sub % subs.len();
                    consume(&mut subs[i], n).await;
                }
            }
            Op::Unsubscribe { sub } => {
                if !subs.is_empty() {
                    let i = sub % subs.len();
                    if subs[i].sub.is_some() {
                        subs[i].dropped_metric = dropped_of(&hub, subs[i].id);
                        if let Some(s) = subs[i].sub.take() {
                            s.unsubscribe();
                        }
                    }
                }
            }
        }
    }
    for t in &mut subs {
        if t.sub.is_some() {
            consume(t, usize::MAX).await;
            t.dropped_metric = dropped_of(&hub, t.id);
        }
    }
    let m = hub.metrics();
    prop_assert_eq!(m.gaps_total, 0);
    prop_assert_eq!(
        m.dropped_steps_total + m.dropped_episodes_total,
        subs.iter().map(|t| t.dropped_metric).sum::<u64>()
    );
    for t in &subs {
        t.check(&log, t.sub.is_some())?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_subscriber_accounts_for_every_record(ops in prop::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(scenario(ops))?;
    }
}
