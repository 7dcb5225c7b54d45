//! The change feed: `LISTEN` on the store's channel, so a daemon learns, within a round trip,
//! that another daemon committed a batch to the same schema.
//!
//! Every append that stores a row sends one `pg_notify(<schema>, payload)` inside its own
//! transaction (PostgreSQL delivers it at commit, and only if the transaction commits): one per
//! committed batch, never one per row, because notifying commits serialise on the server's
//! notification queue. The payload carries only the last seq of each stream the batch wrote
//! (`steps=12,events=3`): nothing a reader must trust. A notification is a hint to read again;
//! the reader then does keyset reads by seq from its own cursors, which are complete (the seq
//! order argument in docs/ARCHITECTURE.md). Lost hints (a dropped connection, a notification
//! queue overflow on the server) therefore delay records but never lose them: on every
//! reconnect the feed wakes its reader at once, and readers also poll at a bounded interval.
//!
//! The listening connection is our own (not a pooled one: asynchronous notifications reach a
//! tokio-postgres client only through its connection object), driven by a task on the
//! backend's runtime that reconnects with a doubling backoff (100 ms up to 5 s).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::StreamExt;
use telemetry_store::{ChangeFeed, ChangeFeedStats, ChangeWake, StoreError, StreamHeads};
use tokio_postgres::AsyncMessage;

use crate::{error::classify, Shared};

/// The streams a payload may name, as the writer spells them.
const PAYLOAD_STREAMS: [&str; 4] = ["episodes", "events", "scalars", "steps"];

/// First and longest pause between two connection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The longest payload we look at (ours are under 100 bytes; PostgreSQL allows 8000).
const MAX_PAYLOAD: usize = 256;

/// The notification payload of a batch that wrote streams with these last seqs.
pub(crate) fn payload(last: &[(&str, i64)]) -> String {
    last.iter()
        .map(|(stream, seq)| format!("{stream}={seq}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a payload is one a writer of ours sends (anything else is counted, still a wake).
pub(crate) fn payload_ok(p: &str) -> bool {
    p.len() <= MAX_PAYLOAD
        && !p.is_empty()
        && p.split(',').all(|part| {
            part.split_once('=').is_some_and(|(s, n)| {
                PAYLOAD_STREAMS.contains(&s) && n.parse::<u64>().is_ok_and(|n| n > 0)
            })
        })
}

#[derive(Default)]
struct Counters {
    hints: AtomicU64,
    reconnects: AtomicU64,
    malformed: AtomicU64,
}

/// A running feed; dropping it stops the listening task.
pub(crate) struct PgChangeFeed {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgChangeFeed {
    /// Starts listening; returns once the first `LISTEN` is in place (so a daemon that has
    /// started misses no hint), or fails after the connect timeout.
    pub(crate) fn start(shared: Arc<Shared>, wake: ChangeWake) -> Result<PgChangeFeed, StoreError> {
        let counters = Arc::new(Counters::default());
        let (ready, listening) = tokio::sync::oneshot::channel();
        let task = shared.rt.runtime().spawn(listen_loop(
            shared.cfg.pg.clone(),
            shared.cfg.tls.clone(),
            shared.cfg.schema.clone(),
            counters.clone(),
            wake,
            ready,
        ));
        let feed = PgChangeFeed {
            shared,
            counters,
            task,
        };
        let timeout = feed.shared.cfg.connect_timeout;
        feed.shared.block_on(async {
            match tokio::time::timeout(timeout, listening).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(StoreError::Server {
                    engine: "postgres",
                    code: None,
                    retryable: true,
                    detail: format!("the change feed did not start listening within {timeout:?}"),
                }),
            }
        })?;
        Ok(feed)
    }
}

async fn listen_loop(
    pg: tokio_postgres::Config,
    tls: crate::tls::Connector,
    channel: String,
    counters: Arc<Counters>,
    wake: ChangeWake,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut pause = BACKOFF.0;
    let mut connected_before = false;
    let mut ready = Some(ready);
    loop {
        let (cb, r) = (&mut connected_before, &mut ready);
        let once = match &tls {
            crate::tls::Connector::Plain => {
                let conn = crate::connect(&pg, tokio_postgres::NoTls).await;
                listen_on(conn, &channel, &counters, &wake, cb, r).await
            }
            crate::tls::Connector::Tls(t) => {
                let conn = crate::connect(&pg, t.clone()).await;
                listen_on(conn, &channel, &counters, &wake, cb, r).await
            }
        };
        match once {
            Ok(()) => tracing::warn!("store change feed: connection closed, reconnecting"),
            Err(e) => tracing::warn!(error = %e, ?pause, "store change feed: reconnecting"),
        }
        if connected_before {
            // A connection that worked resets the backoff.
            pause = pause.min(BACKOFF.0 * 2);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(BACKOFF.1);
    }
}

type Connection<S> = tokio_postgres::Connection<tokio_postgres::Socket, S>;

/// One connection: `LISTEN`, wake once (catch-up), then wake on every notification until the
/// connection ends.
async fn listen_on<S>(
    connected: Result<(tokio_postgres::Client, Connection<S>), StoreError>,
    channel: &str,
    counters: &Counters,
    wake: &ChangeWake,
    connected_before: &mut bool,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), StoreError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (client, mut conn) = connected?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    let driver = async move {
        let ended = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    counters.hints.fetch_add(1, Ordering::Relaxed);
                    if !payload_ok(n.payload()) {
                        counters.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                    wake();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(classify(e)),
                None => break Ok(()),
            }
        };
        // Ends the LISTEN side's wait.
        drop(tx);
        ended
    };
    let listen = async {
        // The schema name is a validated lower-case identifier (PgConfig::new).
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .map_err(classify)?;
        if *connected_before {
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        *connected_before = true;
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        // Whatever was committed while we were not listening: read it now.
        wake();
        // Keep the client (and so the session's LISTEN) until the connection ends.
        let _ = rx.recv().await;
        Ok::<(), StoreError>(())
    };
    let (driven, listened) = tokio::join!(driver, listen);
    drop(client);
    listened?;
    driven
}

impl ChangeFeed for PgChangeFeed {
    fn heads(&self) -> Result<StreamHeads, StoreError> {
        let s = &self.shared;
        s.block_on(async {
            let client = s.read_client().await?;
            let rows = client
                .query("SELECT stream, last_seq FROM stream_seqs", &[])
                .await
                .map_err(classify)?;
            let mut heads = StreamHeads::default();
            for row in rows {
                let name: &str = row.try_get(0).map_err(classify)?;
                let last: i64 = row.try_get(1).map_err(classify)?;
                let last = last as u64;
                match name {
                    "steps" => heads.steps = last,
                    "episodes" => heads.episodes = last,
                    "events" => heads.events = last,
                    "scalars" => heads.scalars = last,
                    _ => {}
                }
            }
            Ok(heads)
        })
    }

    fn stats(&self) -> ChangeFeedStats {
        ChangeFeedStats {
            hints: self.counters.hints.load(Ordering::Relaxed),
            reconnects: self.counters.reconnects.load(Ordering::Relaxed),
            malformed: self.counters.malformed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_foreign_ones_are_told_apart() {
        let p = payload(&[("events", 3), ("steps", 12)]);
        assert_eq!(p, "events=3,steps=12");
        assert!(payload_ok(&p));
        for bad in [
            "",
            "steps",
            "steps=x",
            "rows=1",
            "steps=0",
            &"steps=1,".repeat(100),
        ] {
            assert!(!payload_ok(bad), "{bad:?}");
        }
    }
}
