//! Starting and stopping worker processes for `SubmitRun` / `CancelRun`.
//!
//! Each worker runs in its own process group, so cancelling reaches everything it spawned
//! (vectorised envs, the JSONL proxy's child): SIGTERM to the group, then SIGKILL after a grace
//! period. The worker learns where to send telemetry from `GYM_TELEMETRY_*` environment
//! variables, which the shim reads (with TLS, also the CA to trust and the name to check); a
//! legacy worker that prints JSONL runs under the JSONL proxy
//! (`gym-telemetry-proxy --run-id RUN -- <argv>`), which turns its stdout into records. Its output is
//! kept in `<var_dir>/runs/<run_id>/worker.log`, capped at [`DispatchConfig::max_log_bytes`]
//! (what goes beyond is counted in the log's last line, not written).

use std::{
    os::unix::process::ExitStatusExt, path::PathBuf, process::Stdio, sync::Arc, time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use telemetry_core::{
    pb::{CompletionStatus, RunInfo, RunState, SubmitRunRequest},
    timestamp, ControlMode,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::Command,
    sync::Notify,
};

use crate::{
    auth::Credentials,
    runs::{ProcessControl, Registry},
    security,
    workqueue::{QueueFull, Queued, Slot, Ticket, WorkQueue},
};

/// How workers are started.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// The endpoint workers send telemetry to (`http://127.0.0.1:PORT`, `https://` with TLS).
    pub endpoint: String,
    /// With TLS: what workers trust, passed as `GYM_TELEMETRY_TLS_CA_FILE`/`_DOMAIN`.
    pub tls: Option<WorkerTls>,
    /// The server's credentials: each worker gets a worker token scoped to its run.
    pub credentials: Credentials,
    /// The `gym-telemetry-proxy` executable, which runs legacy JSONL workers.
    pub proxy_exe: PathBuf,
    /// Time between SIGTERM and SIGKILL on cancel.
    pub grace: Duration,
    /// Largest worker log kept per run.
    pub max_log_bytes: u64,
    /// Sizes a submission may have.
    pub limits: SubmitLimits,
    /// The policy inventory: equip checks, the worker's policies file, evaluation results.
    pub policies: Arc<crate::policies::PolicyContext>,
    /// Worker slots and the pending queue.
    pub queue: Arc<WorkQueue>,
}

/// How large a submission may be. Each is refused with `INVALID_ARGUMENT` naming the field and
/// the limit (and counted in `submissions_refused{reason="too_large"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitLimits {
    /// `metadata_json` (and the predecessor's `config_json`), bytes: 64 KiB.
    pub max_metadata_bytes: usize,
    /// `command.argv` entries: 1024.
    pub max_argv: usize,
    /// `command.argv`, bytes of all entries together: 128 KiB.
    pub max_argv_bytes: usize,
    /// `command.env` entries: 256.
    pub max_env: usize,
    /// `command.env`, bytes of all names and values together: 128 KiB.
    pub max_env_bytes: usize,
    /// Any other text field (`working_dir`, `agent_id`, `game_id`), bytes: 4096.
    pub max_field_bytes: usize,
}

impl Default for SubmitLimits {
    fn default() -> Self {
        SubmitLimits {
            max_metadata_bytes: 64 * 1024,
            max_argv: 1024,
            max_argv_bytes: 128 * 1024,
            max_env: 256,
            max_env_bytes: 128 * 1024,
            max_field_bytes: 4096,
        }
    }
}

