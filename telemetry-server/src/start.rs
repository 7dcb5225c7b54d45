//! Starting a server: the one place that knows every component, in the order they depend on
//! each other, and the shutdown that undoes it in reverse.
//!
//! Start: check the listen address → take the var dir's lock → open the store (writer, reader,
//! upkeep) → hub over the store → pipeline thread → bind → recover the run registry and warm
//! the hub → services → serve. Shutdown: stop accepting and close live streams → stop workers
//! → background tasks → upkeep → pipeline (final checkpoint) → lock.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use telemetry_core::pb::{
    frames_server::FramesServer, ingest_server::IngestServer,
    legacy::trainer_service_server::TrainerServiceServer, policies_server::PoliciesServer,
    query_server::QueryServer, run_control_server::RunControlServer, CompletionStatus,
    FILE_DESCRIPTOR_SET,
};
use telemetry_hub::Hub;
use telemetry_store::{Backend, BackendReader, BackendWriter, SqliteBackend, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{server::Router, Server},
};

use crate::{
    auth::{AuthInterceptor, Credentials},
    catchup::{self, StoreCatchUp},
    checkpointer::CheckpointThread,
    config::AuthConfig,
    config::{ServerConfig, SHUTDOWN_DRAIN},
    control::ControlService,
    dispatch::{DispatchConfig, WorkerTls},
    error::{io, ServerError},
    follow::Follower,
    frames::FramesService,
    handle::{endpoint_for, ServerHandle},
    housekeeping::{housekeeping, stop_workers},
    ingest::IngestService,
    legacy::LegacyService,
    local::LocalAccess,
    lock::InstanceLock,
    metrics::{self, Metrics},
    pipeline::{self, Pipeline},
    publish::Publisher,
    query::QueryService,
    runs::Registry,
    security,
    workqueue::WorkQueue,
};

