//! The background sender: one thread with a current-thread tokio runtime, owning the backlog
//! and the gRPC stream.
//!
//! It takes records from the inbox (when a batch's worth is waiting, after `batch_linger`, or
//! when a flush asks), appends them to the backlog (the disk queue when configured), and streams
//! batches read back from the backlog after the last seq it sent. It moves forward **only** on
//! the daemon's durable ack watermark: the backlog is trimmed to it, and after any reconnect the
//! stream restarts right after it (the daemon drops what it already has). Reconnects back off
//! exponentially with jitter (at most 100 ms apart while a flush or close waits). Everything it meets is counted and logged at a bounded rate.
//! The connection states are in `sender/link.rs`, the answering of flushes and closes in
//! `sender/flushes.rs`.

use crate::{
    backlog::Backlog,
    backoff,
    disk_queue::{AppendOutcome, QueueError},
    flush::FlushReport,
    inbox::{Floor, Inbox, Pending},
    ratelimit::RateLimited,
    stats::Counters,
    wire, ShimConfig, ShimError,
};
use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, mpsc::SyncSender, Arc},
    time::{Duration, Instant},
};
use telemetry_core::pb::IngestAck;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
    Status,
};

mod flushes;
mod link;

use flushes::PendingFlush;
use link::{describe, Event, Link, Up};

/// How long a failed disk write waits before it is retried.
const IO_RETRY: Duration = Duration::from_secs(1);

pub(crate) type Reply = SyncSender<Result<FlushReport, ShimError>>;

/// Requests from the caller side.
pub(crate) enum Command {
    /// Answer once every record up to `upto` is acked (or on disk, or the deadline passes).
    Flush {
        upto: u64,
        deadline: Instant,
        reply: Reply,
    },
    /// Flush, then stop cleanly (the queue is synced and its lock released before the reply).
    Close {
        upto: u64,
        deadline: Instant,
        reply: Reply,
    },
    /// Stop now, losing what is not yet in the queue, like a killed process would.
    Crash { reply: SyncSender<()> },
}

/// What the sender needs from the configuration.
pub(crate) struct Settings {
    /// One or more daemons of one store, tried in turn (`ShimConfig::endpoint`'s list).
    pub endpoints: Vec<Endpoint>,
    pub auth: Option<MetadataValue<Ascii>>,
    pub producer_id: String,
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Settings {
    pub fn from_config(c: &ShimConfig, producer_id: String) -> Result<Self, ShimError> {
        let invalid = |field, reason: String| {
            ShimError::Config(crate::ConfigError::Invalid { field, reason })
        };
        let tls = crate::tls::client_config(c)?;
        let mut endpoints = Vec::new();
        for url in crate::config::endpoint_list(&c.endpoint) {
            let endpoint = Endpoint::from_shared(url.to_owned())
                .map_err(|e| invalid("endpoint", e.to_string()))?
                .connect_timeout(c.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            endpoints.push(match &tls {
                Some(tls) => endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| invalid("endpoint", describe(&e)))?,
                None => endpoint,
            });
        }
        if endpoints.is_empty() {
            return Err(invalid("endpoint", "no endpoint".into()));
        }
        let auth = match &c.auth_token {
            None => None,
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|e| invalid("auth_token", e.to_string()))?,
            ),
        };
        Ok(Settings {
            endpoints,
            auth,
            producer_id,
            batch_records: c.batch_max_records,
            batch_bytes: c.batch_max_bytes,
            linger: c.batch_linger,
            max_in_flight: c.max_in_flight_batches,
            reconnect_initial: c.reconnect_initial,
            reconnect_max: c.reconnect_max,
        })
    }
}

