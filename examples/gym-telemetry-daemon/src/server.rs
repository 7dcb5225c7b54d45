//! Assembling and running the daemon: the one place that knows every component.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use telemetry_core::pb::{
    ingest_server::IngestServer, legacy::trainer_service_server::TrainerServiceServer,
    query_server::QueryServer, run_control_server::RunControlServer, CompletionStatus,
    FILE_DESCRIPTOR_SET,
};
use telemetry_hub::{Hub, HubConfig};
use telemetry_store::{Durability, Store, StoreConfig, StoreError, StoreReader};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Server};

use crate::{
    auth::AuthInterceptor,
    catchup::StoreCatchUp,
    control::ControlService,
    dispatch::{self, DispatchConfig, WorkerTls},
    ingest::{IngestLimits, IngestService},
    legacy::LegacyService,
    lock::{InstanceLock, LockError},
    metrics::{self, Metrics},
    query::QueryService,
    runs::Registry,
    writer,
};

/// The default gRPC address: loopback, port 50151.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50151";
/// The default Prometheus address: loopback, port 50152.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:50152";

/// How long a shutdown waits for clients to close their streams before closing connections.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Everything the daemon can be told.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Store, lock, PID file, worker logs and queues live here.
    pub var_dir: PathBuf,
    /// gRPC address (port 0: any free port).
    pub listen: SocketAddr,
    /// Prometheus address (`None`: no metrics endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token every RPC must carry; required for a non-loopback `listen`.
    pub auth_token: Option<String>,
    /// Serve TLS with these files. The endpoint the daemon reports and hands to the workers
    /// it spawns is then `https://`.
    pub tls: Option<TlsFiles>,
    /// With TLS: the PEM CA file the workers it spawns trust (`GYM_TELEMETRY_TLS_CA_FILE` in
    /// their environment). `None` (default): the served certificate file itself, which is
    /// right for a self-signed certificate; set it when the certificate is issued by a CA.
    pub tls_client_ca: Option<PathBuf>,
    /// With TLS: the name the workers it spawns check the certificate against
    /// (`GYM_TELEMETRY_TLS_DOMAIN`). `None` (default): the host of the endpoint they are
    /// given, i.e. the listen address, so the certificate must name that IP address; set it
    /// (for example to `localhost`) when the certificate names a host instead.
    pub tls_client_domain: Option<String>,
    /// SQLite durability.
    pub durability: Durability,
    /// A running run that sends nothing for this long is failed.
    pub heartbeat_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace when cancelling a worker.
    pub cancel_grace: Duration,
    /// How often a health line is logged and metrics snapshots refreshed.
    pub health_interval: Duration,
    /// How often the WAL is checkpointed (on its own thread, off the commit path).
    pub checkpoint_interval: Duration,
    /// The executable hosting the JSONL proxy (`proxy` subcommand) for legacy workers.
    pub self_exe: PathBuf,
    /// Hub limits.
    pub hub: HubConfig,
    /// Batch and record limits.
    pub ingest: IngestLimits,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
}

impl DaemonConfig {
    /// Defaults for a var dir, listening on the default loopback address.
    pub fn new(var_dir: impl Into<PathBuf>) -> Self {
        DaemonConfig {
            var_dir: var_dir.into(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50151),
            metrics_listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50152)),
            auth_token: None,
            tls: None,
            tls_client_ca: None,
            tls_client_domain: None,
            durability: Durability::Normal,
            heartbeat_timeout: Duration::from_secs(120),
            cancel_grace: Duration::from_secs(5),
            health_interval: Duration::from_secs(30),
            checkpoint_interval: Duration::from_millis(500),
            self_exe: std::env::current_exe().unwrap_or_else(|_| "gym-telemetry-daemon".into()),
            hub: HubConfig {
                subscriber_queue: crate::writer::MAX_GROUP_RECORDS,
                ..HubConfig::default()
            },
            ingest: IngestLimits::default(),
            max_message_bytes: 16 * 1024 * 1024,
        }
    }

    /// For tests: an ephemeral loopback port, no metrics port.
    pub fn ephemeral(var_dir: impl Into<PathBuf>) -> Self {
        DaemonConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            metrics_listen: None,
            ..Self::new(var_dir)
        }
    }
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Binding a non-loopback address without a token.
    #[error("refusing to listen on {0} without --auth-token: only loopback addresses may be served without authentication")]
    NeedsToken(SocketAddr),
    /// Another daemon holds the var dir.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// A socket or file could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// A started daemon.
