//! The thin async I/O layer between the daemon and the pure [`App`](crate::app::App).
//!
//! Every gRPC stream, the `ListRuns` poll, the `WatchRuns` watch, the clock and the keyboard
//! feed [`Event`]s into one **bounded** channel ([`EventSink`]). What may be lost is lost
//! visibly: a live data batch that finds the channel full is dropped and counted (the count is
//! shown on the status line; the records are still in the store), while keys, notices (lag, gap,
//! completion), stream ends and replay reads wait for room instead, so nothing that changes what
//! the user must be told is ever dropped. The daemon itself rate-limits live delivery
//! (`min_interval_ms`), so the channel fills only if drawing stalls.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use telemetry_core::pb::{ListRunsRequest, StreamRequest, WatchRunsRequest};
use tokio::{sync::mpsc, task::AbortHandle};

use crate::{
    app::{Command, Connection, Event, StreamId},
    client::{describe_status, Clients},
};

/// Capacity of the event channel.
pub const EVENT_CHANNEL: usize = 1024;
/// How often `ListRuns` is polled for counts.
pub const LIST_RUNS_EVERY: Duration = Duration::from_secs(2);
/// How often the app gets a [`Event::Tick`].
pub const TICK_EVERY: Duration = Duration::from_millis(100);
/// Longest wait between two `WatchRuns` attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The sending side of the bounded event channel, with its drop counter.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl EventSink {
    /// A sink and its receiver, holding at most `capacity` events.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            EventSink {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Sends if there is room; otherwise drops the event and counts it. `false` when dropped
    /// or when the receiver is gone.
    pub fn offer(&self, event: Event) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Waits for room and sends; `false` when the receiver is gone.
    pub async fn deliver(&self, event: Event) -> bool {
        self.tx.send(event).await.is_ok()
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs the commands of the app and the background feeds; aborts everything when dropped.
#[derive(Debug)]
pub struct Io {
    clients: Clients,
    sink: EventSink,
    streams: HashMap<StreamId, AbortHandle>,
    background: Vec<AbortHandle>,
}

impl Io {
    /// Starts `WatchRuns`, the `ListRuns` poll and the clock.
    pub fn start(clients: Clients, sink: EventSink) -> Self {
        let background = vec![
            tokio::spawn(watch_runs(clients.clone(), sink.clone())).abort_handle(),
            tokio::spawn(poll_runs(clients.clone(), sink.clone())).abort_handle(),
            tokio::spawn(tick(sink.clone())).abort_handle(),
        ];
        Io {
            clients,
            sink,
            streams: HashMap::new(),
            background,
        }
    }

    /// Carries out one command ([`Command::Quit`] is the caller's business).
    pub fn execute(&mut self, command: Command) {
        // Forget streams that have finished by themselves.
        self.streams.retain(|_, h| !h.is_finished());
        match command {
            Command::OpenSteps { stream, request } => {
                let h = tokio::spawn(pump_steps(
                    self.clients.clone(),
                    stream,
                    request,
                    self.sink.clone(),
                ));
                self.streams.insert(stream, h.abort_handle());
            }
            Command::OpenEpisodes { stream, request } => {
                let h = tokio::spawn(pump_episodes(
                    self.clients.clone(),
                    stream,
                    request,
                    self.sink.clone(),
                ));
                self.streams.insert(stream, h.abort_handle());
            }
            Command::ReadScalars { stream, request } => {
                let mut clients = self.clients.clone();
                let sink = self.sink.clone();
                let h = tokio::spawn(async move {
                    let result = match clients.query.read_scalars(request).await {
                        Ok(r) => Ok(r.into_inner().series),
                        Err(status) => Err(describe_status(&status)),
                    };
                    sink.deliver(Event::Scalars { stream, result }).await;
                });
                self.streams.insert(stream, h.abort_handle());
            }
            Command::Close(stream) => {
                if let Some(h) = self.streams.remove(&stream) {
                    h.abort();
                }
            }
            Command::Quit => {}
        }
    }

    /// Streams currently running.
    pub fn running_streams(&self) -> usize {
        self.streams.values().filter(|h| !h.is_finished()).count()
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        for h in self.streams.values().chain(self.background.iter()) {
            h.abort();
        }
    }
}

macro_rules! pump {
    ($name:ident, $call:ident, $variant:ident, $label:literal) => {
        async fn $name(mut clients: Clients, id: StreamId, request: StreamRequest, sink: EventSink) {
            // Live data may be dropped when the app falls behind; a bounded read may not.
            let live = request.follow;
            let mut stream = match clients.query.$call(request).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    tracing::debug!(stream = id.0, %status, concat!($label, " stream refused"));
                    sink.deliver(Event::StreamEnded {
                        stream: id,
                        error: Some(describe_status(&status)),
                    })
                    .await;
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        let must_arrive = !live || message.notice.is_some();
                        let event = Event::$variant { stream: id, message };
                        let gone = if must_arrive {
                            !sink.deliver(event).await
                        } else {
                            !sink.offer(event) && sink.is_closed()
                        };
                        if gone {
                            return;
                        }
                    }
                    Ok(None) => {
                        sink.deliver(Event::StreamEnded { stream: id, error: None }).await;
                        return;
                    }
                    Err(status) => {
                        sink.deliver(Event::StreamEnded {
                            stream: id,
                            error: Some(describe_status(&status)),
                        })
                        .await;
                        return;
                    }
                }
            }
        }
    };
}