/// Starts the sender thread.
pub(crate) fn spawn(
    settings: Settings,
    backlog: Backlog,
    inbox: Arc<Inbox>,
    counters: Arc<Counters>,
) -> Result<(mpsc::UnboundedSender<Command>, std::thread::JoinHandle<()>), ShimError> {
    // Unbounded in type only: every command is sent by a caller that then waits for its reply,
    // so at most one command per calling thread is ever queued.
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ShimError::Sender(format!("cannot build the runtime: {e}")))?;
    let thread = std::thread::Builder::new()
        .name("gym-telemetry-sender".into())
        .spawn(move || {
            let inbox_on_exit = Arc::clone(&inbox);
            runtime.block_on(Sender::new(settings, backlog, inbox, counters).run(rx));
            inbox_on_exit.close();
        })
        .map_err(|e| ShimError::Sender(format!("cannot start the sender thread: {e}")))?;
    Ok((tx, thread))
}

struct InFlight {
    last_seq: u64,
}

struct Logs {
    link: RateLimited,
    connected: RateLimited,
    acks: RateLimited,
    drop: RateLimited,
    reject: RateLimited,
    disk: RateLimited,
}

struct Sender {
    s: Settings,
    backlog: Option<Backlog>,
    inbox: Arc<Inbox>,
    counters: Arc<Counters>,
    staged: VecDeque<Pending>,
    link: Link,
    /// The endpoint of `s.endpoints` the link uses (or will try next).
    current: usize,
    attempts: u32,
    ever_attempted: bool,
    retry_at: Instant,
    io_retry_at: Option<Instant>,
    sent_upto: u64,
    acked: u64,
    next_batch_id: u64,
    in_flight: VecDeque<InFlight>,
    linger_deadline: Option<Instant>,
    flushes: Vec<PendingFlush>,
    last_link_error: String,
    logs: Logs,
}

impl Sender {
    fn new(s: Settings, backlog: Backlog, inbox: Arc<Inbox>, counters: Arc<Counters>) -> Self {
        let every = Duration::from_secs(10);
        Sender {
            s,
            backlog: Some(backlog),
            inbox,
            counters,
            staged: VecDeque::new(),
            link: Link::Down,
            current: 0,
            attempts: 0,
            ever_attempted: false,
            retry_at: Instant::now(),
            io_retry_at: None,
            sent_upto: 0,
            acked: 0,
            next_batch_id: 1,
            in_flight: VecDeque::new(),
            linger_deadline: None,
            flushes: Vec::new(),
            last_link_error: "not connected yet".into(),
            logs: Logs {
                link: RateLimited::new(every),
                connected: RateLimited::new(every),
                acks: RateLimited::new(every),
                drop: RateLimited::new(every),
                reject: RateLimited::new(every),
                disk: RateLimited::new(every),
            },
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let deadline = tokio::time::Instant::from_std(self.next_deadline());
            let event = tokio::select! {
                biased;
                c = commands.recv() => Event::Cmd(c),
                e = self.link.event() => e,
                _ = self.inbox.wake.notified() => Event::Wake,
                _ = tokio::time::sleep_until(deadline) => Event::Timer,
            };
            match event {
                Event::Cmd(None) => {
                    // Every handle is gone without a close: stop cleanly, keep what is queued.
                    self.finish(None);
                    return;
                }
                Event::Cmd(Some(Command::Crash { reply })) => {
                    self.link.shut();
                    drop(self.backlog.take());
                    let _ = reply.send(());
                    return;
                }
                Event::Cmd(Some(Command::Flush {
                    upto,
                    deadline,
                    reply,
                })) => self.add_flush(upto, deadline, reply, false),
                Event::Cmd(Some(Command::Close {
                    upto,
                    deadline,
                    reply,
                })) => self.add_flush(upto, deadline, reply, true),
                Event::Wake | Event::Timer => {}
                Event::Connected(Ok(channel)) => self.start_stream(channel),
                Event::Connected(Err(e)) => {
                    let refused = link::permanent_transport(&e);
                    self.link_failed(e, refused);
                }
                Event::Ack(Ok(ack)) => self.on_ack(ack),
                Event::Ack(Err(status)) => {
                    let refused = link::permanent_status(&status);
                    self.link_failed(
                        format!(
                            "stream: {} ({:?}){}",
                            status.message(),
                            status.code(),
                            std::error::Error::source(&status)
                                .map(|e| format!(": {}", describe(e)))
                                .unwrap_or_default()
                        ),
                        refused,
                    );
                }
            }
            if let Some(close) = self.work() {
                self.finish(Some(close));
                return;
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut d = Instant::now() + Duration::from_secs(3600);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                d = d.min(t);
            }
        };
        consider(self.linger_deadline);
        consider(self.io_retry_at);
        if matches!(self.link, Link::Down) {
            consider(Some(self.retry_at));
        }
        consider(self.backlog.as_ref().and_then(Backlog::sync_due));
        for f in &self.flushes {
            consider(Some(f.deadline));
        }
        d
    }

