//! What the proxy does with each line, and the run lifecycle it reports for the worker.
//!
//! Lines become records through the core JSONL contract; records get the proxy's run id (the
//! daemon's name for the run wins over whatever the worker calls it) and go to the shim. Lines
//! that are not JSON are the worker's own output and are passed through. Legacy workers rarely
//! say when they start or how they ended, so the proxy does: a `run_started` before the first
//! record unless the worker sent one, and a `run_completed` from the exit status unless the
//! worker sent its own.

use std::{io::Write, time::Duration};
use telemetry_core::{
    jsonl::{JsonlError, RunContext},
    pb::{CompletionStatus, Record, RunCompleted, RunStarted},
    RecordKind,
};
use telemetry_shim::{ratelimit::RateLimited, Telemetry};

/// Counts of what the proxy saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// JSONL lines that became records accepted by the shim.
    pub parsed: u64,
    /// Lines refused: bad JSONL (with a line number in the log), too long, or refused by the
    /// shim (invalid in dry-run mode, queue full).
    pub rejected: u64,
    /// Stdout lines that were not JSON, passed through to the proxy's stdout.
    pub passed_through: u64,
    /// Lines the worker wrote to stderr (passed through to the proxy's stderr).
    pub stderr_lines: u64,
    /// Records the proxy made itself (`run_started`, `run_completed`).
    pub synthesized: u64,
}

/// How the worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal; `forwarded` when the proxy passed it on from its own caller.
    Signal { signal: i32, forwarded: bool },
    /// Never ran.
    SpawnFailed,
}

pub(crate) struct Session<'a> {
    shim: &'a Telemetry,
    run_id: Option<String>,
    agent_id: Option<String>,
    argv: Vec<String>,
    lifecycle: bool,
    context: RunContext,
    saw_started: bool,
    saw_completed: bool,
    last_run_id: Option<String>,
    pub counts: LineCounts,
    reject_log: RateLimited,
}

impl<'a> Session<'a> {
    /// `lifecycle`: report the worker's start and end (a child process; not a replayed file).
    pub fn new(
        shim: &'a Telemetry,
        run_id: Option<String>,
        agent_id: Option<String>,
        argv: Vec<String>,
        lifecycle: bool,
    ) -> Self {
        Session {
            shim,
            run_id,
            agent_id,
            argv,
            lifecycle,
            context: RunContext::new(),
            saw_started: false,
            saw_completed: false,
            last_run_id: None,
            counts: LineCounts::default(),
            reject_log: RateLimited::new(Duration::from_secs(5)),
        }
    }

    fn reject(&mut self, line_no: u64, reason: &dyn std::fmt::Display) {
        self.counts.rejected += 1;
        if let Some(held) = self.reject_log.allow() {
            tracing::warn!(line = line_no, %reason, rejected_since_last_log = held,
                "gym-telemetry-proxy: line rejected");
        }
    }

    /// A stdout line (without its `\n`) from a child.
    pub fn on_line(&mut self, line: &[u8], line_no: u64, out: &mut impl Write) {
        if line.iter().all(u8::is_ascii_whitespace) {
            self.pass_through(line, out);
            return;
        }
        match telemetry_core::jsonl::parse_line(line, line_no) {
            Ok(mut record) => {
                self.context.apply(&mut record);
                self.on_record(record, line_no);
            }
            Err(e) => self.on_error(e, Some(line), out),
        }
    }

    /// A line the core reader or parser refused (`raw`: the line's bytes, when known).
    pub fn on_error(&mut self, e: JsonlError, raw: Option<&[u8]>, out: &mut impl Write) {
        match (e, raw) {
            (JsonlError::NotJson { text, .. }, _) => self.pass_through(text.as_bytes(), out),
            (JsonlError::InvalidUtf8 { .. }, Some(raw)) => self.pass_through(raw, out),
            (e, _) => {
                let line = e.line().unwrap_or(0);
                self.reject(line, &e);
            }
        }
    }

    /// A line longer than the limit.
    pub fn on_too_long(&mut self, line_no: u64, len: u64, max: usize) {
        self.reject(
            line_no,
            &JsonlError::TooLong {
                line: line_no,
                len,
                max,
            },
        );
    }

    fn pass_through(&mut self, text: &[u8], out: &mut impl Write) {
        self.counts.passed_through += 1;
        let _ = out.write_all(text).and_then(|()| out.write_all(b"\n"));
        let _ = out.flush();
    }

    /// A record parsed from a line.
    pub fn on_record(&mut self, mut record: Record, line_no: u64) {
        if let Some(id) = &self.run_id {
            record.set_run_id(id);
        }
        if !record.run_id().is_empty() {
            self.last_run_id = Some(record.run_id().to_owned());
        }
        match record.record_kind() {
            Some(RecordKind::RunStarted) => self.saw_started = true,
            Some(RecordKind::RunCompleted) => self.saw_completed = true,
            _ => self.ensure_started(),
        }
        match self.shim.record(record) {
            Ok(()) => self.counts.parsed += 1,
            Err(e) => self.reject(line_no, &e),
        }
    }

    fn run_id_for_lifecycle(&self) -> String {
        self.run_id
            .clone()
            .or_else(|| self.last_run_id.clone())
            .unwrap_or_else(|| format!("proxy-{}", uuid::Uuid::new_v4()))
    }

    fn synthesize(&mut self, record: Record) {
        match self.shim.record(record) {
            Ok(()) => self.counts.synthesized += 1,
            Err(e) => tracing::warn!(error = %e, "gym-telemetry-proxy: lifecycle record refused"),
        }
    }

    fn ensure_started(&mut self) {
        if !self.lifecycle || self.saw_started {
            return;
        }
        self.saw_started = true;
        let run_id = self.run_id_for_lifecycle();
        self.last_run_id.get_or_insert_with(|| run_id.clone());
        let config = serde_json::json!({ "argv": self.argv, "started_by": "gym-telemetry-proxy" });
        self.synthesize(
            RunStarted {
                run_id,
                agent_id: self.agent_id.clone().unwrap_or_default(),
                config_json: config.to_string(),
                ..RunStarted::default()
            }
            .into(),
        );
    }

    /// The worker is gone: report its end unless it did.
    pub fn finish(&mut self, exit: Exit) {
        if !self.lifecycle {
            return;
        }
        self.ensure_started();
        if self.saw_completed {
            return;
        }
        let mut done = RunCompleted {
            run_id: self.run_id_for_lifecycle(),
            ..RunCompleted::default()
        };
        match exit {
            Exit::Code(0) => done.status = CompletionStatus::Succeeded.into(),
            Exit::Code(code) => {
                done.status = CompletionStatus::Failed.into();
                done.exit_code = Some(code);
                done.error = format!("worker exited with code {code}");
            }
            Exit::Signal { signal, forwarded } => {
                done.status = if forwarded {
                    CompletionStatus::Cancelled
                } else {
                    CompletionStatus::Failed
                }
                .into();
                done.signal = Some(signal);
                done.error = format!("worker killed by signal {signal}");
                if forwarded {
                    done.reason = "signal forwarded by gym-telemetry-proxy".into();
                }
            }
            Exit::SpawnFailed => {
                done.status = CompletionStatus::Failed.into();
                done.error = "the worker could not be started".into();
            }
        }
        self.saw_completed = true;
        self.synthesize(done.into());
    }
}
