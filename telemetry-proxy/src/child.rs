//! Running the worker: pipes drained concurrently, signals forwarded, exit status mapped.
//!
//! Reading only stdout while the worker fills a 64 KiB stderr pipe is the classic proxy
//! deadlock; here stderr is copied by its own task while stdout is parsed, so the worker never
//! waits on us for long. If the worker exits but something it started keeps stdout open, the
//! proxy stops reading after a grace period instead of hanging.

use super::{
    lines::{Line, LineReader},
    session::{Exit, LineCounts, Session},
    ProxyArgs, ProxyError,
};
use nix::{sys::signal, unistd::Pid};
use std::{io::Write, os::unix::process::ExitStatusExt, process::Stdio, time::Duration};
use telemetry_shim::Telemetry;
use tokio::{
    io::{AsyncRead, AsyncReadExt, BufReader},
    signal::unix::{signal as on_signal, SignalKind},
    time::Instant,
};

/// How long stdout may stay open after the worker exited.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Copies the worker's stderr to ours; returns the number of lines.
async fn pass_stderr<R: AsyncRead + Unpin>(mut from: R) -> u64 {
    let mut buf = vec![0u8; 16 * 1024];
    let (mut lines, mut partial) = (0u64, false);
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let chunk = &buf[..n];
                lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                partial = chunk.last() != Some(&b'\n');
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(chunk);
                let _ = err.flush();
            }
        }
    }
    lines + u64::from(partial)
}

fn forward(pid: Option<u32>, sig: signal::Signal) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    if let Err(e) = signal::kill(Pid::from_raw(pid), sig) {
        tracing::warn!(%sig, error = %e, "gym-telemetry-proxy: could not forward the signal");
    }
}

/// Runs the worker to its end; returns the line counts and the exit code to use.
pub(super) async fn supervise(
    shim: &Telemetry,
    args: &ProxyArgs,
) -> Result<(LineCounts, i32), ProxyError> {
    let argv = &args.command;
    let mut session = Session::new(
        shim,
        args.run_id.clone(),
        args.agent_id.clone(),
        argv.clone(),
        true,
    );
    let Some((program, rest)) = argv.split_first() else {
        session.finish(Exit::SpawnFailed);
        return Ok((session.counts, 127));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if shim.is_enabled() {
        // The proxy holds the queue directory's lock; a worker that links the shim must not
        // try to take the same directory.
        command.env_remove("GYM_TELEMETRY_QUEUE_DIR");
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(program, error = %e, "gym-telemetry-proxy: cannot start the worker");
            eprintln!("gym-telemetry-proxy: cannot start {program}: {e}");
            session.finish(Exit::SpawnFailed);
            return Ok((session.counts, 127));
        }
    };
    let pid = child.id();
    let mut terminate = on_signal(SignalKind::terminate()).map_err(ProxyError::Runtime)?;
    let mut interrupt = on_signal(SignalKind::interrupt()).map_err(ProxyError::Runtime)?;
    let stderr_task = child.stderr.take().map(|e| tokio::spawn(pass_stderr(e)));
    let mut lines = child
        .stdout
        .take()
        .map(|o| LineReader::new(BufReader::with_capacity(64 * 1024, o), args.max_line_bytes));
    let mut status = None;
    let mut forwarded = None;
    let mut grace: Option<Instant> = None;
    let mut line_no = 0u64;
    let stdout = std::io::stdout();
    loop {
        if status.is_some() && lines.is_none() {
            break;
        }
        let grace_at = grace.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            line = async { match lines.as_mut() { Some(l) => l.next_line().await, None => std::future::pending().await } } => {
                match line {
                    Ok(Some(Line::Text(text))) => {
                        line_no += 1;
                        session.on_line(&text, line_no, &mut stdout.lock());
                    }
                    Ok(Some(Line::TooLong { len })) => {
                        line_no += 1;
                        session.on_too_long(line_no, len, args.max_line_bytes);
                    }
                    Ok(None) => lines = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "gym-telemetry-proxy: reading the worker's stdout failed");
                        lines = None;
                    }
                }
            }
            st = child.wait(), if status.is_none() => {
                status = Some(st);
                grace = Some(Instant::now() + EXIT_GRACE);
            }
            _ = terminate.recv() => {
                forward(pid, signal::Signal::SIGTERM);
                forwarded = Some(signal::Signal::SIGTERM as i32);
            }
            _ = interrupt.recv() => {
                forward(pid, signal::Signal::SIGINT);
                forwarded = Some(signal::Signal::SIGINT as i32);
            }
            _ = tokio::time::sleep_until(grace_at), if grace.is_some() && lines.is_some() => {
                tracing::warn!("gym-telemetry-proxy: the worker exited but its stdout stays open; stop reading");
                lines = None;
            }
        }
    }
    if let Some(task) = stderr_task {
        match tokio::time::timeout(EXIT_GRACE, task).await {
            Ok(Ok(n)) => session.counts.stderr_lines = n,
            _ => {
                tracing::warn!("gym-telemetry-proxy: the worker's stderr stays open; stop copying")
            }
        }
    }
    let exit = match status {
        Some(Ok(st)) => match (st.code(), st.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal {
                signal: sig,
                forwarded: forwarded == Some(sig),
            },
            (None, None) => Exit::Code(1),
        },
        Some(Err(e)) => {
            tracing::error!(error = %e, "gym-telemetry-proxy: waiting for the worker failed");
            Exit::Code(1)
        }
        None => Exit::Code(1),
    };
    session.finish(exit);
    let code = match exit {
        Exit::Code(c) => c,
        Exit::Signal { signal, .. } => 128 + signal,
        Exit::SpawnFailed => 127,
    };
    Ok((session.counts, code))
}