    /// One round after any event. Returns a close that has completed.
    fn work(&mut self) -> Option<(PendingFlush, Result<FlushReport, ShimError>)> {
        let now = Instant::now();
        let io_wait = self.io_retry_at.is_some_and(|t| now < t);
        let drain = !io_wait
            && (!self.flushes.is_empty()
                || !self.staged.is_empty()
                || self.linger_deadline.is_some_and(|t| now >= t)
                || self.inbox.batch_ready());
        if drain {
            self.drain();
            self.linger_deadline = None;
        }
        if self.linger_deadline.is_none() && !self.inbox.is_empty() {
            self.linger_deadline = Some(now + self.s.linger);
        }
        if let Some(b) = self.backlog.as_mut() {
            if b.sync_due().is_some_and(|t| now >= t) {
                if let Err(e) = b.after_batch() {
                    self.disk_error(&e);
                }
            }
        }
        if matches!(self.link, Link::Down) && now >= self.retry_at {
            self.connect();
        }
        self.pump();
        self.publish_gauges();
        self.check_flushes(Instant::now())
    }

    fn publish_gauges(&self) {
        if let Some(b) = &self.backlog {
            self.counters.queue_bytes.store(b.bytes(), Relaxed);
            self.counters.queue_records.store(b.unacked(), Relaxed);
            self.counters.corrupt_tails.store(b.corrupt(), Relaxed);
            self.counters
                .corrupt_lost_records
                .store(b.corrupt_lost(), Relaxed);
        }
    }

    fn disk_error(&mut self, e: &QueueError) {
        self.counters.set_error(e);
        if let Some(held) = self.logs.disk.allow() {
            tracing::error!(error = %e, since_last_log = held, "telemetry queue write failed; will retry");
        }
    }

    /// Moves records from the inbox into the backlog.
    fn drain(&mut self) {
        let Some(backlog) = self.backlog.as_mut() else {
            return;
        };
        let mut taken = self.inbox.take();
        self.staged.append(&mut taken);
        let (mut done, mut bytes, mut stored, mut dropped) = (0usize, 0usize, 0u64, 0u64);
        let mut failure = None;
        while let Some(mut p) = self.staged.pop_front() {
            let size = p.size;
            match backlog.append(&mut p, &self.s.producer_id) {
                Ok(AppendOutcome::Stored { evicted }) => {
                    stored += 1;
                    dropped += evicted;
                }
                Ok(AppendOutcome::Refused) => dropped += 1,
                Err(QueueError::Full { .. }) => {
                    self.staged.push_front(p);
                    break;
                }
                Err(e @ QueueError::Io { .. }) => {
                    self.staged.push_front(p);
                    failure = Some(e);
                    break;
                }
                Err(e) => {
                    // Can never be queued (out of order after a state loss, too large).
                    dropped += 1;
                    failure = Some(e);
                }
            }
            done += 1;
            bytes += size;
        }
        self.inbox.release(done, bytes);
        Counters::add(&self.counters.dropped, dropped);
        if dropped > 0 {
            if let Some(held) = self.logs.drop.allow() {
                tracing::warn!(
                    dropped,
                    since_last_log = held,
                    total = self.counters.dropped.load(Relaxed),
                    "telemetry queue full: records dropped"
                );
            }
        }
        if !matches!(self.link, Link::Up(_)) {
            Counters::add(&self.counters.spilled, stored);
        }
        let synced = match self.backlog.as_mut() {
            Some(b) if done > 0 => b.after_batch(),
            _ => Ok(()),
        };
        if let Err(e) = synced {
            failure = Some(e);
        }
        match failure {
            Some(e @ QueueError::Io { .. }) => {
                self.io_retry_at = Some(Instant::now() + IO_RETRY);
                self.disk_error(&e);
            }
            Some(e) => self.disk_error(&e),
            None => self.io_retry_at = None,
        }
    }

