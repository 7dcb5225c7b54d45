//! The Runs page's data, live: the runs table as JSON (`GET /api/runs`) and as server-sent
//! events (`GET /api/runs/live`), each running run with its steps per second.
//!
//! Steps/s is computed here, not in the page, so a page opened a moment ago shows the rate at
//! once instead of 0 until it has polled twice: a shared [`RateMeter`] keeps the last step count
//! seen per run (from any request), and a run seen for the first time gets its rate from the
//! store, over the timestamps of its last stored steps ([`tail_rate`]).
//!
//! The live stream sends a `runs` event (the same JSON as `GET /api/runs`) at once, then at most
//! once per [`LIVE_INTERVAL`] while something changed, and at once when a run's lifecycle event
//! (started, completed) comes through the hub. It holds one of the dashboard's SSE slots.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{Query, State},
    response::sse::{Event, KeepAlive, Sse},
    Json,
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use telemetry_core::{
    pb::{ListRunsRequest, RunState, RunStep},
    timestamp, ControlMode,
};
use telemetry_hub::SubscribeOptions;

use crate::{
    api::{blocking, ts_ms},
    AppState, WebError, WebStats,
};

/// Least time between two `runs` events of one live stream.
pub const LIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Runs the rate meter remembers at most; past it, the one seen longest ago is forgotten
/// (counted in `/api/stats` as `rate_meter_evicted`).
pub const MAX_METERED_RUNS: usize = 10_000;
/// Stored steps a first rate is computed over.
pub const RATE_TAIL: usize = 200;
/// A run whose last stored step is older than this (by its timestamp) is not stepping: 0/s.
pub const RATE_IDLE: Duration = Duration::from_secs(5);
/// Shortest interval a rate is measured over; a run asked about sooner keeps its last rate.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    steps: u64,
    rate: f64,
}

/// Steps per second per run, from the step counts seen at successive requests.
#[derive(Debug, Default)]
pub struct RateMeter {
    runs: Mutex<HashMap<String, Sample>>,
}

