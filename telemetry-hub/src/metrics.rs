//! A point-in-time snapshot of the hub for the daemon's `/metrics`.
//!
//! Every bound of the hub has a counter next to it (what was evicted, dropped, refused), so
//! an operator can see which limit is biting and for whom. Counters are monotonic for the life
//! of the hub (per-run ones for the life of the run's entry); gauges are current values; rates
//! cover the time since the previous snapshot.

use std::{sync::atomic::Ordering, time::Duration};

use tokio::time::Instant;

use crate::{
    inner::HubInner,
    options::StreamKind,
    queue::{lock, Mode},
};

/// Hub-wide figures plus one entry per tracked run and per live subscriber.
#[derive(Debug, Clone, Default)]
pub struct HubMetrics {
    /// Runs tracked now (gauge).
    pub runs_tracked: usize,
    /// Subscriptions alive now (gauge).
    pub subscribers_active: usize,
    /// Catch-up reads in flight (gauge).
    pub tasks_active: usize,
    /// Records accepted by `publish` (counter).
    pub published_total: u64,
    /// Records handed to subscribers, including ended ones (counter).
    pub delivered_total: u64,
    /// Records published per second since the previous snapshot.
    pub published_per_sec: f64,
    /// Records delivered per second since the previous snapshot (live subscribers).
    pub delivered_per_sec: f64,
    /// Steps dropped from full subscriber queues (counter).
    pub dropped_steps_total: u64,
    /// Episodes dropped from full subscriber queues (counter).
    pub dropped_episodes_total: u64,
    /// Lifecycle events dropped from full subscriber queues (counter).
    pub dropped_lifecycle_total: u64,
    /// Scalars dropped.
    pub dropped_scalars_total: u64,
    /// Records in all rings (gauge).
    pub ring_records: usize,
    /// Bytes in all rings (gauge).
    pub ring_bytes: usize,
    /// Ring entries evicted to stay within `ring_records`/`ring_bytes` (counter).
    pub ring_evicted_total: u64,
    /// Runs evicted to stay within `max_runs` (counter).
    pub runs_evicted_total: u64,
    /// Times a run was tracked beyond `max_runs` because every run had subscribers (counter).
    pub runs_over_limit_total: u64,
    /// Published records the hub ignored, by reason (counters).
    pub rejected: RejectedCounts,
    /// Catch-up pages read from the store (counter).
    pub catch_up_reads_total: u64,
    /// Failed catch-up reads, including retried ones (counter).
    pub catch_up_errors_total: u64,
    /// Records a catch-up source returned outside its query (counter).
    pub catch_up_invalid_records_total: u64,
    /// `Gap` notices delivered (counter).
    pub gaps_total: u64,
    /// Subscriptions refused (counter).
    pub subscribers_refused_total: u64,
    /// Records loaded by `warm` (counter).
    pub warmed_total: u64,
    /// Records `warm` ignored (older than what the hub held, or of another run) (counter).
    pub warm_ignored_total: u64,
    /// One entry per tracked run, by run id.
    pub runs: Vec<RunMetrics>,
    /// One entry per live subscription, by id.
    pub subscribers: Vec<SubscriberMetrics>,
}

/// Published records the hub ignored, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectedCounts {
    /// A record with no payload.
    pub no_payload: u64,
    /// `seq_id` 0 (never stored).
    pub unsequenced: u64,
    /// Empty `run_id`.
    pub no_run: u64,
    /// Not newer than the run's previous record of the same stream (a duplicate publish).
    pub out_of_order: u64,
    /// Published after `shutdown`.
    pub after_shutdown: u64,
}