impl SubmitLimits {
    /// Checks every size of `req`.
    pub fn check(&self, req: &SubmitRunRequest) -> Result<(), SubmitError> {
        let bytes = |field: &'static str, size: usize, limit: usize| {
            if size > limit {
                Err(SubmitError::TooLarge { field, size, limit })
            } else {
                Ok(())
            }
        };
        let entries = |field: &'static str, count: usize, limit: usize| {
            if count > limit {
                Err(SubmitError::TooMany {
                    field,
                    count,
                    limit,
                })
            } else {
                Ok(())
            }
        };
        bytes(
            "metadata_json",
            req.metadata_json.len(),
            self.max_metadata_bytes,
        )?;
        bytes("agent_id", req.agent_id.len(), self.max_field_bytes)?;
        bytes("game_id", req.game_id.len(), self.max_field_bytes)?;
        if let Some(c) = &req.command {
            entries("command.argv", c.argv.len(), self.max_argv)?;
            bytes(
                "command.argv",
                c.argv.iter().map(String::len).sum(),
                self.max_argv_bytes,
            )?;
            entries("command.env", c.env.len(), self.max_env)?;
            bytes(
                "command.env",
                c.env.iter().map(|(k, v)| k.len() + v.len()).sum(),
                self.max_env_bytes,
            )?;
            bytes(
                "command.working_dir",
                c.working_dir.len(),
                self.max_field_bytes,
            )?;
        }
        Ok(())
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// A bad request (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// A field is larger than its limit (`INVALID_ARGUMENT`).
    #[error("{field} is {size} bytes, at most {limit} are accepted")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A list or map has more entries than its limit (`INVALID_ARGUMENT`).
    #[error("{field} has {count} entries, at most {limit} are accepted")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Its entries.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Every worker slot is taken and the pending queue is full (`RESOURCE_EXHAUSTED`).
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
    /// A policy to equip is not in the inventory (`NOT_FOUND`).
    #[error("{0}")]
    PolicyNotFound(String),
    /// A policy to equip does not fit the run (`FAILED_PRECONDITION`; the message starts with
    /// the refusal's kind, e.g. `env_mismatch:`).
    #[error("{0}")]
    PolicyRefused(String),
}

impl From<String> for SubmitError {
    fn from(e: String) -> Self {
        SubmitError::Invalid(e)
    }
}

impl From<SubmitError> for tonic::Status {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull(_) => tonic::Status::resource_exhausted(e.to_string()),
            SubmitError::PolicyNotFound(_) => tonic::Status::not_found(e.to_string()),
            SubmitError::PolicyRefused(_) => tonic::Status::failed_precondition(e.to_string()),
            _ => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}

/// How workers check a TLS daemon's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTls {
    /// Absolute path of the PEM CA file (`GYM_TELEMETRY_TLS_CA_FILE`).
    pub ca_file: PathBuf,
    /// The name checked against the certificate (`GYM_TELEMETRY_TLS_DOMAIN`); `None`: the
    /// endpoint's host.
    pub domain: Option<String>,
}

/// How long a finished worker's log may take to drain before the run is reported finished.
pub const LOG_DRAIN: Duration = Duration::from_secs(2);

/// A fresh run id: `run-<unix seconds>-<random>`.
pub fn new_run_id() -> String {
    let ts = timestamp::now();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("run-{}-{}", ts.seconds, &rand[..8])
}

/// Validates a submission, registers the run as pending and starts its worker, now when a
/// worker slot is free, else when one frees up (in submission order). Returns the run id. A
/// spawn failure is not an error here: the run is registered and marked failed with the reason.
pub async fn submit(
    registry: &Registry,
    cfg: &Arc<DispatchConfig>,
    req: SubmitRunRequest,
) -> Result<String, SubmitError> {
    if let Err(e) = cfg.limits.check(&req) {
        cfg.queue.metrics().refuse_submission("too_large");
        return Err(e);
    }
    let command = req.command.clone().unwrap_or_default();
    if command.argv.is_empty() || command.argv[0].is_empty() {
        return Err(SubmitError::Invalid(
            "command.argv must name a program".into(),
        ));
    }
    let run_id = if req.run_id.is_empty() {
        new_run_id()
    } else {
        req.run_id.clone()
    };
    // Run ids name directories: the path-safe rule of telemetry-core, the one home of id rules.
    telemetry_core::check_run_id(&run_id).map_err(|e| e.to_string())?;
    let mode = ControlMode::from_wire(&req.control_mode).map_err(|e| e.to_string())?;
    if !req.metadata_json.is_empty() {
        serde_json::from_str::<serde_json::Value>(&req.metadata_json)
            .map_err(|e| format!("metadata_json is not valid JSON: {e}"))?;
    }
    let mut req = req;
    let mut info = RunInfo {
        run_id: run_id.clone(),
        agent_id: req.agent_id.clone(),
        control_mode: mode.as_str().to_owned(),
        game_id: req.game_id.clone(),
        seed: req.seed,
        metadata_json: req.metadata_json.clone(),
        ..Default::default()
    };
    if !req.equip.is_empty() || req.evaluate.is_some() {
        cfg.policies.prepare_submission(&mut req, &mut info).await?;
    }
    let ticket = cfg.queue.admit()?;
    if let Err(e) = registry.insert_pending(info).await {
        // Its slot or place goes back; a run queued meanwhile may take the slot.
        drop(ticket);
        start_waiting(registry, cfg);
        return Err(e.into());
    }
    match ticket {
        Ticket::Run(slot) => launch(registry, cfg, run_id, req, slot).await,
        Ticket::Queue(place) => {
            tracing::info!(run_id = %run_id, "every worker slot is taken: the run waits as pending");
            cfg.queue.push(
                place,
                Queued {
                    run_id: run_id.clone(),
                    req,
                },
            );
            start_waiting(registry, cfg);
            Ok(run_id)
        }
    }
}