impl RateMeter {
    /// The rate of `run` now that it has `steps` steps, if the meter knows the run; `None`: seen
    /// for the first time (ask the store: [`tail_rate`], then [`RateMeter::seed`]).
    pub fn observe(&self, run: &str, steps: u64, now: Instant) -> Option<f64> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let s = runs.get_mut(run)?;
        let dt = now.saturating_duration_since(s.at);
        if dt >= MIN_RATE_WINDOW {
            s.rate = steps.saturating_sub(s.steps) as f64 / dt.as_secs_f64();
            s.at = now;
            s.steps = steps;
        }
        Some(s.rate)
    }

    /// Starts metering `run` at `steps` steps with a first `rate`. Returns whether a run was
    /// forgotten to make room.
    pub fn seed(&self, run: &str, steps: u64, rate: f64, now: Instant) -> bool {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = false;
        if !runs.contains_key(run) && runs.len() >= MAX_METERED_RUNS {
            if let Some(oldest) = runs
                .iter()
                .min_by_key(|(_, s)| s.at)
                .map(|(k, _)| k.clone())
            {
                runs.remove(&oldest);
                evicted = true;
            }
        }
        runs.insert(
            run.to_owned(),
            Sample {
                at: now,
                steps,
                rate,
            },
        );
        evicted
    }

    /// Runs metered.
    pub fn len(&self) -> usize {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no run is metered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Steps per second over the last stored steps of a run (in seq order), by their timestamps:
/// steps after the first one ÷ the time they span; 0 when the last one is older than
/// [`RATE_IDLE`] before `now_ns` (the run is not stepping) or there are too few timestamps.
pub fn tail_rate(tail: &[RunStep], now_ns: i64) -> f64 {
    let ts: Vec<i64> = tail
        .iter()
        .filter_map(|s| s.timestamp.as_ref().map(timestamp::to_unix_nanos))
        .collect();
    let (Some(&first), Some(&last)) = (ts.iter().min(), ts.iter().max()) else {
        return 0.0;
    };
    let idle = i64::try_from(RATE_IDLE.as_nanos()).unwrap_or(i64::MAX);
    if ts.len() < 2 || now_ns.saturating_sub(last) > idle || last <= first {
        return 0.0;
    }
    (ts.len() - 1) as f64 / ((last - first) as f64 / 1e9)
}

fn state_name(s: i32) -> String {
    RunState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("RUN_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// The Runs page's filters.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct RunsQuery {
    status: Option<String>,
    mode: Option<String>,
}

/// The runs table: every run (filtered) with its counts and, when running, its steps/s.
pub(crate) async fn runs_json(st: &AppState, q: &RunsQuery) -> Result<Value, WebError> {
    let mode = match q.mode.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => m
            .parse::<ControlMode>()
            .map_err(|e| WebError::BadRequest(format!("control mode {m:?}: {e}")))?
            .as_str()
            .to_owned(),
        None => String::new(),
    };
    let resp = st
        .access
        .list_runs(ListRunsRequest { control_mode: mode })
        .await?;
    let now = Instant::now();
    let mut runs = Vec::with_capacity(resp.runs.len());
    for r in resp.runs {
        let state = state_name(r.state);
        if let Some(s) = q.status.as_deref().filter(|s| !s.is_empty()) {
            if state != s {
                continue;
            }
        }
        let steps_per_sec = if state == "running" {
            match st.rates.observe(&r.run_id, r.step_count, now) {
                Some(rate) => rate,
                None => {
                    let reader = st.access.reader();
                    let run = r.run_id.clone();
                    let tail = blocking(move || Ok(reader.tail_steps(&run, RATE_TAIL)?)).await?;
                    let rate = tail_rate(&tail, timestamp::to_unix_nanos(&timestamp::now()));
                    if st.rates.seed(&r.run_id, r.step_count, rate, now) {
                        WebStats::bump(&st.stats.rate_meter_evicted, 1);
                    }
                    rate
                }
            }
        } else {
            0.0
        };
        // An evaluation run names the policy it evaluates (the registry's link).
        let evaluation_policy_id = st
            .access
            .run_info(&r.run_id)
            .map(|i| i.evaluation_source_policy_id)
            .unwrap_or_default();
        runs.push(json!({
            "evaluation_policy_id": evaluation_policy_id,
            "run_id": r.run_id,
            "state": state,
            "agent_ids": r.agent_ids,
            "control_modes": r.control_modes,
            "step_count": r.step_count,
            "steps_per_sec": steps_per_sec,
            "episode_count": r.episode_count,
            "first_ts_ms": ts_ms(r.first_timestamp.as_ref()),
            "last_ts_ms": ts_ms(r.last_timestamp.as_ref()),
            "last_seq": r.last_seq,
            "dropped_steps": r.dropped_steps,
            "dropped_episodes": r.dropped_episodes,
            "failure_reason": r.failure_reason,
            "game_id": r.game_id,
        }));
    }
    Ok(json!({ "runs": runs, "now_ms": ts_ms(Some(&timestamp::now())) }))
}

/// `GET /api/runs`.
pub(crate) async fn runs(
    State(st): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, WebError> {
    Ok(Json(runs_json(&st, &q).await?))
}

/// `GET /api/runs/live`: `runs` events (see the module).
pub(crate) async fn live(
    State(st): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + Send>, WebError> {
    // Filters are checked before the stream opens, so a bad one is a 400, not a dead stream.
    let first = runs_json(&st, &q).await?;
    let permit = st.sse_slots.clone().try_acquire_owned().map_err(|_| {
        WebStats::bump(&st.stats.sse_refused, 1);
        WebError::TooManyStreams(st.cfg.max_sse_streams)
    })?;
    let lifecycle = st
        .access
        .subscribe(SubscribeOptions::all_runs_lifecycle())
        .inspect_err(|_| WebStats::bump(&st.stats.sse_refused, 1))?;
    WebStats::bump(&st.stats.sse_opened, 1);
    let stop = st.access.shutdown_token();
    struct Live {
        st: AppState,
        q: RunsQuery,
        lifecycle: telemetry_hub::Subscription,
        first: Option<Value>,
        last_sent: String,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let init = Live {
        st,
        q,
        lifecycle,
        first: Some(first),
        last_sent: String::new(),
        _permit: permit,
    };
    let events = futures::stream::unfold(init, |mut l| async move {
        loop {
            let v = match l.first.take() {
                Some(v) => v,
                None => {
                    // The next tick, sooner when a run starts or ends.
                    let _ = tokio::time::timeout(LIVE_INTERVAL, l.lifecycle.next()).await;
                    match runs_json(&l.st, &l.q).await {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::debug!(error = %e, "runs live: list failed");
                            json!({ "error": e.to_string() })
                        }
                    }
                }
            };
            // `now_ms` always changes: compare the rows only.
            let rows = v["runs"].to_string();
            if rows == l.last_sent {
                continue;
            }
            l.last_sent = rows;
            let event = Event::default().event("runs").data(v.to_string());
            return Some((Ok(event), l));
        }
    })
    .take_until(async move { stop.cancelled_owned().await });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use telemetry_core::timestamp::from_unix_nanos;

    fn step_at(ns: i64) -> RunStep {
        RunStep {
            timestamp: Some(from_unix_nanos(ns)),
            ..Default::default()
        }
    }

    #[test]
    fn a_first_rate_comes_from_the_stored_tail() {
        // 101 steps 10 ms apart, the last one just now: 100 steps/s.
        let now = 1_700_000_000_000_000_000i64;
        let tail: Vec<_> = (0..=100)
            .map(|i| step_at(now - (100 - i) * 10_000_000))
            .collect();
        let r = tail_rate(&tail, now);
        assert!((r - 100.0).abs() < 1e-6, "{r}");
        // The same steps, but the run stopped a minute ago: not stepping.
        assert_eq!(tail_rate(&tail, now + 60_000_000_000), 0.0);
        // No timestamps, or a single step: no rate.
        assert_eq!(
            tail_rate(&[RunStep::default(), RunStep::default()], now),
            0.0
        );
        assert_eq!(tail_rate(&tail[..1], now), 0.0);
    }

    #[test]
    fn the_meter_rates_count_differences_and_keeps_its_rate_inside_the_window() {
        let m = RateMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.observe("r", 0, t0), None, "unknown run: ask the store");
        assert!(!m.seed("r", 1000, 42.0, t0));
        assert_eq!(
            m.observe("r", 1000, t0 + Duration::from_millis(100)),
            Some(42.0)
        );
        assert_eq!(
            m.observe("r", 3000, t0 + Duration::from_secs(2)),
            Some(1000.0)
        );
        assert_eq!(m.observe("r", 3000, t0 + Duration::from_secs(3)), Some(0.0));
    }

    #[test]
    fn the_meter_is_bounded_and_forgets_the_run_seen_longest_ago() {
        let m = RateMeter::default();
        let t0 = Instant::now();
        for i in 0..MAX_METERED_RUNS {
            assert!(!m.seed(
                &format!("r{i}"),
                0,
                0.0,
                t0 + Duration::from_millis(i as u64)
            ));
        }
        assert!(m.seed("new", 0, 0.0, t0 + Duration::from_secs(3600)));
        assert_eq!(m.len(), MAX_METERED_RUNS);
        assert_eq!(m.observe("r0", 0, t0), None, "the oldest was forgotten");
        assert!(m.observe("r1", 0, t0).is_some());
    }
}