/// One run.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    /// The run.
    pub run_id: String,
    /// Subscriptions following it.
    pub subscribers: usize,
    /// Records published, per stream (steps, episodes, lifecycle, scalars).
    pub published: [u64; crate::StreamKind::COUNT],
    /// All records published.
    pub published_total: u64,
    /// Records published per second since the previous snapshot.
    pub published_per_sec: f64,
    /// Last published seq per stream (0: none).
    pub last_seq: [u64; crate::StreamKind::COUNT],
    /// Records in the run's ring.
    pub ring_records: usize,
    /// Bytes in the run's ring.
    pub ring_bytes: usize,
    /// Ring entries evicted.
    pub ring_evicted_total: u64,
    /// Steps dropped from its subscribers' queues.
    pub dropped_steps_total: u64,
    /// Episodes dropped from its subscribers' queues.
    pub dropped_episodes_total: u64,
    /// Lifecycle events dropped from its subscribers' queues.
    pub dropped_lifecycle_total: u64,
    /// Scalars dropped.
    pub dropped_scalars_total: u64,
    /// Duplicate/out-of-order publishes ignored.
    pub rejected_out_of_order_total: u64,
    /// The run's `RunCompleted` was published.
    pub completed: bool,
    /// Time since its last published record.
    pub idle: Duration,
}

/// One subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscriberMetrics {
    /// Its id ([`Subscription::id`](crate::Subscription::id)).
    pub id: u64,
    /// Its run (`None`: lifecycle of every run).
    pub run_id: Option<String>,
    /// Its stream.
    pub stream: StreamKind,
    /// Still reading the stored past.
    pub catching_up: bool,
    /// Records in its queue.
    pub queue_depth: usize,
    /// Its queue's capacity.
    pub queue_capacity: usize,
    /// Items taken from the queue but not yet delivered.
    pub in_hand: usize,
    /// Records published for it and not yet delivered (`queue_depth + in_hand`).
    pub lag_records: usize,
    /// Age of the oldest queued record.
    pub lag: Duration,
    /// Records it accepted into its queue (after its filter) since it subscribed.
    pub offered_total: u64,
    /// Records its filter left out.
    pub filtered_total: u64,
    /// Records delivered.
    pub delivered_total: u64,
    /// Records delivered per second since the previous snapshot.
    pub delivered_per_sec: f64,
    /// Steps dropped from its queue.
    pub dropped_steps_total: u64,
    /// Episodes dropped from its queue.
    pub dropped_episodes_total: u64,
    /// Lifecycle events dropped from its queue.
    pub dropped_lifecycle_total: u64,
    /// Scalars dropped.
    pub dropped_scalars_total: u64,
    /// Records it received from the ring or store during catch-up.
    pub catch_up_records_total: u64,
    /// Live records its buffer dropped during catch-up and re-read from the store instead.
    pub catch_up_overflow_total: u64,
    /// `Gap` notices it received.
    pub gaps_total: u64,
    /// Time since it subscribed.
    pub age: Duration,
}

fn per_sec(delta: u64, since: Instant, now: Instant) -> f64 {
    let secs = now.saturating_duration_since(since).as_secs_f64();
    if secs > 0.0 {
        delta as f64 / secs
    } else {
        0.0
    }
}