/// Starts a server on the caller's tokio runtime: takes the lock, opens the store, recovers,
/// binds and serves in the background. Returns once it accepts connections.
pub async fn start(cfg: ServerConfig) -> Result<ServerHandle, ServerError> {
    if !cfg.listen.ip().is_loopback() && cfg.auth == AuthConfig::InsecureNoAuth {
        return Err(ServerError::NeedsToken(cfg.listen));
    }
    security::prepare_var_dir(&cfg.var_dir)?;
    let lock = InstanceLock::acquire(&cfg.var_dir, &cfg.listen.to_string())?;
    let (credentials, operator_token) = credentials_of(&cfg)?;
    if lock.recovered_stale_pid.is_some() {
        tracing::debug!("recovering after a server that did not stop cleanly");
    }
    let metrics = Metrics::new();
    if cfg.backend.is_none() {
        security::prepare_store_file(&StoreConfig::in_var_dir(&cfg.var_dir).path)?;
    }
    let (writer, reader, upkeep) = open_store(&cfg, &metrics)?;

    let hub = Hub::new(cfg.hub.clone(), Arc::new(StoreCatchUp::new(reader.clone())));
    // A store shared with other daemons: the follower publishes (before our first write, so
    // its cursors start below everything this server commits).
    let follower = Follower::start(
        backend_of(&cfg).as_ref(),
        reader.clone(),
        hub.clone(),
        metrics.clone(),
    )?;
    let (pipeline, writer_thread) = pipeline::spawn(
        writer,
        hub.clone(),
        follower.as_ref().map(Follower::local_wake),
        metrics.clone(),
        cfg.store_retry,
    )
    .map_err(io("starting the store writer"))?;

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(io(format!("cannot listen on {}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(io("local address"))?;
    let cancel = CancellationToken::new();
    let policies = Arc::new(crate::policies::PolicyContext::new(
        &cfg.var_dir,
        reader.clone(),
        metrics.clone(),
    ));
    let dispatch_cfg = Arc::new(dispatch_config(
        &cfg,
        addr,
        &credentials,
        &metrics,
        &cancel,
        policies.clone(),
    )?);

    let mut registry = Registry::new(pipeline.clone(), cfg.var_dir.clone())
        .with_max_watchers(cfg.max_run_watchers);
    let mut leasing = None;
    if follower.is_some() {
        // A shared store: runs carry their owner, and other daemons' runs are shown here.
        let owner = crate::follow::daemon_identity(&cfg.var_dir);
        registry = registry.with_owner(&owner);
        // Our lease before any run row of ours is read or written: no other daemon takes our
        // runs while we restore them, and none of our rows ever lacks a lease.
        if let Some(leases) = backend_of(&cfg).leases()? {
            let l = crate::follow::Leasing {
                leases,
                owner,
                ttl: cfg.lease_ttl,
                metrics: metrics.clone(),
            };
            l.renew().await?;
            registry = registry.with_shared_beats(l.leases.clone(), metrics.clone());
            leasing = Some(l);
        }
    }
    let completions = follower.as_ref().map(|f| f.observe(registry.clone()));
    let interrupted = recover(&registry, reader.as_ref(), &hub, &cfg).await?;
    let metrics_listener = match cfg.metrics_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(io(format!("cannot listen for metrics on {a}")))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(io("metrics address"))?),
        None => None,
    };

    let runs_reader = follower.as_ref().map(|_| reader.clone());
    let publisher = Publisher::new(
        pipeline.clone(),
        registry.clone(),
        metrics.clone(),
        cfg.ingest,
    )
    .with_policies(policies.clone());
    let frame_store = Arc::new(telemetry_frames::FrameStore::open(
        &telemetry_frames::frames_dir(&cfg.var_dir),
        cfg.frames.clone(),
    )?);
    let (router, query, control) = services(
        &cfg,
        addr,
        &credentials,
        &publisher,
        &hub,
        reader.clone(),
        &registry,
        &dispatch_cfg,
        &metrics,
        &cancel,
        &frame_store,
    )
    .await?;
    tracing::info!(%addr, var_dir = %cfg.var_dir.display(), "gym-telemetry server serving");

    let metrics_auth = match metrics_addr {
        // Off loopback, /metrics (run ids, rates) needs the operator credential too.
        Some(a) if !a.ip().is_loopback() => Some(AuthInterceptor::new(
            credentials.clone(),
            metrics.unauthenticated.clone(),
        )),
        _ => None,
    };
    let tasks = background_tasks(
        &cfg,
        metrics_listener.map(|l| (l, metrics_auth)),
        &registry,
        &hub,
        &metrics,
        &cancel,
    );

    if let Some(reader) = runs_reader {
        let registry = registry.clone();
        let cancel = cancel.clone();
        tasks.spawn(crate::follow::follow_runs(
            reader,
            registry,
            leasing.clone(),
            cancel,
        ));
    }
    if let Some(rx) = completions {
        // Ends with the follower (its sender), after the tasks are waited for.
        tokio::spawn(crate::follow::apply_completions(rx, registry.clone()));
    }
    if let Some(l) = &leasing {
        tasks.spawn(crate::follow::keep_lease(l.clone(), cancel.clone()));
    }
    // Queues left by workers of a previous server: delivered through the shim code, once we
    // serve (a shutdown cancels the drain; what is left waits for the next start).
    {
        let dispatch_cfg = dispatch_cfg.clone();
        let var_dir = cfg.var_dir.clone();
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = crate::drain::drain_all(&dispatch_cfg, &var_dir, &metrics) => {}
                () = cancel.cancelled() => {}
            }
        });
    }
    let local_registry = registry.clone();
    let stopped = Stopped {
        lock,
        registry,
        tasks,
        upkeep,
        pipeline,
        writer_thread,
        follower,
        leasing,
        grace: cfg.cancel_grace,
    };
    let join = tokio::spawn(serve(
        router,
        listener,
        hub.clone(),
        cancel.clone(),
        stopped,
    ));
    let local = LocalAccess {
        credentials: credentials.clone(),
        unauthenticated: metrics.unauthenticated.clone(),
        hub: hub.clone(),
        reader,
        query,
        control,
        cancel: cancel.clone(),
        frames: frame_store.clone(),
        policies: crate::policies::PoliciesService::new(policies, local_registry.clone()),
        registry: local_registry,
    };
    Ok(ServerHandle {
        local,
        addr,
        metrics_addr,
        interrupted_runs: interrupted,
        hub,
        publisher,
        tls: cfg.tls.is_some(),
        operator_token,
        credentials,
        cancel,
        join,
        frames: frame_store,
    })
}

