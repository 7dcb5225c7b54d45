//! An in-process `gym_telemetry.v1.Ingest` server with the daemon's watermark semantics, for
//! tests and benchmarks of anything that links the shim (feature `fake-ingest`).
//!
//! Exactly-once cannot be tested against a server that stores whatever arrives: this one keeps a
//! durable [`Watermark`] per producer, the same rule the daemon's store applies
//! (`telemetry_core::watermark`: a record at or below its producer's watermark is a duplicate, a
//! producer's first record is admitted whatever its seq, a rejected record still advances it),
//! validates with
//! `telemetry_core::validate`, and acks each batch with the watermarks of its producers. It can
//! be stopped like a crashed daemon (every connection dropped at once) and restarted on the same
//! port with its store intact, and it can withhold acks (a daemon that stored a batch but died
//! before answering).

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};
use telemetry_core::{
    pb::{
        ingest_server::{Ingest, IngestServer},
        IngestAck, IngestBatch, ProducerWatermark, Record, RejectedRecord,
    },
    validate::{self, Limits},
    Watermark,
};
use tokio::sync::mpsc;
use tokio_stream::{
    wrappers::{ReceiverStream, TcpListenerStream},
    StreamExt,
};
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct Store {
    records: Vec<Record>,
    stored: u64,
    watermarks: HashMap<String, Watermark>,
    duplicates: u64,
    rejected: u64,
    batches: u64,
    streams: u64,
    authorization: Vec<Option<String>>,
}

/// The fake daemon's store and switches; survives [`FakeIngest::stop`]/[`FakeIngest::restart`].
pub struct FakeState {
    store: Mutex<Store>,
    changed: Condvar,
    withhold_acks: AtomicBool,
    /// Keep and validate records (false: count only, for benchmarks).
    faithful: bool,
}

impl std::fmt::Debug for FakeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeState")
            .field("stored", &self.stored())
            .finish_non_exhaustive()
    }
}

impl FakeState {
    /// An empty store that validates and keeps every record.
    pub fn new() -> Arc<Self> {
        Self::build(true)
    }

    /// A store that only counts: no validation, no records kept (watermarks and duplicates
    /// still work). For benchmarks, where the fake daemon shares the machine with the shim.
    pub fn counting() -> Arc<Self> {
        Self::build(false)
    }