pub(crate) fn collect(hub: &HubInner) -> HubMetrics {
    let now = Instant::now();
    let c = &hub.counters;
    let mut m = HubMetrics {
        tasks_active: hub.tracker.len(),
        published_total: c.published.load(Ordering::Relaxed),
        dropped_steps_total: c.dropped[0].load(Ordering::Relaxed),
        dropped_episodes_total: c.dropped[1].load(Ordering::Relaxed),
        dropped_lifecycle_total: c.dropped[2].load(Ordering::Relaxed),
        dropped_scalars_total: c.dropped[3].load(Ordering::Relaxed),
        ring_evicted_total: c.ring_evicted.load(Ordering::Relaxed),
        runs_evicted_total: c.runs_evicted.load(Ordering::Relaxed),
        runs_over_limit_total: c.runs_over_limit.load(Ordering::Relaxed),
        rejected: RejectedCounts {
            no_payload: c.rejected_no_payload.load(Ordering::Relaxed),
            unsequenced: c.rejected_unsequenced.load(Ordering::Relaxed),
            no_run: c.rejected_no_run.load(Ordering::Relaxed),
            out_of_order: c.rejected_out_of_order.load(Ordering::Relaxed),
            after_shutdown: c.rejected_after_shutdown.load(Ordering::Relaxed),
        },
        catch_up_reads_total: c.catchup_reads.load(Ordering::Relaxed),
        catch_up_errors_total: c.catchup_errors.load(Ordering::Relaxed),
        catch_up_invalid_records_total: c.catchup_invalid_records.load(Ordering::Relaxed),
        gaps_total: c.gaps.load(Ordering::Relaxed),
        subscribers_refused_total: c.subscribers_refused.load(Ordering::Relaxed),
        warmed_total: c.warmed.load(Ordering::Relaxed),
        warm_ignored_total: c.warm_ignored.load(Ordering::Relaxed),
        ..Default::default()
    };
    {
        let map = hub.runs();
        m.runs_tracked = map.len();
        for slot in map.values() {
            let mut run = lock(slot);
            let total = run.published_total();
            let (mark_at, mark_total) = run.rate_mark;
            run.rate_mark = (now, total);
            m.ring_records += run.rings.len();
            m.ring_bytes += run.rings.bytes();
            m.runs.push(RunMetrics {
                run_id: run.run_id.to_string(),
                subscribers: run.subscriber_count(),
                published: run.published,
                published_total: total,
                published_per_sec: per_sec(total.saturating_sub(mark_total), mark_at, now),
                last_seq: run.last,
                ring_records: run.rings.len(),
                ring_bytes: run.rings.bytes(),
                ring_evicted_total: run.rings.evicted_total,
                dropped_steps_total: run.dropped[0],
                dropped_episodes_total: run.dropped[1],
                dropped_lifecycle_total: run.dropped[2],
                dropped_scalars_total: run.dropped[3],
                rejected_out_of_order_total: run.rejected_out_of_order,
                completed: run.completed.is_some(),
                idle: now.saturating_duration_since(run.last_activity),
            });
        }
    }
    m.runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    let subs: Vec<_> = hub.registry().values().cloned().collect();
    m.subscribers_active = subs.len();
    let mut delivered_live = 0;
    for s in subs {
        let delivered = s.delivered.load(Ordering::Relaxed);
        delivered_live += delivered;
        let in_hand = s.in_hand.load(Ordering::Relaxed);
        let q = s.state();
        let (depth, oldest) = (q.queue_len(), q.oldest());
        let sm = SubscriberMetrics {
            id: s.id,
            run_id: s.run_id.as_deref().map(str::to_owned),
            stream: s.stream,
            catching_up: matches!(q.mode, Mode::Buffering { .. }),
            queue_depth: depth,
            queue_capacity: s.capacity,
            in_hand,
            lag_records: depth + in_hand,
            lag: oldest.map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            offered_total: q.offered_total,
            filtered_total: q.filtered_total,
            delivered_total: delivered,
            delivered_per_sec: 0.0,
            dropped_steps_total: q.dropped[0],
            dropped_episodes_total: q.dropped[1],
            dropped_lifecycle_total: q.dropped[2],
            dropped_scalars_total: q.dropped[3],
            catch_up_records_total: s.catchup_records.load(Ordering::Relaxed),
            catch_up_overflow_total: q.catchup_overflow_total,
            gaps_total: s.gaps.load(Ordering::Relaxed),
            age: now.saturating_duration_since(s.created),
        };
        drop(q);
        let mut mark = lock(&s.rate_mark);
        let rate = per_sec(delivered.saturating_sub(mark.1), mark.0, now);
        *mark = (now, delivered);
        m.subscribers.push(SubscriberMetrics {
            delivered_per_sec: rate,
            ..sm
        });
    }
    m.delivered_total = delivered_live + c.delivered_by_ended.load(Ordering::Relaxed);
    let mut mark = lock(&hub.rate_mark);
    let (at, published, delivered) = *mark;
    m.published_per_sec = per_sec(m.published_total.saturating_sub(published), at, now);
    m.delivered_per_sec = per_sec(m.delivered_total.saturating_sub(delivered), at, now);
    *mark = (now, m.published_total, m.delivered_total);
    m
}