/// The operator credential (and its token), with the warnings a shared machine calls for.
fn credentials_of(cfg: &ServerConfig) -> Result<(Credentials, Option<String>), ServerError> {
    if cfg.auth == AuthConfig::InsecureNoAuth {
        tracing::warn!("--insecure-no-auth: every local account can read all telemetry and make this server run commands");
    }
    let warn_plain = |what: &str, addr: SocketAddr| {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "{what} is served off loopback without TLS: tokens and telemetry cross the network in the clear, readable and replayable by anyone on the path");
        }
    };
    if cfg.tls.is_none() {
        warn_plain("gRPC", cfg.listen);
    }
    if let Some(m) = cfg.metrics_listen {
        warn_plain("/metrics", m);
    }
    let token = security::operator_token(&cfg.auth, &cfg.var_dir)?;
    let credentials = match &token {
        Some(t) => Credentials::new(t).map_err(|e| ServerError::Credentials(e.to_string()))?,
        None => Credentials::none(),
    };
    Ok((credentials, token))
}

type OpenedStore = (
    Box<dyn BackendWriter>,
    Arc<dyn BackendReader>,
    Option<CheckpointThread>,
);

/// Opens the configured backend (SQLite in the var dir by default): its one writer, its shared
/// reader, and its upkeep on its own thread.
fn open_store(cfg: &ServerConfig, metrics: &Metrics) -> Result<OpenedStore, ServerError> {
    let backend = backend_of(cfg);
    let writer = backend.open_writer()?;
    let reader = backend.reader()?;
    let upkeep = match backend.maintenance()? {
        Some(m) => Some(
            CheckpointThread::spawn(m, metrics.clone(), cfg.checkpoint_interval)
                .map_err(io("starting the checkpoint thread"))?,
        ),
        None => None,
    };
    tracing::info!(store = %backend.describe(), "store open");
    Ok((writer, reader, upkeep))
}

/// The metrics endpoint and the housekeeping loop, tracked so shutdown can wait for them.
fn background_tasks(
    cfg: &ServerConfig,
    metrics_listener: Option<(TcpListener, Option<AuthInterceptor>)>,
    registry: &Registry,
    hub: &Hub,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> TaskTracker {
    let tasks = TaskTracker::new();
    if let Some((l, auth)) = metrics_listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "Prometheus metrics at /metrics");
        }
        let m = metrics.clone();
        let c = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(l, m, auth, async move { c.cancelled().await }).await {
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
    tasks
}

/// The configured backend, or SQLite in the var dir.
fn backend_of(cfg: &ServerConfig) -> Arc<dyn Backend> {
    match &cfg.backend {
        Some(b) => b.clone(),
        None => {
            let mut store_cfg = StoreConfig::in_var_dir(&cfg.var_dir);
            store_cfg.durability = cfg.durability;
            Arc::new(SqliteBackend::new(store_cfg))
        }
    }
}