/// Cancels a run: one still waiting for a slot leaves the queue and is cancelled (with a stored
/// `RunCompleted`, which ends its live views); otherwise as [`Registry::cancel`].
pub async fn cancel(
    registry: &Registry,
    cfg: &Arc<DispatchConfig>,
    run_id: &str,
) -> Result<bool, String> {
    let waiting = cfg.queue.remove(run_id);
    let cancelled = registry.cancel(run_id).await?;
    if waiting && cancelled {
        registry
            .complete(
                run_id,
                CompletionStatus::Cancelled,
                "cancelled before it started".into(),
                None,
                None,
            )
            .await;
    }
    Ok(cancelled)
}

/// Starts the oldest waiting runs in the free slots (skipping runs no longer pending, e.g.
/// cancelled by a heartbeat rule), each in its own task.
fn start_waiting(registry: &Registry, cfg: &Arc<DispatchConfig>) {
    loop {
        let ready = cfg.queue.fill();
        if ready.is_empty() {
            return;
        }
        let mut skipped = false;
        for (q, slot) in ready {
            let still_pending = registry
                .get(&q.run_id)
                .is_some_and(|i| i.state == RunState::Pending as i32);
            if !still_pending {
                drop(slot); // no hook yet: the loop hands it on
                skipped = true;
                continue;
            }
            let registry = registry.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let _ = launch(&registry, &cfg, q.run_id, q.req, slot).await;
            });
        }
        if !skipped {
            return;
        }
    }
}

/// Starts the worker of a registered pending run in `slot`; when the worker exits (or cannot
/// be started) the slot passes to the next waiting run.
async fn launch(
    registry: &Registry,
    cfg: &Arc<DispatchConfig>,
    run_id: String,
    req: SubmitRunRequest,
    mut slot: Slot,
) -> Result<String, SubmitError> {
    {
        let registry = registry.clone();
        let cfg = cfg.clone();
        slot.on_free(move |_| start_waiting(&registry, &cfg));
    }
    spawn_worker(registry, cfg, run_id, req, slot).await
}