    /// The daemon the link uses or will try next.
    fn endpoint(&self) -> &Endpoint {
        // `Settings::from_config` refuses an empty list.
        &self.s.endpoints[self.current % self.s.endpoints.len()]
    }

    fn connect(&mut self) {
        if self.ever_attempted {
            Counters::add(&self.counters.reconnects, 1);
        }
        self.ever_attempted = true;
        let endpoint = self.endpoint().clone();
        self.link = Link::Connecting(tokio::spawn(async move { endpoint.connect().await }));
    }

    fn start_stream(&mut self, channel: Channel) {
        let (batch_tx, batch_rx) = mpsc::channel(self.s.max_in_flight);
        let (ack_tx, ack_rx) = mpsc::channel(self.s.max_in_flight + 1);
        let mut request = tonic::Request::new(ReceiverStream::new(batch_rx));
        let found;
        let auth = match &self.s.auth {
            Some(a) => Some(a),
            None => {
                // No configured token: the owner's, found now (telemetry_core::credentials).
                found = telemetry_core::credentials::discover_from_env()
                    .ok()
                    .flatten()
                    .and_then(|d| MetadataValue::try_from(format!("Bearer {}", d.token)).ok());
                found.as_ref()
            }
        };
        if let Some(auth) = auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        let task = tokio::spawn(async move {
            let end = match wire::publish(channel, request).await {
                Ok(mut acks) => loop {
                    match acks.message().await {
                        Ok(Some(ack)) => {
                            if ack_tx.send(Ok(ack)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break Status::unavailable("the daemon ended the stream"),
                        Err(status) => break status,
                    }
                },
                Err(status) => status,
            };
            let _ = ack_tx.send(Err(end)).await;
        });
        self.link = Link::Up(Up {
            batch_tx,
            ack_rx,
            task,
        });
        // Resend everything not yet covered by a durable ack.
        self.sent_upto = self.acked;
        self.in_flight.clear();
        if let Some(held) = self.logs.connected.allow() {
            tracing::info!(endpoint = %self.endpoint().uri(), resend_after = self.acked,
                reconnects = self.counters.reconnects.load(Relaxed), streams_since_last_log = held,
                "telemetry stream open");
        }
    }

    /// The link is gone. `refused`: by an error waiting cannot heal (answers pending flushes at
    /// once, see `sender/flushes.rs`); otherwise pending flushes keep waiting and the next
    /// attempt comes promptly while any does.
    fn link_failed(&mut self, error: String, refused: bool) {
        let was_up = matches!(self.link, Link::Up(_));
        self.link.shut();
        self.in_flight.clear();
        self.sent_upto = self.acked;
        // Several daemons: try the next one, backing off once per round of the list.
        let n = self.s.endpoints.len().max(1);
        let failed_over = n > 1;
        let mut delay = backoff::next(
            self.s.reconnect_initial,
            self.s.reconnect_max,
            self.attempts / n as u32,
        );
        if !self.flushes.is_empty() && !refused {
            delay = delay.min(flushes::FLUSH_RETRY);
        }
        self.attempts = self.attempts.saturating_add(1);
        self.retry_at = Instant::now() + delay;
        if refused {
            for f in &mut self.flushes {
                f.refused = true;
            }
        }
        if let Some(held) = self.logs.link.allow() {
            tracing::warn!(endpoint = %self.endpoint().uri(), error = %error, was_up,
                retry_in_ms = delay.as_millis() as u64, failures_since_last_log = held,
                "telemetry daemon unreachable; queueing");
        }
        self.counters.set_error(&error);
        self.last_link_error = error;
        if failed_over {
            self.current = (self.current + 1) % n;
            Counters::add(&self.counters.failovers, 1);
        }
    }

    /// Sends batches while the in-flight window has room.
    fn pump(&mut self) {
        let Link::Up(up) = &self.link else {
            return;
        };
        let Some(backlog) = self.backlog.as_mut() else {
            return;
        };
        let mut lost = None;
        while self.in_flight.len() < self.s.max_in_flight {
            let outgoing = match backlog.read_after(
                self.sent_upto,
                self.s.batch_records,
                self.s.batch_bytes,
                &self.s.producer_id,
            ) {
                Ok(r) => r,
                Err(e) => {
                    self.counters.set_error(&e);
                    break;
                }
            };
            let Some(last) = outgoing.last().map(|(seq, _)| *seq) else {
                break;
            };
            let n = outgoing.len() as u64;
            let batch = wire::EncodedBatch {
                batch_id: self.next_batch_id,
                records: outgoing.into_iter().map(|(_, bytes)| bytes).collect(),
            };
            match up.batch_tx.try_send(batch) {
                Ok(()) => {
                    self.next_batch_id += 1;
                    self.sent_upto = last;
                    self.in_flight.push_back(InFlight { last_seq: last });
                    Counters::add(&self.counters.sent, n);
                }
                Err(mpsc::error::TrySendError::Full(_)) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    lost = Some("the stream closed".to_owned());
                    break;
                }
            }
        }
        if let Some(e) = lost {
            self.link_failed(e, false);
        }
    }

    fn on_ack(&mut self, ack: IngestAck) {
        self.in_flight.pop_front();
        self.attempts = 0;
        let ours = &self.s.producer_id;
        let watermark = ack
            .watermarks
            .iter()
            .find(|w| &w.producer_id == ours)
            .map(|w| w.durable_seq);
        if let Some(w) = watermark {
            if w > self.acked {
                if let Some(b) = self.backlog.as_mut() {
                    match b.ack(w) {
                        Ok(n) => Counters::add(&self.counters.acked, n),
                        Err(e) => self.counters.set_error(&e),
                    }
                }
                self.acked = w;
            }
            self.sent_upto = self.sent_upto.max(w);
            self.in_flight.retain(|b| b.last_seq > w);
            if self.inbox.raise_floor(w) == Floor::Raised {
                tracing::warn!(watermark = w, producer_id = %ours,
                    "the daemon has seen seqs this shim had not assigned yet (queue state lost?); skipping past them");
            }
        }
        let rejected: Vec<_> = ack
            .rejected
            .iter()
            .filter(|r| &r.producer_id == ours)
            .collect();
        if !rejected.is_empty() {
            Counters::add(&self.counters.rejected, rejected.len() as u64);
            if let Some(held) = self.logs.reject.allow() {
                tracing::warn!(count = rejected.len(), first_seq = rejected[0].producer_seq,
                    reason = %rejected[0].reason, since_last_log = held,
                    "the daemon rejected telemetry records");
            }
        }
        Counters::add(&self.counters.duplicates, u64::from(ack.duplicates));
        if let Some(held) = self.logs.acks.allow() {
            tracing::debug!(batch_id = ack.batch_id, watermark = ?watermark,
                acked_total = self.counters.acked.load(Relaxed),
                duplicates_total = self.counters.duplicates.load(Relaxed),
                acks_since_last_log = held, "telemetry acked");
        }
    }
}