/// What the workers it spawns need to trust a TLS server: the CA file as an absolute path
/// (workers may run in another directory), checked to exist now rather than in every worker.
fn worker_tls(cfg: &ServerConfig) -> Result<Option<WorkerTls>, ServerError> {
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

fn dispatch_config(
    cfg: &ServerConfig,
    addr: SocketAddr,
    credentials: &Credentials,
    metrics: &Metrics,
    stopping: &CancellationToken,
    policies: Arc<crate::policies::PolicyContext>,
) -> Result<DispatchConfig, ServerError> {
    let tls = worker_tls(cfg)?;
    Ok(DispatchConfig {
        endpoint: endpoint_for(addr, tls.is_some()),
        tls,
        credentials: credentials.clone(),
        proxy_exe: cfg.proxy_exe.clone(),
        grace: cfg.cancel_grace,
        max_log_bytes: 8 * 1024 * 1024,
        limits: cfg.submit,
        policies,
        queue: WorkQueue::new(
            cfg.max_running_workers,
            cfg.max_pending_runs,
            stopping.clone(),
            metrics.clone(),
        ),
    })
}

/// Restart recovery: runs a dead server left active are failed (their live views end with a
/// stored `RunCompleted`), and the hub's recent-past buffers are warmed from the store.
async fn recover(
    registry: &Registry,
    reader: &dyn BackendReader,
    hub: &Hub,
    cfg: &ServerConfig,
) -> Result<Vec<String>, ServerError> {
    let interrupted = registry.restore(reader.run_infos()?).await;
    for run in &interrupted {
        let mut reason = crate::runs::INTERRUPTED.to_owned();
        if let Some((pid, ticks)) = run.worker {
            if crate::process::is_same_process(pid, ticks) {
                // It outlived the dead server: stop it (its queue is drained after start).
                let stopped = crate::process::stop_group(pid, ticks, cfg.cancel_grace).await;
                tracing::warn!(run_id = %run.run_id, pid, stopped, "stopped a worker that outlived the previous server");
                reason.push_str(&format!(
                    "; its worker (pid {pid}) outlived it and was stopped"
                ));
            }
        }
        tracing::warn!(run_id = %run.run_id, "run was active when the previous server stopped; marked failed");
        registry
            .complete(&run.run_id, CompletionStatus::Failed, reason, None, None)
            .await;
    }
    catchup::warm_hub(reader, hub, cfg.hub.ring_records)?;
    Ok(interrupted.into_iter().map(|r| r.run_id).collect())
}

/// The gRPC router: health and reflection open, our services and the predecessor's behind the
/// auth interceptor, with message size limits.
#[allow(clippy::too_many_arguments)]
async fn services(
    cfg: &ServerConfig,
    addr: SocketAddr,
    credentials: &Credentials,
    publisher: &Publisher,
    hub: &Hub,
    reader: Arc<dyn BackendReader>,
    registry: &Registry,
    dispatch_cfg: &Arc<DispatchConfig>,
    metrics: &Metrics,
    cancel: &CancellationToken,
    frame_store: &Arc<telemetry_frames::FrameStore>,
) -> Result<(Router, QueryService, ControlService), ServerError> {
    let auth = AuthInterceptor::new(credentials.clone(), metrics.unauthenticated.clone());
    let ingest = IngestService::new(publisher.clone());
    let query = QueryService::new(hub.clone(), reader, registry.clone())
        .with_limits(cfg.query, metrics.clone());
    let control = ControlService::new(registry.clone(), dispatch_cfg.clone(), cancel.clone());
    let policies =
        crate::policies::PoliciesService::new(dispatch_cfg.policies.clone(), registry.clone());
    let legacy = LegacyService::new(
        publisher.clone(),
        query.clone(),
        registry.clone(),
        dispatch_cfg.clone(),
        cancel.clone(),
    )
    .with_options(crate::legacy_runs::LegacyOptions {
        gpus: cfg.gpus.clone(),
        demo_exe: cfg.demo_exe.clone(),
        listen_address: addr.to_string(),
    });

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
    metrics.attach_frame_store(Arc::clone(frame_store));
    let frames = FramesService::new(Arc::clone(frame_store))
        .with_wrong_run_counter(metrics.frames_wrong_run.clone());
    health_reporter
        .set_serving::<FramesServer<FramesService>>()
        .await;
    health_reporter
        .set_serving::<PoliciesServer<crate::policies::PoliciesService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let max = cfg.max_message_bytes;
    let mut builder = Server::builder().max_concurrent_streams(cfg.max_concurrent_streams);
    if let Some(tls) = &cfg.tls {
        let cert =
            std::fs::read(&tls.cert).map_err(io(format!("reading {}", tls.cert.display())))?;
        let key = std::fs::read(&tls.key).map_err(io(format!("reading {}", tls.key.display())))?;
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )?;
    }
    // Health stays open (load balancers, readiness probes); reflection lists our services, so
    // off loopback it needs a credential like everything else.
    let reflection_auth = if cfg.listen.ip().is_loopback() {
        AuthInterceptor::new(Credentials::none(), metrics.unauthenticated.clone())
    } else {
        auth.clone()
    };
    let router = builder
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection, reflection_auth))
        .add_service(InterceptedService::new(
            crate::ingest::CountRefusedMessages::new(
                IngestServer::new(ingest).max_decoding_message_size(max),
                metrics.clone(),
            ),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            QueryServer::new(query.clone()).max_encoding_message_size(max),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            RunControlServer::new(control.clone()),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            FramesServer::new(frames)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            PoliciesServer::new(policies),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            TrainerServiceServer::new(legacy)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            auth,
        ));
    Ok((router, query, control))
}

