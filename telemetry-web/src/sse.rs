//! Hub subscriptions as server-sent events: catch-up from the store, then live, batched.
//!
//! One SSE stream per seq stream of a run (`steps`, `episodes`, `scalars`), because each has
//! its own seq: an event's `id` is the seq of the last record in it, so a browser that
//! reconnects sends `Last-Event-ID` and the new subscription starts at `since_seq = id`: no
//! gap, no duplicate (the hub's catch-up→live seam guarantees the rest).
//!
//! The hub batches and rate-limits delivery (at most one batch per
//! [`WebConfig::sse_interval`](crate::WebConfig), 20 Hz by default, each at most
//! `sse_max_batch` records), so a page is never asked to draw more often than it can. A
//! subscriber that falls behind loses the oldest records of its bounded queue; the hub's
//! `Lagged` and `Gap` notices become `lagged` and `gap` events the page shows, never hides.
//!
//! Events: `records` (data: a JSON array of records in the canonical JSONL shape,
//! `telemetry_core::jsonl::to_line`), `caught_up`, `lagged`, `gap`, `completed` (the run's
//! `RunCompleted`; the stream ends) and `closed`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use telemetry_core::{jsonl::to_line, pb::Record, ModeFilter};
use telemetry_hub::{CloseReason, Delivery, StreamKind, SubscribeOptions, Subscription};
use tokio::sync::OwnedSemaphorePermit;

use crate::{AppState, WebConfig, WebError, WebStats};

/// Which records one SSE stream carries.
#[derive(Debug, Clone, Default)]
pub struct StreamSelect {
    /// The run.
    pub run_id: String,
    /// Steps, episodes or scalars.
    pub stream: StreamKind,
    /// Only this agent.
    pub agent_id: Option<String>,
    /// Only these control modes.
    pub mode: ModeFilter,
    /// Resume point (`Last-Event-ID`, or `?since=`): records with seq above it; `None`: live
    /// from now.
    pub since: Option<u64>,
}

/// The hub subscription of an SSE stream: rate-limited, with the dashboard's queue bound.
pub fn subscribe_options(sel: &StreamSelect, cfg: &WebConfig) -> SubscribeOptions {
    let mut o = SubscribeOptions::run(sel.run_id.clone(), sel.stream)
        .rate(cfg.sse_interval, cfg.sse_max_batch)
        .queue_capacity(cfg.sse_queue)
        .mode(sel.mode);
    if let Some(a) = &sel.agent_id {
        o = o.agent(a.clone());
    }
    if let Some(s) = sel.since {
        o = o.since(s);
    }
    o
}

/// One event to send, before SSE framing (kept apart so tests read it directly).
#[derive(Debug, Clone, PartialEq)]
pub struct SseItem {
    /// The event name.
    pub event: &'static str,
    /// The resume point it establishes (the last seq in it), if any.
    pub id: Option<u64>,
    /// JSON text.
    pub data: String,
    /// The stream ends after this event.
    pub last: bool,
    /// Records in it.
    pub records: usize,
}

fn seq_of(r: &Record) -> u64 {
    r.seq_id()
}

/// The event for one hub delivery.
pub fn sse_item(d: Delivery) -> SseItem {
    let item = |event, id, data: String, last| SseItem {
        event,
        id,
        data,
        last,
        records: 0,
    };
    match d {
        Delivery::Records(records) => {
            let mut data = String::with_capacity(records.len() * 256 + 2);
            data.push('[');
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    data.push(',');
                }
                data.push_str(&to_line(r));
            }
            data.push(']');
            SseItem {
                event: "records",
                id: records.last().map(|r| seq_of(r)),
                data,
                last: false,
                records: records.len(),
            }
        }
        Delivery::Lagged {
            dropped_steps,
            dropped_episodes,
            dropped_lifecycle,
            dropped_scalars,
        } => item(
            "lagged",
            None,
            serde_json::json!({
                "dropped_steps": dropped_steps, "dropped_episodes": dropped_episodes,
                "dropped_lifecycle": dropped_lifecycle, "dropped_scalars": dropped_scalars,
            })
            .to_string(),
            false,
        ),
        Delivery::Gap {
            after_seq,
            next_seq,
        } => item(
            "gap",
            None,
            serde_json::json!({ "after_seq": after_seq, "next_seq": next_seq }).to_string(),
            false,
        ),
        Delivery::CaughtUp { last_seq } => item(
            "caught_up",
            // A valid resume point even when nothing was delivered yet.
            (last_seq > 0).then_some(last_seq),
            serde_json::json!({ "last_seq": last_seq }).to_string(),
            false,
        ),
        Delivery::Completed(rc) => item(
            "completed",
            None,
            to_line(&Record::from(Arc::unwrap_or_clone(rc))),
            true,
        ),
        Delivery::Closed(reason) => item(
            "closed",
            None,
            serde_json::json!({ "reason": close_text(&reason) }).to_string(),
            true,
        ),
    }
}

fn close_text(r: &CloseReason) -> String {
    format!("{r:?}")
}

/// The events of a subscription, ending after `completed`/`closed` (or when the hub ends it).
pub(crate) fn items(sub: Subscription) -> impl Stream<Item = SseItem> + Send {
    futures::stream::unfold((sub, false), |(mut sub, done)| async move {
        if done {
            return None;
        }
        let d = sub.next().await?;
        let item = sse_item(d);
        let last = item.last;
        Some((item, (sub, last)))
    })
}

