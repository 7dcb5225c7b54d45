//! Rust `tracing` events (the shim's connection errors, drops, queue recovery) to Python's
//! `logging`, under the logger `"gym_telemetry"`.
//!
//! The events happen on the shim's sender thread, which must never wait for the GIL, so a
//! `tracing` layer only formats each event into a bounded queue ([`CAPACITY`] events; when full,
//! new events are dropped and counted). The queue is emptied into `logging` by the next call a
//! Python thread makes into the binding (a step checks one atomic flag; flush, close and stats
//! always drain). Which events are captured: `info` and above from the telemetry crates, `warn`
//! and above from the rest, or what `GYM_TELEMETRY_LOG` says (`tracing` target syntax, e.g.
//! `telemetry_shim=debug`). Python's own logger level filters further.
//!
//! [`RateLimit`] bounds the binding's own warnings (hook errors, failed calls) the same way the
//! shim bounds its drop warnings.

use pyo3::{intern, prelude::*, sync::PyOnceLock};
use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::{Duration, Instant},
};
use tracing::{field::Field, Level, Subscriber};
use tracing_subscriber::{
    filter::Targets,
    layer::{Context, SubscriberExt},
    util::SubscriberInitExt,
    Layer,
};

/// Most events waiting for a Python thread.
pub const CAPACITY: usize = 256;

/// Python `logging` levels.
const DEBUG: i32 = 10;
const INFO: i32 = 20;
const WARNING: i32 = 30;
const ERROR: i32 = 40;

struct Event {
    level: i32,
    text: String,
}

static QUEUE: Mutex<VecDeque<Event>> = Mutex::new(VecDeque::new());
static PENDING: AtomicBool = AtomicBool::new(false);
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);
static DROPPED_UNREPORTED: AtomicU64 = AtomicU64::new(0);

/// Events dropped because the queue was full, since the module was loaded.
pub fn dropped_total() -> u64 {
    DROPPED_TOTAL.load(Relaxed)
}

fn push(level: i32, text: String) {
    let mut q = match QUEUE.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if q.len() >= CAPACITY {
        DROPPED_TOTAL.fetch_add(1, Relaxed);
        DROPPED_UNREPORTED.fetch_add(1, Relaxed);
        return;
    }
    q.push_back(Event { level, text });
    PENDING.store(true, Relaxed);
}

#[derive(Default)]
struct Visitor {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Visitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

struct Bridge;

impl<S: Subscriber> Layer<S> for Bridge {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => ERROR,
            Level::WARN => WARNING,
            Level::INFO => INFO,
            _ => DEBUG,
        };
        let mut v = Visitor::default();
        event.record(&mut v);
        push(
            level,
            format!("{}: {}{}", meta.target(), v.message, v.fields),
        );
    }
}

/// Installs the bridge as the process's `tracing` subscriber (once; a no-op if one is set).
pub fn install() {
    let default = Targets::new()
        .with_target("telemetry_shim", Level::INFO)
        .with_target("telemetry_core", Level::INFO)
        .with_target("gym_telemetry_native", Level::INFO)
        .with_default(Level::WARN);
    let filter = std::env::var("GYM_TELEMETRY_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or(default);
    let _ = tracing_subscriber::registry()
        .with(Bridge.with_filter(filter))
        .try_init();
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import(intern!(py, "logging"))?
                    .call_method1(intern!(py, "getLogger"), ("gym_telemetry",))?
                    .unbind(),
            )
        })
        .map(|l| l.bind(py))
}

/// Logs `text` to the `"gym_telemetry"` logger; `exc` (an exception) adds its traceback.
/// Failures of the logging machinery itself are ignored: telemetry must not fail a step.
pub fn log(py: Python<'_>, level: i32, text: &str, exc: Option<&PyErr>) {
    let Ok(logger) = logger(py) else { return };
    let kwargs = exc.and_then(|e| {
        let d = pyo3::types::PyDict::new(py);
        d.set_item(intern!(py, "exc_info"), e.value(py)).ok()?;
        Some(d)
    });
    let _ = logger.call_method(
        intern!(py, "log"),
        (level, intern!(py, "%s"), text),
        kwargs.as_ref(),
    );
}

/// Logs a warning.
pub fn warn(py: Python<'_>, text: &str, exc: Option<&PyErr>) {
    log(py, WARNING, text, exc);
}

/// Empties the queue into `logging` if anything is waiting (cheap when nothing is).
pub fn drain(py: Python<'_>) {
    if !PENDING.load(Relaxed) || !PENDING.swap(false, Relaxed) {
        return;
    }
    let events: Vec<Event> = {
        let mut q = match QUEUE.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        q.drain(..).collect()
    };
    for e in &events {
        log(py, e.level, &e.text, None);
    }
    let lost = DROPPED_UNREPORTED.swap(0, Relaxed);
    if lost > 0 {
        warn(
            py,
            &format!("{lost} telemetry log events were dropped (more than {CAPACITY} waiting)"),
            None,
        );
    }
}

/// At most [`RateLimit::BURST`] messages, then one per [`RateLimit::INTERVAL`] with the count
/// of the ones held back.
pub struct RateLimit {
    state: Mutex<(u64, Option<Instant>, u64)>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            state: Mutex::new((0, None, 0)),
        }
    }
}

impl RateLimit {
    const BURST: u64 = 10;
    const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(held_back)` when a message may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (logged, last, held) = &mut *g;
        let now = Instant::now();
        let ok =
            *logged < Self::BURST || last.is_none_or(|t| now.duration_since(t) >= Self::INTERVAL);
        if ok {
            *logged += 1;
            *last = Some(now);
            let h = *held;
            *held = 0;
            Some(h)
        } else {
            *held += 1;
            None
        }
    }
}