    fn build(faithful: bool) -> Arc<Self> {
        Arc::new(FakeState {
            store: Mutex::new(Store::default()),
            changed: Condvar::new(),
            withhold_acks: AtomicBool::new(false),
            faithful,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a batch with the watermark rules and returns its ack.
    pub fn apply(&self, batch: IngestBatch) -> IngestAck {
        let mut s = self.lock();
        s.batches += 1;
        let mut ack = IngestAck {
            batch_id: batch.batch_id,
            ..IngestAck::default()
        };
        let mut producers: Vec<String> = Vec::new();
        for (i, r) in batch.records.into_iter().enumerate() {
            let (pid, seq) = (r.producer().0.to_owned(), r.producer().1);
            if !pid.is_empty() {
                if !producers.contains(&pid) {
                    producers.push(pid.clone());
                }
                let watermark = s.watermarks.entry(pid.clone()).or_default();
                if watermark.is_duplicate(seq) {
                    ack.duplicates += 1;
                    s.duplicates += 1;
                    continue;
                }
                // Advanced before validation: a rejected record advances it too.
                watermark.advance(seq);
            }
            let valid = if self.faithful {
                validate::validate(&r, &Limits::default())
            } else {
                Ok(())
            };
            match valid {
                Err(e) => {
                    s.rejected += 1;
                    ack.rejected.push(RejectedRecord {
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        reason: e.to_string(),
                        producer_id: pid,
                        producer_seq: seq,
                    });
                }
                Ok(()) => {
                    ack.stored += 1;
                    s.stored += 1;
                    if self.faithful {
                        s.records.push(r);
                    }
                }
            }
        }
        ack.watermarks = producers
            .into_iter()
            .map(|p| ProducerWatermark {
                durable_seq: s
                    .watermarks
                    .get(&p)
                    .copied()
                    .unwrap_or_default()
                    .durable_seq(),
                producer_id: p,
            })
            .collect();
        drop(s);
        self.changed.notify_all();
        ack
    }

    /// Stop (true) or resume (false) answering batches; they are still stored.
    pub fn set_withhold_acks(&self, withhold: bool) {
        self.withhold_acks.store(withhold, Ordering::SeqCst);
    }

    /// Every stored record, in store order (empty for a [`counting`](Self::counting) store).
    pub fn records(&self) -> Vec<Record> {
        self.lock().records.clone()
    }

    /// Records stored.
    pub fn stored(&self) -> u64 {
        self.lock().stored
    }

    /// Records recognised as duplicates.
    pub fn duplicates(&self) -> u64 {
        self.lock().duplicates
    }

    /// Records rejected by validation.
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
    }

    /// Batches received.
    pub fn batches(&self) -> u64 {
        self.lock().batches
    }

    /// Publish streams opened (connections that reached the service).
    pub fn streams(&self) -> u64 {
        self.lock().streams
    }

    /// A producer's durable watermark (`0` for a producer not seen yet, as acks report it).
    pub fn watermark(&self, producer_id: &str) -> u64 {
        self.lock()
            .watermarks
            .get(producer_id)
            .copied()
            .unwrap_or_default()
            .durable_seq()
    }

    /// The `authorization` header of every stream, in order.
    pub fn authorization_headers(&self) -> Vec<Option<String>> {
        self.lock().authorization.clone()
    }

    /// Waits until at least `n` records are stored; false if `timeout` passes first.
    pub fn wait_for_stored(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.stored < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

struct Service {
    state: Arc<FakeState>,
}

#[tonic::async_trait]
impl Ingest for Service {
    type PublishStream = ReceiverStream<Result<IngestAck, Status>>;

    async fn publish(
        &self,
        request: Request<Streaming<IngestBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        {
            let mut s = self.state.lock();
            s.streams += 1;
            let auth = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            s.authorization.push(auth);
        }
        self.state.changed.notify_all();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let ack = state.apply(batch);
                if state.withhold_acks.load(Ordering::SeqCst) {
                    continue;
                }
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn publish_batch(
        &self,
        request: Request<IngestBatch>,
    ) -> Result<Response<IngestAck>, Status> {
        Ok(Response::new(self.state.apply(request.into_inner())))
    }
}

/// A running (or stopped) fake daemon.
pub struct FakeIngest {
    addr: SocketAddr,
    state: Arc<FakeState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FakeIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeIngest")
            .field("addr", &self.addr)
            .field("running", &self.runtime.is_some())
            .finish()
    }
}

/// A loopback address with a port that was free a moment ago: where a daemon that is not up
/// yet will listen.
pub fn reserve_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl FakeIngest {
    /// Starts on an ephemeral loopback port with a new validating store.
    pub fn start() -> io::Result<Self> {
        Self::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), FakeState::new())
    }

    /// Starts on `addr` with `state` (shared with an earlier instance, or new).
    pub fn start_with(addr: SocketAddr, state: Arc<FakeState>) -> io::Result<Self> {
        let mut f = FakeIngest {
            addr,
            state,
            runtime: None,
        };
        f.restart()?;
        Ok(f)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a shim connects to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store and switches.
    pub fn state(&self) -> &Arc<FakeState> {
        &self.state
    }

    /// Stops like a crashed daemon: the listener and every connection are dropped at once.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Starts again on the same address (no-op when running). The store is kept.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.runtime.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr)?;
        listener.set_nonblocking(true)?;
        self.addr = listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-ingest")
            .enable_all()
            .build()?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let service = IngestServer::new(Service {
            state: Arc::clone(&self.state),
        });
        // Small acks must not wait for Nagle's algorithm (the real daemon sets this too).
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            if let Ok(c) = &conn {
                let _ = c.set_nodelay(true);
            }
            conn
        });
        rt.spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "fake ingest server stopped");
            }
        });
        self.runtime = Some(rt);
        Ok(())
    }
}

impl Drop for FakeIngest {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_core::pb::RunStep;

    fn step(producer_seq: u64) -> Record {
        RunStep {
            run_id: "run-1".into(),
            producer_id: "p".into(),
            producer_seq,
            ..RunStep::default()
        }
        .into()
    }

    fn batch(batch_id: u64, records: Vec<Record>) -> IngestBatch {
        IngestBatch { batch_id, records }
    }

    #[test]
    fn a_first_record_with_seq_zero_is_stored_once() {
        let state = FakeState::new();
        let ack = state.apply(batch(1, vec![step(0)]));
        assert_eq!((ack.stored, ack.duplicates), (1, 0));
        assert_eq!(state.stored(), 1);
        let again = state.apply(batch(2, vec![step(0), step(1)]));
        assert_eq!((again.stored, again.duplicates), (1, 1));
        assert_eq!(state.watermark("p"), 1);
        assert_eq!(state.records().len(), 2);
    }

    #[test]
    fn rejected_records_advance_the_watermark() {
        let state = FakeState::new();
        let mut bad = RunStep {
            run_id: "run-1".into(),
            producer_id: "p".into(),
            producer_seq: 3,
            reward: f64::NAN,
            ..RunStep::default()
        };
        let ack = state.apply(batch(1, vec![bad.clone().into()]));
        assert_eq!((ack.stored, ack.rejected.len()), (0, 1));
        assert_eq!(ack.watermarks[0].durable_seq, 3);
        bad.reward = 1.0;
        let resend = state.apply(batch(2, vec![bad.into(), step(2), step(4)]));
        assert_eq!((resend.stored, resend.duplicates), (1, 2));
        assert_eq!(state.watermark("p"), 4);
    }
}
