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
    pb::{CompletionStatus, RunCompleted, RunInfo, RunState, SubmitRunRequest},
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

/// Validates a submission, registers the run as pending and starts its worker. Returns the run
/// id. Errors are messages for `INVALID_ARGUMENT` (bad request) — a spawn failure is not an
/// error here: the run is registered and marked failed with the reason.
pub async fn submit(
    registry: &Registry,
    cfg: &Arc<DispatchConfig>,
    req: SubmitRunRequest,
) -> Result<String, String> {
    let command = req.command.clone().unwrap_or_default();
    if command.argv.is_empty() || command.argv[0].is_empty() {
        return Err("command.argv must name a program".into());
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
    let info = RunInfo {
        run_id: run_id.clone(),
        agent_id: req.agent_id.clone(),
        control_mode: mode.as_str().to_owned(),
        game_id: req.game_id.clone(),
        seed: req.seed,
        metadata_json: req.metadata_json.clone(),
        ..Default::default()
    };
    registry.insert_pending(info).await?;

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
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("spawn error: cannot start {program:?}: {e}");
            tracing::warn!(run_id = %run_id, %reason);
            registry
                .finish(&run_id, RunState::Failed, reason.clone(), None, None)
                .await;
            record_completion(
                registry,
                &run_id,
                CompletionStatus::Failed,
                reason,
                None,
                None,
            )
            .await;
            return Ok(run_id);
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let cancel = Arc::new(Notify::new());
    registry
        .mark_running(
            &run_id,
            ProcessControl {
                cancel: cancel.clone(),
                stop_reason: None,
                stop_requested: false,
            },
        )
        .await;
    let log_path = run_dir.join("worker.log");
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let max_log = cfg.max_log_bytes;
    let logs = tokio::spawn(capture_logs(log_path, stdout, stderr, max_log));

    let registry = registry.clone();
    let grace = cfg.grace;
    let id = run_id.clone();
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
        on_exit(&registry, &id, status).await;
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
    record_completion(registry, run_id, completion, reason, code, sig).await;
}

/// Stores a `RunCompleted` for the run unless one (the worker's own) is already stored; storing
/// it ends every live view of the run.
pub async fn record_completion(
    registry: &Registry,
    run_id: &str,
    status: CompletionStatus,
    reason: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
) {
    if registry.completion_recorded(run_id) {
        return;
    }
    registry.set_completion_recorded(run_id);
    let failed = status == CompletionStatus::Failed;
    let done = RunCompleted {
        run_id: run_id.to_owned(),
        timestamp: Some(timestamp::now()),
        status: status as i32,
        exit_code,
        signal,
        error: if failed {
            reason.clone()
        } else {
            String::new()
        },
        reason: if failed { String::new() } else { reason },
        ..Default::default()
    };
    if let Err(e) = registry
        .writer()
        .append(vec![done.into()], Vec::new())
        .await
    {
        tracing::warn!(run_id, error = %e, "run_completed not stored");
    }
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