/// Opens the SSE response for `sel`.
pub(crate) fn open(
    state: &AppState,
    sel: StreamSelect,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + Send>, WebError> {
    let permit: OwnedSemaphorePermit =
        state.sse_slots.clone().try_acquire_owned().map_err(|_| {
            WebStats::bump(&state.stats.sse_refused, 1);
            WebError::TooManyStreams(state.cfg.max_sse_streams)
        })?;
    let sub = state
        .access
        .subscribe(subscribe_options(&sel, &state.cfg))
        .inspect_err(|_| WebStats::bump(&state.stats.sse_refused, 1))?;
    WebStats::bump(&state.stats.sse_opened, 1);
    let stats = state.stats.clone();
    let stop = state.access.shutdown_token();
    let events = items(sub)
        .take_until(async move { stop.cancelled_owned().await })
        .map(move |item| {
            let _held = &permit;
            WebStats::bump(&stats.sse_records, item.records as u64);
            if item.event == "lagged" {
                WebStats::bump(&stats.sse_lagged, 1);
            }
            let mut e = Event::default().event(item.event).data(item.data);
            if let Some(id) = item.id {
                e = e.id(id.to_string());
            }
            Ok(e)
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::SocketAddr;
    use telemetry_core::pb::RunStep;
    use telemetry_hub::{Hub, HubConfig, NoCatchUp};
    use tokio::time::Instant;

    fn step(seq: u64) -> Record {
        Record::from(RunStep {
            run_id: "r".into(),
            agent_id: "a".into(),
            step_index: seq,
            seq_id: seq,
            ..Default::default()
        })
    }

    fn cfg() -> WebConfig {
        WebConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn seqs(item: &SseItem) -> Vec<u64> {
        let v: Vec<serde_json::Value> = serde_json::from_str(&item.data).unwrap();
        v.iter().map(|r| r["seq_id"].as_u64().unwrap()).collect()
    }

    /// A producer at 10k records/s for one (virtual) second: the page gets at most one batch
    /// per 50 ms (20 Hz), each carrying everything queued, and loses nothing.
    #[tokio::test(start_paused = true)]
    async fn live_delivery_is_batched_at_most_twenty_times_a_second() {
        let hub = Hub::new(HubConfig::default(), Arc::new(NoCatchUp));
        let sel = StreamSelect {
            run_id: "r".into(),
            stream: StreamKind::Steps,
            ..Default::default()
        };
        let sub = hub.subscribe(subscribe_options(&sel, &cfg()));
        let producer = {
            let hub = hub.clone();
            tokio::spawn(async move {
                for ms in 0..1000u64 {
                    for i in 0..10 {
                        hub.publish(step(ms * 10 + i + 1));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let t0 = Instant::now();
        let mut events = Box::pin(items(sub));
        let mut times = Vec::new();
        let mut got = Vec::new();
        while got.len() < 10_000 {
            let item = events.next().await.unwrap();
            assert_eq!(item.event, "records", "{item:?}");
            assert_eq!(item.id, seqs(&item).last().copied());
            times.push(t0.elapsed());
            got.extend(seqs(&item));
        }
        producer.await.unwrap();
        assert_eq!(got, (1..=10_000).collect::<Vec<_>>());
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(50), "{times:?}");
        }
        let in_first_second = times
            .iter()
            .filter(|t| **t < Duration::from_secs(1))
            .count();
        assert!(
            (15..=20).contains(&in_first_second),
            "{in_first_second} batches in the first second"
        );
    }

    /// A page that cannot keep up loses the oldest records of its bounded queue, and is told:
    /// a `lagged` event with the count, before the records that follow the loss.
    #[tokio::test(start_paused = true)]
    async fn a_slow_page_gets_a_lagged_event_with_the_drop_count() {
        let hub = Hub::new(HubConfig::default(), Arc::new(NoCatchUp));
        let sel = StreamSelect {
            run_id: "r".into(),
            stream: StreamKind::Steps,
            ..Default::default()
        };
        let mut c = cfg();
        c.sse_queue = 100;
        let sub = hub.subscribe(subscribe_options(&sel, &c));
        for s in 1..=1000 {
            hub.publish(step(s));
        }
        let mut events = Box::pin(items(sub));
        let mut dropped = 0;
        let mut got = Vec::new();
        while got.last() != Some(&1000) {
            let item = events.next().await.unwrap();
            match item.event {
                "lagged" => {
                    let v: serde_json::Value = serde_json::from_str(&item.data).unwrap();
                    dropped += v["dropped_steps"].as_u64().unwrap();
                    assert!(item.id.is_none());
                }
                "records" => got.extend(seqs(&item)),
                other => panic!("unexpected {other}"),
            }
        }
        assert!(dropped > 0);
        assert_eq!(
            dropped + got.len() as u64,
            1000,
            "every record delivered or counted"
        );
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn completion_ends_the_stream_and_caught_up_is_a_resume_point() {
        let item = sse_item(Delivery::CaughtUp { last_seq: 42 });
        assert_eq!(
            (item.event, item.id, item.last),
            ("caught_up", Some(42), false)
        );
        let rc = telemetry_core::pb::RunCompleted {
            run_id: "r".into(),
            status: telemetry_core::pb::CompletionStatus::Succeeded as i32,
            ..Default::default()
        };
        let item = sse_item(Delivery::Completed(Arc::new(rc)));
        assert_eq!((item.event, item.last), ("completed", true));
        assert!(
            item.data.contains("\"status\":\"succeeded\""),
            "{}",
            item.data
        );
    }
}
