//! # gym-telemetry-daemon
//!
//! The reference daemon: a thin shell that wires the libraries together and serves them.
//!
//! ```text
//! shim ─Ingest─▶ validate ─▶ writer thread (telemetry-store: one transaction per group)
//!                                 │ commit, then ack, then publish
//!                                 ▼
//!                       telemetry-hub ─▶ Query.StreamRun* (catch-up from the store, then live)
//! RunControl ─▶ registry + dispatcher (worker processes in their own process groups)
//! gymgui.trainer.TrainerService ─▶ the same store, hub and registry (predecessor's clients)
//! ```
//!
//! Everything a long-running process needs is here too: one instance per var dir (lock + PID
//! file), restart recovery (interrupted runs failed, hub buffers warmed), health and reflection
//! services, Prometheus metrics on a separate loopback port, periodic WAL checkpoints and health
//! log lines, bearer-token auth for non-loopback binds, optional TLS, and a graceful shutdown that
//! stops workers, flushes, checkpoints and releases the lock.

pub mod auth;
pub mod catchup;
pub mod checkpointer;
pub mod cli;
pub mod control;
pub mod demo;
pub mod dispatch;
pub mod ingest;
pub mod legacy;
pub mod lock;
pub mod metrics;
pub mod query;
pub mod runs;
pub mod server;
pub mod writer;

pub use server::{
    start, DaemonConfig, DaemonError, RunningDaemon, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN,
};