pub struct RunningDaemon {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Runs the previous daemon left running, now failed as interrupted.
    pub interrupted_runs: Vec<String>,
    /// The hub, for in-process observers (tests, the demo summary).
    pub hub: Hub,
    tls: bool,
    cancel: CancellationToken,
    join: JoinHandle<Result<(), DaemonError>>,
}

impl RunningDaemon {
    /// `http://127.0.0.1:PORT` (or the bound address; `https://` when serving TLS), what shims
    /// and viewers connect to.
    pub fn endpoint(&self) -> String {
        endpoint_for(self.addr, self.tls)
    }

    /// Stops the daemon gracefully and waits for it: stops serving, stops workers, flushes,
    /// checkpoints, releases the lock.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        self.cancel.cancel();
        self.wait().await
    }

    /// Waits until the daemon stops (after a signal or [`RunningDaemon::shutdown`]).
    pub async fn wait(self) -> Result<(), DaemonError> {
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(DaemonError::Io {
                what: "daemon task".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// A token that stops the daemon when cancelled (for signal handlers).
    pub fn stop_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

fn endpoint_for(addr: SocketAddr, tls: bool) -> String {
    let ip = if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// What the workers it spawns need to trust a TLS daemon: the CA file as an absolute path
/// (workers may run in another directory), checked to exist now rather than in every worker.
fn worker_tls(cfg: &DaemonConfig) -> Result<Option<WorkerTls>, DaemonError> {
    let Some(tls) = &cfg.tls else {
        return Ok(None);
    };
    let ca = cfg.tls_client_ca.as_ref().unwrap_or(&tls.cert);
    let ca_file = std::fs::canonicalize(ca)
        .map_err(io(format!("the CA file for workers {}", ca.display())))?;
    Ok(Some(WorkerTls {
        ca_file,
        domain: cfg.tls_client_domain.clone().filter(|d| !d.is_empty()),
    }))
}

/// Starts the daemon: takes the lock, opens the store, recovers, binds and serves in the
/// background. Returns once it accepts connections.
pub async fn start(cfg: DaemonConfig) -> Result<RunningDaemon, DaemonError> {
    let has_token = cfg.auth_token.as_deref().is_some_and(|t| !t.is_empty());
    if !cfg.listen.ip().is_loopback() && !has_token {
        return Err(DaemonError::NeedsToken(cfg.listen));
    }
    let lock = InstanceLock::acquire(&cfg.var_dir, &cfg.listen.to_string())?;
    let metrics = Metrics::new();
    let mut store_cfg = StoreConfig::in_var_dir(&cfg.var_dir);
    store_cfg.durability = cfg.durability;
    // Checkpoints run on their own thread (see `checkpointer`), never inside a commit.
    store_cfg.wal_autocheckpoint_pages = 0;
    let store = Store::open(store_cfg.clone())?;
    let checkpoints = crate::checkpointer::CheckpointThread::spawn(
        telemetry_store::Checkpointer::open(&store_cfg)?,
        metrics.clone(),
        cfg.checkpoint_interval,
    )
    .map_err(io("starting the checkpoint thread"))?;
    let store_path = store.path().to_path_buf();
    let reader = StoreReader::open(&store_path)?;

    let catch_up = Arc::new(StoreCatchUp::new(store_path.clone()));
    let hub = Hub::new(cfg.hub.clone(), catch_up);
    let (writer, writer_thread) = writer::spawn(store, hub.clone(), metrics.clone())
        .map_err(io("starting the store writer"))?;

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(io(format!("cannot listen on {}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(io("local address"))?;
    let tls = worker_tls(&cfg)?;
    let dispatch_cfg = Arc::new(DispatchConfig {
        endpoint: endpoint_for(addr, tls.is_some()),
        tls,
        auth_token: cfg.auth_token.clone().filter(|t| !t.is_empty()),
        self_exe: cfg.self_exe.clone(),
        grace: cfg.cancel_grace,
        max_log_bytes: 8 * 1024 * 1024,
    });

    // Recovery: runs a dead daemon left active are failed; their live views are closed.
    let registry = Registry::new(writer.clone(), cfg.var_dir.clone());
    let interrupted = registry.restore(reader.run_infos()?).await;
    for run_id in &interrupted {
        tracing::warn!(run_id = %run_id, "run was active when the previous daemon stopped; marked failed");
        dispatch::record_completion(
            &registry,
            run_id,
            CompletionStatus::Failed,
            "interrupted: the daemon stopped while the run was active".into(),
            None,
            None,
        )
        .await;
    }
    crate::catchup::warm_hub(&reader, &hub, cfg.hub.ring_records)?;
    drop(reader);

    let metrics_addr = match cfg.metrics_listen {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .map_err(io(format!("cannot listen for metrics on {a}")))?;
            Some((l.local_addr().map_err(io("metrics address"))?, l))
        }
        None => None,
    };

    let cancel = CancellationToken::new();
    let auth = AuthInterceptor::new(cfg.auth_token.clone(), metrics.unauthenticated.clone());
    let ingest = IngestService::new(
        writer.clone(),
        registry.clone(),
        metrics.clone(),
        cfg.ingest,
    );
    let query = QueryService::new(hub.clone(), store_path.clone(), registry.clone());
    let control = ControlService::new(registry.clone(), dispatch_cfg.clone(), cancel.clone());
    let legacy = LegacyService::new(
        ingest.clone(),
        query.clone(),
        registry.clone(),
        dispatch_cfg.clone(),
        cancel.clone(),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IngestServer<IngestService>>()
        .await;
    health_reporter
        .set_serving::<QueryServer<QueryService>>()
        .await;
    health_reporter
        .set_serving::<RunControlServer<ControlService>>()
        .await;
    health_reporter
        .set_serving::<TrainerServiceServer<LegacyService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| DaemonError::Reflection(e.to_string()))?;

    let max = cfg.max_message_bytes;
    let mut builder = Server::builder();
    if let Some(tls) = &cfg.tls {
        let cert =
            std::fs::read(&tls.cert).map_err(io(format!("reading {}", tls.cert.display())))?;
        let key = std::fs::read(&tls.key).map_err(io(format!("reading {}", tls.key.display())))?;
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(InterceptedService::new(
            IngestServer::new(ingest).max_decoding_message_size(max),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            QueryServer::new(query).max_encoding_message_size(max),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            RunControlServer::new(control),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            TrainerServiceServer::new(legacy)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            auth,
        ));

    tracing::info!(%addr, var_dir = %cfg.var_dir.display(), "gym-telemetry-daemon serving");
    let tasks = tokio_util::task::TaskTracker::new();
    let metrics_bound = metrics_addr.as_ref().map(|(a, _)| *a);
    if let Some((maddr, l)) = metrics_addr {
        tracing::info!(addr = %maddr, "Prometheus metrics at /metrics");
        let m = metrics.clone();
        let c = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(l, m, async move { c.cancelled().await }).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    tasks.spawn(housekeeping(
        cfg.clone(),
        registry.clone(),
        hub.clone(),
        metrics.clone(),
        cancel.clone(),
    ));

    let serve_cancel = cancel.clone();
    let hub_for_task = hub.clone();
    let join = tokio::spawn(async move {
        let _lock = lock;
        // Long-lived streams (live views, WatchRuns) would hold a graceful shutdown open
        // forever: on cancel, the hub closes every subscription and the WatchRuns forwarders
        // end (they watch the same token), then the server drains. A bound covers clients
        // that still do not let go.
        let hub_closer = hub_for_task.clone();
        // TCP_NODELAY: acks and live records are small; Nagle + delayed ACK would add ~40 ms.
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let drained = serve_cancel.clone();
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            serve_cancel.cancelled().await;
            hub_closer.shutdown().await;
        });
        let result = tokio::select! {
            r = serve => r,
            () = async {
                drained.cancelled().await;
                tokio::time::sleep(SHUTDOWN_DRAIN).await;
            } => {
                tracing::warn!("clients did not close their streams in time; closing connections");
                Ok(())
            }
        };
        // Then, in dependency order: workers (their shims keep unsent telemetry in their
        // queues for the next daemon), background tasks, the store writer (final
        // checkpoint); the lock goes last.
        stop_workers(&registry, cfg.cancel_grace).await;
        tasks.close();
        tasks.wait().await;
        let _ = tokio::task::spawn_blocking(move || checkpoints.stop()).await;
        writer.shutdown().await;
        drop(registry);
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        tracing::info!("gym-telemetry-daemon stopped");
        result.map_err(DaemonError::from)
    });

    Ok(RunningDaemon {
        addr,
        metrics_addr: metrics_bound,
        interrupted_runs: interrupted,
        hub,
        tls: cfg.tls.is_some(),
        cancel,
        join,
    })
}

async fn stop_workers(registry: &Registry, grace: Duration) {
    let live = registry.live_processes();
    if live.is_empty() {
        return;
    }
    tracing::info!(count = live.len(), "stopping workers");
    for run_id in &live {
        registry.request_stop(run_id, Some("daemon shut down".into()));
    }
    // Bounded wait for their exit handlers (SIGKILL follows SIGTERM after `grace`).
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(2);
    while !registry.live_processes().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Periodic work: heartbeat enforcement, metrics snapshots, a health line.
async fn housekeeping(
    cfg: DaemonConfig,
    registry: Registry,
    hub: Hub,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut health = tokio::time::interval(cfg.health_interval);
    let beat_every = (cfg.heartbeat_timeout / 4).max(Duration::from_millis(100));
    let mut beats = tokio::time::interval(beat_every);
    for t in [&mut health, &mut beats] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut last_ingested = metrics.ingested.get();
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = beats.tick() => {
                registry.enforce_heartbeats(Instant::now(), cfg.heartbeat_timeout).await;
            }
            _ = health.tick() => {
                crate::catchup::refresh_metrics(&metrics, &hub, &registry);
                let now_ingested = metrics.ingested.get();
                let secs = last_at.elapsed().as_secs_f64().max(1e-9);
                let rate = (now_ingested - last_ingested) as f64 / secs;
                last_ingested = now_ingested;
                last_at = Instant::now();
                let runs = registry.snapshot();
                let active = runs.iter().filter(|r| !crate::runs::is_final(r.state)).count();
                tracing::info!(
                    ingest_per_s = format!("{rate:.0}"),
                    stored_total = now_ingested,
                    runs = runs.len(),
                    active,
                    wal_frames = metrics.wal_log_frames.get(),
                    "health"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_scheme_follows_tls() {
        let any: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        assert_eq!(endpoint_for(any, false), "http://127.0.0.1:7000");
        assert_eq!(endpoint_for(any, true), "https://127.0.0.1:7000");
    }

    #[test]
    fn workers_trust_the_served_certificate_unless_told_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&cert, "cert").expect("write");
        std::fs::write(&ca, "ca").expect("write");
        let mut cfg = DaemonConfig::ephemeral(dir.path());
        assert_eq!(worker_tls(&cfg).expect("no TLS"), None);

        // An indirect path is made absolute: workers may run in another directory.
        cfg.tls = Some(TlsFiles {
            cert: dir.path().join("sub/../cert.pem"),
            key: dir.path().join("key.pem"),
        });
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let canonical = |p: &std::path::Path| std::fs::canonicalize(p).expect("exists");
        let w = worker_tls(&cfg).expect("valid").expect("TLS");
        assert_eq!(w.ca_file, canonical(&cert));
        assert_eq!(w.domain, None);

        cfg.tls_client_ca = Some(ca.clone());
        cfg.tls_client_domain = Some("localhost".into());
        let w = worker_tls(&cfg).expect("valid").expect("TLS");
        assert_eq!(w.ca_file, canonical(&ca));
        assert_eq!(w.domain.as_deref(), Some("localhost"));

        cfg.tls_client_ca = Some(dir.path().join("missing.pem"));
        let err = worker_tls(&cfg).expect_err("missing CA");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
