//! [`Telemetry`]: the synchronous facade a worker calls from its training loop.
//!
//! Python (through PyO3) and plain Rust loops are synchronous, so the API is too: each call
//! decorates the record, stamps its `producer_seq`, hands it to the inbox and returns. The
//! background sender (module `sender`) does everything slow. `flush`/`close` are the only calls
//! that wait, and never longer than the timeout they are given.

pub use crate::flush::{FlushOutcome, FlushReport};
use crate::{
    backlog::{Backlog, MemQueue},
    disk_queue::{DiskQueue, QueueOptions},
    dry_run::DryRun,
    inbox::{self, Inbox},
    metadata::{Decorator, Metadata},
    sender::{self, Command, Settings},
    stats::{Counters, ShimStats},
    Mode, ShimConfig, ShimError,
};
use prost::Message;
use std::{
    sync::{atomic::Ordering::Relaxed, mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};
use telemetry_core::{
    pb::{Artifact, Record, RunCompleted, RunEpisode, RunStarted, RunStep, Scalar},
    validate::ValidationError,
};

/// Extra time a caller waits for the sender's answer beyond the flush timeout itself.
const REPLY_GRACE: Duration = Duration::from_secs(2);
/// Bytes the producer stamp adds to a record's encoded size (id + seq), for accounting.
const STAMP_BYTES: usize = 48;

struct Live {
    decorator: Decorator,
    inbox: Arc<Inbox>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
    max_record_bytes: usize,
}

enum Inner {
    Disabled,
    DryRun(Box<DryRun>),
    Live(Box<Live>),
}

/// The worker-side telemetry client. `Send + Sync`: share it between threads by reference or
/// in an `Arc`. Dropping it flushes (bounded by `drop_flush_timeout`).
pub struct Telemetry {
    inner: Inner,
    counters: Arc<Counters>,
    producer_id: String,
    drop_flush_timeout: Duration,
    policies: Option<Arc<telemetry_policy::RunPolicies>>,
    agent_id: Option<String>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.inner {
            Inner::Disabled => "disabled",
            Inner::DryRun(_) => "dry-run",
            Inner::Live(_) => "live",
        };
        f.debug_struct("Telemetry")
            .field("mode", &mode)
            .field("producer_id", &self.producer_id)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts a shim: opens the queue directory (taking its lock and recovering what a previous
    /// process left), then starts the sender thread, which connects in the background.
    pub fn new(config: ShimConfig) -> Result<Telemetry, ShimError> {
        if config.auth_token.is_none() && config.mode == Mode::Live {
            // Without a token the sender finds the owner's at each connect (a daemon started
            // after the worker makes it then); an unusable one is reported now, not later.
            telemetry_core::credentials::discover_from_env().map_err(crate::ConfigError::from)?;
        }
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let mut shim = Telemetry {
            inner: Inner::Disabled,
            counters: Arc::clone(&counters),
            producer_id: String::new(),
            drop_flush_timeout: config.drop_flush_timeout,
            policies: config.policies.clone(),
            agent_id: config.agent_id.clone(),
        };
        match &config.mode {
            Mode::Disabled => {}
            Mode::DryRun(target) => {
                let producer_id = uuid::Uuid::new_v4().to_string();
                let dry = DryRun::open(target, &config, producer_id.clone(), counters)?;
                shim.producer_id = producer_id;
                shim.inner = Inner::DryRun(Box::new(dry));
            }
            Mode::Live => {
                let (backlog, producer_id, next_seq) = match &config.queue_dir {
                    Some(dir) => {
                        let opts = QueueOptions {
                            max_bytes: config.queue_max_bytes,
                            segment_max_bytes: config.segment_max_bytes,
                            full_policy: config.full_policy,
                            fsync: config.fsync,
                        };
                        let (q, rec) = DiskQueue::open(dir, opts)?;
                        if rec.records > 0 {
                            tracing::info!(dir = %dir.display(), records = rec.records,
                                producer_id = %rec.producer_id, "resuming queued telemetry");
                        }
                        counters.corrupt_tails.store(rec.corrupt_tails, Relaxed);
                        counters
                            .corrupt_lost_records
                            .store(rec.lost_records, Relaxed);
                        counters.queue_records.store(rec.records, Relaxed);
                        counters.queue_bytes.store(q.bytes(), Relaxed);
                        let next = q.last_seq() + 1;
                        (Backlog::Disk(Box::new(q)), rec.producer_id, next)
                    }
                    None => (
                        Backlog::Memory(MemQueue::new(
                            config.memory_queue_max_bytes,
                            config.full_policy,
                        )),
                        uuid::Uuid::new_v4().to_string(),
                        1,
                    ),
                };
                let settings = Settings::from_config(&config, producer_id.clone())?;
                let limits = inbox::Limits {
                    max_records: config.buffer_max_records,
                    max_bytes: config.buffer_max_bytes,
                    batch_records: config.batch_max_records,
                    batch_bytes: config.batch_max_bytes,
                };
                let inbox = Arc::new(Inbox::new(
                    limits,
                    config.full_policy,
                    next_seq,
                    Arc::clone(&counters),
                ));
                let (commands, thread) =
                    sender::spawn(settings, backlog, Arc::clone(&inbox), counters)?;
                shim.producer_id = producer_id;
                shim.inner = Inner::Live(Box::new(Live {
                    decorator: Decorator::new(&config),
                    inbox,
                    commands,
                    thread: Some(thread),
                    max_record_bytes: config.max_record_bytes,
                }));
            }
        }
        Ok(shim)
    }

    /// The policy equipped to `agent_id` (`None`: the configured agent), its payload verified
    /// when the configuration was read. `None` when the daemon equipped none.
    pub fn policy(&self, agent_id: Option<&str>) -> Option<&telemetry_policy::EquippedPolicy> {
        let agent = agent_id.or(self.agent_id.as_deref()).unwrap_or_default();
        self.policies.as_ref()?.for_agent(agent)
    }

    /// For an evaluation run: how many episodes to play with the equipped policy, greedily.
    pub fn evaluation(&self) -> Option<&telemetry_policy::Evaluation> {
        self.policies.as_ref()?.evaluation.as_ref()
    }

    /// A shim that does nothing (the same as `Mode::Disabled`).
    pub fn disabled() -> Telemetry {
        Telemetry {
            inner: Inner::Disabled,
            counters: Arc::new(Counters::default()),
            producer_id: String::new(),
            drop_flush_timeout: Duration::ZERO,
            policies: None,
            agent_id: None,
        }
    }

    /// Whether records go anywhere (false when disabled).
    pub fn is_enabled(&self) -> bool {
        !matches!(self.inner, Inner::Disabled)
    }

    /// This shim's producer id ("" when disabled). Stable across restarts on one queue directory.
    pub fn producer_id(&self) -> &str {
        &self.producer_id
    }

    /// Sets the metadata applied to the records that follow (see [`crate::metadata`]).
    pub fn set_metadata(&self, metadata: Metadata) {
        match &self.inner {
            Inner::Disabled => {}
            Inner::DryRun(d) => d.decorator().set_metadata(metadata),
            Inner::Live(l) => l.decorator.set_metadata(metadata),
        }
    }

    /// Registers a hook that sees, and may change, every step before it is queued. Hooks run on
    /// the calling thread, in registration order; keep them cheap.
    pub fn register_on_step<F>(&self, hook: F)
    where
        F: Fn(&mut RunStep) + Send + Sync + 'static,
    {
        match &self.inner {
            Inner::Disabled => {}
            Inner::DryRun(d) => d.decorator().add_step_hook(Arc::new(hook)),
            Inner::Live(l) => l.decorator.add_step_hook(Arc::new(hook)),
        }
    }

    /// Registers a hook that sees, and may change, every finished episode before it is queued.
    pub fn register_on_episode_end<F>(&self, hook: F)
    where
        F: Fn(&mut RunEpisode) + Send + Sync + 'static,
    {
        match &self.inner {
            Inner::Disabled => {}
            Inner::DryRun(d) => d.decorator().add_episode_hook(Arc::new(hook)),
            Inner::Live(l) => l.decorator.add_episode_hook(Arc::new(hook)),
        }
    }

    /// Records one environment step. Non-blocking (except under `FullPolicy::Block`).
    pub fn step(&self, step: RunStep) -> Result<(), ShimError> {
        self.record(step.into())
    }

    /// Records a finished episode.
    pub fn episode_end(&self, episode: RunEpisode) -> Result<(), ShimError> {
        self.record(episode.into())
    }

    /// Records that the run started.
    pub fn run_started(&self, started: RunStarted) -> Result<(), ShimError> {
        self.record(started.into())
    }

    /// Records how the run ended.
    pub fn run_completed(&self, completed: RunCompleted) -> Result<(), ShimError> {
        self.record(completed.into())
    }

    /// Records a file the run produced.
    pub fn artifact(&self, artifact: Artifact) -> Result<(), ShimError> {
        self.record(artifact.into())
    }

    /// Records one point of a training curve (a loss, a learning rate, an episodic return).
    /// The tag and step are checked here, so a bad one is a typed error at the call
    /// ([`ShimError::Invalid`]), not a rejection in a later ack; any value is valid, NaN and
    /// infinities included. An empty `run_id` is filled from the configuration; `agent_id`
    /// stays as given (empty: the run as a whole).
    pub fn scalar(&self, scalar: Scalar) -> Result<(), ShimError> {
        telemetry_core::validate::check_tag(&scalar.tag).map_err(ShimError::Invalid)?;
        if scalar.step < 0 {
            return Err(ShimError::Invalid(ValidationError::NegativeIndex {
                field: "step",
                value: scalar.step,
            }));
        }
        self.record(scalar.into())
    }

    /// Records any record (the JSONL proxy's entry point). Its `producer_id`/`producer_seq` are
    /// overwritten; metadata and hooks apply as for the typed calls.
    pub fn record(&self, mut record: Record) -> Result<(), ShimError> {
        match &self.inner {
            Inner::Disabled => Ok(()),
            Inner::DryRun(d) => d.record(record),
            Inner::Live(l) => {
                if record.kind.is_none() {
                    return Err(ShimError::Invalid(ValidationError::EmptyRecord));
                }
                l.decorator.decorate(&mut record);
                let size = record.encoded_len() + STAMP_BYTES;
                if size > l.max_record_bytes {
                    Counters::add(&self.counters.dropped, 1);
                    return Err(ShimError::RecordTooLarge {
                        size,
                        max: l.max_record_bytes,
                    });
                }
                l.inbox.push(record, size).map(|_| ())
            }
        }
    }

    /// Waits (at most `timeout`) until everything accepted so far is acked by the daemon,
    /// reconnecting meanwhile (a daemon that restarts within `timeout` gets everything). What is
    /// still unacked at the deadline is synced to the queue directory (`OnDisk`); without one,
    /// [`ShimError::FlushTimeout`] with the pending count. A connection refused for a reason
    /// waiting cannot heal (untrusted TLS certificate, `UNAUTHENTICATED`, `PERMISSION_DENIED`)
    /// answers at once: `OnDisk`, or without a queue directory [`ShimError::NotDelivered`].
    pub fn flush(&self, timeout: Duration) -> Result<FlushReport, ShimError> {
        match &self.inner {
            Inner::Disabled => Ok(FlushReport::trivial(FlushOutcome::Disabled)),
            Inner::DryRun(d) => d.flush(),
            Inner::Live(l) => {
                let upto = l.inbox.last_seq();
                let (reply, answer) = mpsc::sync_channel(1);
                let deadline = Instant::now() + timeout;
                l.commands
                    .send(Command::Flush {
                        upto,
                        deadline,
                        reply,
                    })
                    .map_err(|_| ShimError::Closed)?;
                self.wait(&answer, timeout)
            }
        }
    }

    fn wait(
        &self,
        answer: &mpsc::Receiver<Result<FlushReport, ShimError>>,
        timeout: Duration,
    ) -> Result<FlushReport, ShimError> {
        match answer.recv_timeout(timeout + REPLY_GRACE) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ShimError::FlushTimeout {
                pending: self.counters.queue_records.load(Relaxed),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(ShimError::Sender("the sender thread stopped".into()))
            }
        }
    }

    /// Flushes (as [`flush`](Self::flush)), then stops the sender, syncs the queue and releases
    /// its directory. Further calls on a closed shim are not possible (it is consumed).
    pub fn close(mut self, timeout: Duration) -> Result<FlushReport, ShimError> {
        self.shutdown(timeout)
    }

    fn shutdown(&mut self, timeout: Duration) -> Result<FlushReport, ShimError> {
        match std::mem::replace(&mut self.inner, Inner::Disabled) {
            Inner::Disabled => Ok(FlushReport::trivial(FlushOutcome::Disabled)),
            Inner::DryRun(d) => d.flush(),
            Inner::Live(mut l) => {
                let upto = l.inbox.last_seq();
                let (reply, answer) = mpsc::sync_channel(1);
                let sent = l.commands.send(Command::Close {
                    upto,
                    deadline: Instant::now() + timeout,
                    reply,
                });
                if sent.is_err() {
                    return Err(ShimError::Sender("the sender thread stopped".into()));
                }
                let (result, finished) = match answer.recv_timeout(timeout + REPLY_GRACE) {
                    // The sender answers a close as its last act: joining is immediate.
                    Ok(r) => (r, true),
                    Err(mpsc::RecvTimeoutError::Timeout) => (
                        Err(ShimError::FlushTimeout {
                            pending: self.counters.queue_records.load(Relaxed),
                        }),
                        false,
                    ),
                    Err(mpsc::RecvTimeoutError::Disconnected) => (
                        Err(ShimError::Sender("the sender thread stopped".into())),
                        true,
                    ),
                };
                if finished {
                    if let Some(t) = l.thread.take() {
                        if t.join().is_err() {
                            tracing::error!("the telemetry sender thread panicked");
                        }
                    }
                }
                result
            }
        }
    }

    /// Stops at once as if the worker process had been killed: records not yet in the queue
    /// are lost, nothing is synced, the directory lock is released. For crash-recovery tests and
    /// for hosts that must exit immediately.
    pub fn abandon(mut self) {
        if let Inner::Live(mut l) = std::mem::replace(&mut self.inner, Inner::Disabled) {
            let (reply, answer) = mpsc::sync_channel(1);
            if l.commands.send(Command::Crash { reply }).is_ok()
                && answer.recv_timeout(REPLY_GRACE).is_ok()
            {
                if let Some(t) = l.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ShimStats {
        let mut s = self.counters.snapshot();
        if let Inner::Live(l) = &self.inner {
            s.buffered_records = l.inbox.buffered() as u64;
        }
        s
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if matches!(self.inner, Inner::Disabled) {
            return;
        }
        match self.shutdown(self.drop_flush_timeout) {
            Ok(r) => tracing::debug!(outcome = ?r.outcome, "telemetry shim closed on drop"),
            Err(e) => {
                tracing::warn!(error = %e, "telemetry shim dropped before its records were safe")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Telemetry>();
    }
}
