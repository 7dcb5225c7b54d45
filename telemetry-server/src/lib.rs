//! # telemetry-server
//!
//! gym-telemetry's server as a library: the ingest pipeline, durable catch-up, the gRPC services
//! (ours and the predecessor's), run control, and everything a long-running process needs. The
//! `gym-telemetry-daemon` binary is a command-line shell over [`start`]; a Rust application
//! embeds the same server on its own runtime.
//!
//! ```text
//! gRPC Ingest ─┐
//! Publisher ───┴▶ validate ─▶ pipeline thread (one BackendWriter; group commit; fences)
//!                                 │ commit, then ack, then publish (commit order)
//!                                 ▼
//!                    telemetry-hub ─▶ Query.StreamRun* / ServerHandle::subscribe
//!                        ▲            (catch-up from the store, then live)
//!                        └── StoreCatchUp (BackendReader)
//! RunControl ─▶ registry + dispatcher (workers in their own process groups)
//! gymgui.trainer.TrainerService ─▶ the same publisher, hub and registry
//! ```
//!
//! ## Guarantees
//!
//! - **An ack means durable.** A batch is acknowledged, with each producer's durable watermark,
//!   only after its transaction committed. A record at or below its producer's watermark is a
//!   duplicate and is stored once ([`telemetry_store::backend`]).
//! - **Nothing is published that is not stored**, and the hub sees records in commit order.
//! - **No producer overtakes its own failure**: after a failed batch, no later batch of that
//!   producer commits until the failed records are resent ([`WriteError::Fenced`]). The stream
//!   fails with `UNAVAILABLE`, and the shim resends from its last ack.
//! - **One retry policy** ([`RetryPolicy`]) for retryable store errors; backends try once.
//! - **Bounded everywhere**: the writer queue, each stream's window, hub rings and subscriber
//!   queues, fences, the run registry; and per client: stream message bytes, HTTP/2 streams
//!   and live streams per connection, WatchRuns streams, running and pending workers, the
//!   size of a submission, producer seq jumps (docs/ARCHITECTURE.md lists each limit and full
//!   policy).
//! - **Structural shutdown** ([`ServerHandle::shutdown`]): stop serving and close live streams,
//!   stop workers, stop background tasks and upkeep, final checkpoint, release the lock.
//!
//! ## Embedding
//!
//! ```
//! use telemetry_server::{start, Delivery, ServerConfig, StreamKind, SubscribeOptions};
//! use telemetry_core::pb::{IngestBatch, RunStep};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let var = tempfile::tempdir().unwrap();
//! let server = start(ServerConfig::ephemeral(var.path())).await?;
//! // Follow run "r1" live (add `.since(0)` to catch up from the store first).
//! let mut live = server.subscribe(SubscribeOptions::run("r1", StreamKind::Steps))?;
//! let step = RunStep { run_id: "r1".into(), producer_id: "me".into(), producer_seq: 1,
//!                      ..Default::default() };
//! let ack = server.publisher()
//!     .publish(IngestBatch { batch_id: 1, records: vec![step.into()] }).await?;
//! assert_eq!(ack.stored, 1); // durable before it is acknowledged ...
//! match live.next().await {  // ... and published after
//!     Some(Delivery::Records(records)) => assert_eq!(records[0].seq_id(), 1),
//!     other => panic!("{other:?}"),
//! }
//! server.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! `examples/embed.rs` is the same as a complete program.
//!
//! ## Layout
//!
//! Modules are private; imports point one way: `start` → services (`ingest`, `query`,
//! `control`, `legacy`, which uses `legacy_config` for the predecessor's TrainRunConfig and
//! `legacy_runs` for its view of runs) → `publish` → `pipeline` (→ `fence`, `commit`) and `runs`/`dispatch` →
//! `metrics`. Nothing below imports `start`.

mod auth;
mod catchup;
mod checkpointer;
mod config;
mod control;
mod dispatch;
mod drain;
mod error;
mod frames;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod housekeeping;
mod ingest;
mod ingest_limits;
mod legacy;
mod legacy_config;
mod legacy_runs;
mod local;
mod lock;
mod metrics;
mod owners;
mod pipeline;
mod policies;
mod process;
mod publish;
mod query;
mod runs;
mod security;
mod start;
mod workqueue;

pub use auth::{AuthError, Principal};
pub use config::{
    default_demo_exe, default_proxy_exe, AuthConfig, ServerConfig, TlsFiles, DEFAULT_LISTEN,
    DEFAULT_METRICS_LISTEN, PROXY_EXE_NAME, SHUTDOWN_DRAIN,
};
pub use dispatch::{new_run_id, SubmitError, SubmitLimits};
pub use error::ServerError;
pub use handle::ServerHandle;
pub use ingest_limits::IngestLimits;
pub use legacy_config::{
    canonical_json, derived_run_id, iso8601, parse_train_run_config, ConfigError, TrainRunConfig,
    WorkerSpec,
};
pub use legacy_runs::{LegacyOptions, DEMO_EXE_NAME, WORKER_CONFIG_FILE};
pub use local::LocalAccess;
pub use lock::LockError;
pub use pipeline::{RetryPolicy, WriteError, MAX_FENCES, MAX_GROUP_RECORDS, WRITER_QUEUE};
pub use policies::{EvaluationResult, EVALUATE_EPISODES_ENV, MAX_EVALUATION_EPISODES};
pub use publish::{PublishError, PublishStream, Publisher, PUBLISH_WINDOW};
pub use query::QueryLimits;
pub use start::start;
pub use telemetry_frames::{FrameStore, FrameStoreOptions};
pub use telemetry_hub::{
    CloseReason, Delivery, HubConfig, StreamKind, SubscribeError, SubscribeOptions, Subscription,
};
pub use telemetry_store::{Backend, SqliteBackend};
pub use workqueue::QueueFull;