pump!(pump_steps, stream_run_steps, Steps, "steps");
pump!(pump_episodes, stream_run_episodes, Episodes, "episodes");

async fn watch_runs(mut clients: Clients, sink: EventSink) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match clients.control.watch_runs(WatchRunsRequest {}).await {
            Ok(resp) => {
                backoff = Duration::from_millis(500);
                if !sink.deliver(Event::Connection(Connection::Connected)).await {
                    return;
                }
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(info)) => {
                            if !sink.deliver(Event::RunInfo(info)).await {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%status, "WatchRuns stream lost");
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                // A daemon without RunControl: ListRuns alone keeps the table current.
                tracing::info!("daemon does not serve RunControl; run states come from ListRuns");
                return;
            }
            Err(status) => {
                let event = Event::Connection(Connection::Unreachable {
                    error: describe_status(&status),
                    retry_in: backoff,
                });
                if !sink.deliver(event).await {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn poll_runs(mut clients: Clients, sink: EventSink) {
    let mut every = tokio::time::interval(LIST_RUNS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let event = match clients.query.list_runs(ListRunsRequest::default()).await {
            Ok(resp) => Event::RunsListed {
                runs: resp.into_inner().runs,
                at: Instant::now(),
            },
            Err(status) => Event::Connection(Connection::Unreachable {
                error: describe_status(&status),
                retry_in: LIST_RUNS_EVERY,
            }),
        };
        let ok = matches!(event, Event::RunsListed { .. });
        if !sink.deliver(event).await {
            return;
        }
        if ok && !sink.deliver(Event::Connection(Connection::Connected)).await {
            return;
        }
    }
}

async fn tick(sink: EventSink) {
    let mut every = tokio::time::interval(TICK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let event = Event::Tick {
            at: Instant::now(),
            wall: SystemTime::now(),
            dropped_events: sink.dropped(),
        };
        if !sink.offer(event) && sink.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_channel_drops_offers_and_counts_them_but_delivers_wait() {
        let (sink, mut rx) = EventSink::channel(2);
        assert!(sink.offer(Event::Resize));
        assert!(sink.offer(Event::Resize));
        assert!(!sink.offer(Event::Resize));
        assert!(!sink.offer(Event::Resize));
        assert_eq!(sink.dropped(), 2);
        // A must-arrive event waits for room instead of being dropped.
        let s2 = sink.clone();
        let waiting =
            tokio::spawn(async move { s2.deliver(Event::Connection(Connection::Connected)).await });
        assert_eq!(rx.recv().await, Some(Event::Resize));
        assert!(waiting.await.expect("task"));
        assert_eq!(rx.recv().await, Some(Event::Resize));
        assert_eq!(
            rx.recv().await,
            Some(Event::Connection(Connection::Connected))
        );
        assert_eq!(sink.dropped(), 2);
    }
}