async fn spawn_worker(
    registry: &Registry,
    cfg: &Arc<DispatchConfig>,
    run_id: String,
    req: SubmitRunRequest,
    slot: Slot,
) -> Result<String, SubmitError> {
    let command = req.command.clone().unwrap_or_default();
    let mode = ControlMode::from_wire(&req.control_mode).map_err(|e| e.to_string())?;
    let run_dir = registry.var_dir.join("runs").join(&run_id);
    let queue_dir = registry.var_dir.join("queues").join(&run_id);
    let mut argv: Vec<String> = Vec::new();
    let program = if command.legacy_jsonl {
        argv.extend(["--run-id".into(), run_id.clone()]);
        if !req.agent_id.is_empty() {
            argv.extend(["--agent-id".into(), req.agent_id.clone()]);
        }
        argv.push("--".into());
        argv.extend(command.argv.iter().cloned());
        cfg.proxy_exe.to_string_lossy().into_owned()
    } else {
        argv.extend(command.argv[1..].iter().cloned());
        command.argv[0].clone()
    };
    let mut cmd = Command::new(&program);
    cmd.args(&argv)
        .envs(&command.env)
        .env("GYM_TELEMETRY_ENDPOINT", &cfg.endpoint)
        .env("GYM_TELEMETRY_RUN_ID", &run_id)
        .env("GYM_TELEMETRY_AGENT_ID", &req.agent_id)
        .env("GYM_TELEMETRY_CONTROL_MODE", mode.as_str())
        .env("GYM_TELEMETRY_GAME_ID", &req.game_id)
        .env("GYM_TELEMETRY_QUEUE_DIR", &queue_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(seed) = req.seed {
        cmd.env("GYM_TELEMETRY_SEED", seed.to_string());
    }
    // A worker credential scoped to this run, through the environment (never argv, which every
    // local account can read in `ps`). The operator's file is not the worker's to find.
    cmd.env_remove("GYM_TELEMETRY_AUTH_TOKEN")
        .env_remove("GYM_TELEMETRY_AUTH_TOKEN_FILE");
    if let Some(token) = cfg.credentials.worker_token(&run_id) {
        cmd.env("GYM_TELEMETRY_AUTH_TOKEN", token);
    }
    // Like the endpoint, the TLS settings are the daemon's to give: values inherited from the
    // daemon's own environment or the request would point workers at the wrong trust.
    cmd.env_remove("GYM_TELEMETRY_TLS_CA_FILE")
        .env_remove("GYM_TELEMETRY_TLS_DOMAIN");
    if let Some(tls) = &cfg.tls {
        cmd.env("GYM_TELEMETRY_TLS_CA_FILE", &tls.ca_file);
        if let Some(domain) = &tls.domain {
            cmd.env("GYM_TELEMETRY_TLS_DOMAIN", domain);
        }
    }
    if !command.working_dir.is_empty() {
        cmd.current_dir(&command.working_dir);
    }
    if let Err(e) = security::private_dir(&run_dir) {
        tracing::warn!(run_id = %run_id, error = %e, "cannot create the run's log directory");
    }
    // Equipped policies: verified again now, handed over in a file the worker re-verifies.
    let info = registry.get(&run_id).unwrap_or_default();
    match cfg.policies.worker_env(&run_dir, &info).await {
        Ok(env) => {
            cmd.envs(env);
        }
        Err(e) => {
            let reason = format!("equipped policy refused at start: {e}");
            tracing::warn!(run_id = %run_id, %reason);
            registry.fail(&run_id, reason).await;
            return Ok(run_id);
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("spawn error: cannot start {program:?}: {e}");
            tracing::warn!(run_id = %run_id, %reason);
            registry.fail(&run_id, reason).await;
            return Ok(run_id);
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let cancel = Arc::new(Notify::new());
    // Kept in the registry, so a restarted daemon finds this process again.
    let worker = child
        .id()
        .map(|pid| (pid, crate::process::start_ticks(pid).unwrap_or(0)));
    let started = registry
        .mark_running(
            &run_id,
            ProcessControl {
                cancel: cancel.clone(),
                stop_reason: None,
                stop_requested: false,
            },
            worker,
        )
        .await;
    if !started {
        // Cancelled while it was being started: it never runs.
        signal_group(pgid, Signal::SIGKILL);
    }
    let log_path = run_dir.join("worker.log");
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let max_log = cfg.max_log_bytes;
    let logs = tokio::spawn(capture_logs(log_path, stdout, stderr, max_log));

    let registry = registry.clone();
    let grace = cfg.grace;
    let id = run_id.clone();
    let drain_cfg = cfg.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s,
            () = cancel.notified() => {
                signal_group(pgid, Signal::SIGTERM);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        tracing::warn!(run_id = %id, "worker ignored SIGTERM, sending SIGKILL");
                        signal_group(pgid, Signal::SIGKILL);
                        child.wait().await
                    }
                }
            }
        };
        // Whatever the leader did, leave no straggler in its group.
        signal_group(pgid, Signal::SIGKILL);
        // The log is complete before the run is reported finished (bounded: a descendant that
        // left the process group could hold the pipes open).
        let _ = tokio::time::timeout(LOG_DRAIN, logs).await;
        // Its queue's undelivered tail goes in before its completion (a server that is stopping
        // leaves it for the next start-up's drain).
        if !drain_cfg.queue.stopping() {
            crate::drain::drain_run(
                &drain_cfg,
                &registry.var_dir,
                &id,
                drain_cfg.queue.metrics(),
            )
            .await;
        }
        if let Some(info) = registry.get(&id) {
            drain_cfg.policies.record_evaluation(&registry, &info).await;
        }
        on_exit(&registry, &id, status).await;
        drop(slot); // the next waiting run may start now
    });
    Ok(run_id)
}

fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 0 {
        // ESRCH (the group is gone) is expected after the leader exits.
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), signal);
    }
}

async fn on_exit(
    registry: &Registry,
    run_id: &str,
    status: std::io::Result<std::process::ExitStatus>,
) {
    let stop = registry.stop_request(run_id);
    let (state, completion, reason, code, sig) = match status {
        Err(e) => (
            RunState::Failed,
            CompletionStatus::Failed,
            format!("cannot wait for the worker: {e}"),
            None,
            None,
        ),
        Ok(st) => {
            let code = st.code();
            let sig = st.signal();
            match (stop, code) {
                (Some(None), _) => (
                    RunState::Cancelled,
                    CompletionStatus::Cancelled,
                    "cancelled by request".to_owned(),
                    code,
                    sig,
                ),
                (Some(Some(reason)), _) => (
                    RunState::Failed,
                    CompletionStatus::Failed,
                    reason,
                    code,
                    sig,
                ),
                (None, Some(0)) => (
                    RunState::Completed,
                    CompletionStatus::Succeeded,
                    String::new(),
                    code,
                    sig,
                ),
                (None, Some(c)) => (
                    RunState::Failed,
                    CompletionStatus::Failed,
                    format!("worker exited with code {c}"),
                    code,
                    sig,
                ),
                (None, None) => (
                    RunState::Failed,
                    CompletionStatus::Failed,
                    format!("worker killed by signal {}", sig.unwrap_or(0)),
                    code,
                    sig,
                ),
            }
        }
    };
    tracing::info!(run_id, state = ?state, %reason, "worker exited");
    registry
        .finish(run_id, state, reason.clone(), code, sig)
        .await;
    registry
        .complete(run_id, completion, reason, code, sig)
        .await;
}

async fn capture_logs(
    path: PathBuf,
    stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    max: u64,
) {
    let opened = security::private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path);
    let file = match opened.map(tokio::fs::File::from_std) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the worker log");
            // Still drain the pipes so the worker never blocks on a full pipe.
            let a = tokio::spawn(drain(stdout));
            let b = tokio::spawn(drain(stderr));
            let _ = tokio::join!(a, b);
            return;
        }
    };
    let file = Arc::new(tokio::sync::Mutex::new((file, 0u64, 0u64)));
    let copy = |reader: Option<Box<dyn AsyncRead + Unpin + Send>>| {
        let file = file.clone();
        async move {
            let Some(mut reader) = reader else { return };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut guard = file.lock().await;
                let (f, written, dropped) = &mut *guard;
                let room = max.saturating_sub(*written);
                let take = (n as u64).min(room) as usize;
                if take > 0 && f.write_all(&buf[..take]).await.is_ok() {
                    *written += take as u64;
                }
                *dropped += (n - take) as u64;
            }
        }
    };
    let out: Option<Box<dyn AsyncRead + Unpin + Send>> =
        stdout.map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>);
    let err: Option<Box<dyn AsyncRead + Unpin + Send>> =
        stderr.map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>);
    tokio::join!(copy(out), copy(err));
    let mut guard = file.lock().await;
    let (f, _, dropped) = &mut *guard;
    if *dropped > 0 {
        let _ = f
            .write_all(
                format!(
                    "\n[gym-telemetry: {dropped} more bytes not kept, log capped at {max} bytes]\n"
                )
                .as_bytes(),
            )
            .await;
    }
    let _ = f.flush().await;
}

async fn drain(reader: Option<impl AsyncRead + Unpin>) {
    if let Some(mut r) = reader {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_run_ids_pass_the_core_rule() {
        for _ in 0..100 {
            let id = new_run_id();
            assert!(telemetry_core::check_run_id(&id).is_ok(), "{id}");
        }
    }
}