/// What shutdown stops, in order, after serving ends.
struct Stopped {
    lock: InstanceLock,
    registry: Registry,
    tasks: TaskTracker,
    upkeep: Option<CheckpointThread>,
    pipeline: Pipeline,
    writer_thread: std::thread::JoinHandle<()>,
    follower: Option<Follower>,
    /// Released once every run change of ours is stored: the others take what is left (runs of
    /// workers started by hand) at once instead of after the TTL.
    leasing: Option<crate::follow::Leasing>,
    grace: Duration,
}

/// Serves until cancelled, then shuts down in dependency order.
async fn serve(
    router: Router,
    listener: TcpListener,
    hub: Hub,
    cancel: CancellationToken,
    s: Stopped,
) -> Result<(), ServerError> {
    // Long-lived streams (live views, WatchRuns) would hold a graceful shutdown open forever: on
    // cancel, the hub closes every subscription and the WatchRuns forwarders end (they watch
    // the same token), then the server drains. A bound covers clients that still do not let go.
    // TCP_NODELAY: acks and live records are small; Nagle + delayed ACK would add ~40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let drained = cancel.clone();
    let serve_cancel = cancel.clone();
    let registry = s.registry.clone();
    let grace = s.grace;
    let serve = router.serve_with_incoming_shutdown(incoming, async move {
        serve_cancel.cancelled().await;
        // Workers first, while we still serve: their shims (and proxies) flush what they hold
        // during the SIGTERM grace, instead of leaving it in their queues.
        stop_workers(&registry, grace).await;
        hub.shutdown().await;
    });
    let result = tokio::select! {
        r = serve => r,
        () = async {
            drained.cancelled().await;
            // Workers get their grace (and SIGKILL 2 s after it) before clients are cut off.
            tokio::time::sleep(SHUTDOWN_DRAIN + grace + Duration::from_secs(2)).await;
        } => {
            tracing::warn!("clients did not close their streams in time; closing connections");
            Ok(())
        }
    };
    // Then, in dependency order: any worker still left (none normally: they were stopped while
    // serving), background tasks, upkeep, the pipeline (final checkpoint); the lock goes last.
    stop_workers(&s.registry, s.grace).await;
    s.tasks.close();
    s.tasks.wait().await;
    if let Some(upkeep) = s.upkeep {
        let _ = tokio::task::spawn_blocking(move || upkeep.stop()).await;
    }
    s.pipeline.shutdown().await;
    if let Some(l) = &s.leasing {
        l.release().await;
    }
    drop(s.registry);
    let writer_thread = s.writer_thread;
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    if let Some(f) = s.follower {
        let _ = tokio::task::spawn_blocking(move || f.stop()).await;
    }
    drop(s.lock);
    tracing::info!("gym-telemetry server stopped");
    result.map_err(ServerError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TlsFiles;

    #[test]
    fn workers_trust_the_served_certificate_unless_told_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&cert, "cert").expect("write");
        std::fs::write(&ca, "ca").expect("write");
        let mut cfg = ServerConfig::ephemeral(dir.path());
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
