//! # telemetry-hub
//!
//! The live fan-out of gym-telemetry: one hub serves every run and every viewer.
//!
//! ## Why
//!
//! The predecessor ran one thread per run feeding unbounded queues; a slow viewer grew memory
//! without limit and a viewer that joined late or reconnected had no way to get what it
//! missed, or even to know it had missed something. Here the daemon stores each batch in
//! SQLite (the single source of truth: the store assigns `seq_id`, one strictly increasing
//! sequence per stream: steps, episodes, lifecycle events), acks, and only then calls
//! [`Hub::publish`] with the committed records. Viewers [`Hub::subscribe`]; live and replay
//! share that one source of truth through [`CatchUpSource`].
//!
//! ## Shape
//!
//! - **Publish** ([`Hub::publish`], [`Hub::publish_batch`]) is synchronous and never waits for
//!   a viewer: it takes the run map's read lock, the run's mutex and, per subscriber of that
//!   run and stream, that subscriber's queue mutex once per batch (pushes, drops the oldest if
//!   full, takes the waker). These are short critical sections, never held across an await
//!   or I/O. No task, no await. The record is wrapped in one `Arc` shared by the ring and
//!   every queue.
//! - **Per run** the hub keeps a ring of recent records (for late joiners), the per-stream
//!   seq chain (for gap detection), the list of subscribers per stream, counters and the
//!   run's completion.
//! - **Per subscriber** there is a bounded queue ([`HubConfig::subscriber_queue`]) shared
//!   with a [`Subscription`], a poll-driven state machine with no task of its own: catch-up,
//!   seam, live delivery and rate limiting all happen when the viewer asks for the next
//!   item, so an idle or slow viewer costs only its bounded queue.
//!
//! ## Invariants
//!
//! 1. A subscriber receives the records of its run and stream in increasing seq order, each
//!    at most once, including across the catch-up/live seam.
//! 2. Every record published after a subscriber registered (or, with `since_seq`, every stored
//!    record after it) is either delivered, counted in a `Lagged` notice delivered before the
//!    next record, or (only if a source disagrees with the hub) reported by a `Gap`. Filtered
//!    records are neither: they were not asked for.
//! 3. `Completed` is delivered to every subscriber of a run after everything published before
//!    the run's `RunCompleted`, and ends the stream. Records of a run published after its
//!    `RunCompleted` are kept in the ring but not delivered live (they are in the store).
//! 4. No buffer grows without bound (see "Limits").
//! 5. [`Hub::shutdown`] returns only when every task the hub started has ended.
//!
//! ## Catch-up then live
//!
//! With `since_seq: Some(s)`, the subscriber **registers for live records first** (its queue
//! buffers them) and notes `reg_last`, the run's last published seq at that moment. It then
//! reads the past page by page, as the viewer consumes it: from the run's ring when the ring
//! reaches back to the cursor, otherwise from the [`CatchUpSource`] on tokio's blocking pool.
//! It switches to live once the past is covered up to `reg_last` (everything published before
//! registering is committed, so a read that starts later sees it) and up to the newest record
//! its buffer dropped. At the switch, buffered records the read already delivered (seq at or
//! below the last seq read) are removed: no gap, no duplicate at the seam.
//!
//! *Buffer overflow during a long catch-up*: the buffer drops its oldest records **silently
//! and keeps reading from the store** instead of reporting `Lagged`: those records are
//! committed, so the store has them and the viewer loses nothing. The switch waits until the
//! store reads have passed the newest dropped record (`catch_up_overflow_total` counts these
//! re-reads). A viewer slower than ingest keeps reading the store, in order, at its own pace;
//! memory stays bounded by one page plus its queue.
//!
//! ## Gap detection
//!
//! Seqs are global per stream, so other runs' records interleave and a jump in seq says
//! nothing by itself. The hub therefore keeps, per run and stream, the seq of the last
//! published record and stamps each published record with it (`prev`, its predecessor in the
//! run's chain; for all-runs lifecycle subscribers, the hub-wide lifecycle chain). Each
//! subscriber keeps the highest seq it has accounted for: delivered, counted in `Lagged`,
//! filtered out (a filtered record advances the accounting of the record queued before it,
//! so agent/mode/every-k-th filters never cause false gaps), or covered by catch-up. A record
//! whose `prev` is above that mark means the subscriber never saw a record of its chain:
//! it gets `Gap { after_seq, next_seq }` first. In a consistent system this only happens when
//! a catch-up source returns less than the hub published (for an unfiltered query the hub
//! checks this strictly), or when a catch-up cannot reach the seam. The hub cannot see records
//! the daemon never published; records older than the hub's knowledge of a run (after a
//! restart, before `warm`) have an unknown predecessor (0) and are not checked.
//!
//! ## Limits and full-policies (defaults in [`HubConfig`])
//!
//! | buffer | bound | when full | counter |
//! |---|---|---|---|
//! | per-run ring | `ring_records` and `ring_bytes` ([`record_footprint`]: encoded length + struct size) | evict oldest step, then episode, then lifecycle | `ring_evicted_total` |
//! | subscriber queue (live) | `subscriber_queue` (per subscription, ≤ `max_subscriber_queue`) | drop oldest, `Lagged` before the next record | `dropped_{steps,episodes,lifecycle}_total` per run, per subscriber, hub |
//! | subscriber queue (catch-up) | same | drop oldest silently, re-read from the store | `catch_up_overflow_total` |
//! | subscriber in hand | ≤ its queue capacity (the whole queue is taken at once), or one catch-up page (`catch_up_page`) | not refilled until delivered | `in_hand` gauge |
//! | tracked runs | `max_runs` | evict completed runs first, then least recently active without subscribers; runs with subscribers are kept (so ≤ `max_runs + max_subscribers`) | `runs_evicted_total`, `runs_over_limit_total` |
//! | subscriptions | `max_subscribers` | refused | `subscribers_refused_total` |
//! | catch-up reads | one in flight per subscription | retry `catch_up_retries` times with doubling delay, then `Closed(CatchUpFailed)` | `catch_up_errors_total` |
//!
//! Worst-case memory: `(max_runs + max_subscribers) × ring_bytes` for rings (runs with
//! subscribers are never evicted) plus, per subscription, its queue, as much again in hand
//! and one catch-up page. Queues and rings hold `Arc<Record>`s: a record published once is
//! allocated once however many queues and rings hold it.
//!
//! ## Rate limiting
//!
//! With [`RateLimit`] a subscription delivers `Records` batches of at most `max_batch`, at
//! most one per `min_interval` (tokio time); notices keep their place after earlier records
//! but never wait for the timer themselves. A zero interval batches whatever is queued
//! without waiting. Without a rate limit each `Records` holds one record.
//!
//! ## Streams and lifecycle
//!
//! A per-run subscription follows one stream. On the lifecycle stream it receives
//! `RunStarted` and `Artifact` as records; a run's `RunCompleted` always arrives as
//! `Delivery::Completed` and ends the stream (on every stream). An all-runs subscription
//! (`run_id: None`, lifecycle only) receives every run's lifecycle records, `RunCompleted`
//! included, and never completes. Agent and control-mode filters apply to steps and
//! episodes; lifecycle records always pass them.
//!
//! ## Contract with the daemon
//!
//! - Publish only committed records (`seq_id` set), each run's records of a stream in seq
//!   order (batches may mix runs and streams); a record not newer than its run's last one of
//!   the same stream is ignored and counted.
//! - [`CatchUpSource::read_page`] is a keyset read: records with `seq > since` matching the
//!   query, in seq order, at most `limit`; fewer than `limit` means "nothing more now".
//!   [`CatchUpSource::run_completion`] lets a follower of a run that completed before a
//!   daemon restart still end.
//! - After a restart, [`Hub::warm`] each active run with its recent stored records so that
//!   reconnecting viewers are served from memory and seq chains continue.
//!
//! ## Counters
//!
//! [`Hub::metrics`] returns a [`HubMetrics`] snapshot: hub-wide totals, one [`RunMetrics`]
//! per tracked run and one [`SubscriberMetrics`] per subscription (queue depth, lag in records
//! and time, published/offered, delivered, dropped by kind, throughput since the previous
//! snapshot).
//!
//! Layering (a module imports only modules to its right): `hub` → `subscription` → `catchup`
//! → `metrics` → `inner` → `run` → `ring`, `queue` → `delivery` → `source`, `config` →
//! `options` → `filter`.

mod catchup;
mod config;
mod delivery;
pub mod filter;
mod hub;
mod inner;
mod metrics;
mod options;
mod queue;
mod ring;
mod run;
mod source;
mod subscription;

pub use config::{ConfigError, HubConfig};
pub use delivery::{CloseReason, Delivery};
pub use filter::{AllOf, EveryKthStep, RecordFilter, StripRender};
pub use hub::Hub;
pub use metrics::{HubMetrics, RejectedCounts, RunMetrics, SubscriberMetrics};
pub use options::{ModeFilter, RateLimit, StreamKind, SubscribeError, SubscribeOptions};
pub use ring::record_footprint;
pub use source::{CatchUpError, CatchUpQuery, CatchUpSource, NoCatchUp};
pub use subscription::Subscription;
