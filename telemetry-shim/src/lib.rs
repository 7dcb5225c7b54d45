//! # telemetry-shim
//!
//! The piece of gym-telemetry that every training worker links (Rust directly, Python through
//! the PyO3 bindings, which wrap this API). Its two promises:
//!
//! 1. **It never slows the training loop down.** [`Telemetry::step`] and friends stamp the record and
//!    hand it to a bounded in-memory inbox; a background thread (which owns a small tokio
//!    runtime) batches, writes the offline queue and talks gRPC. The caller never waits for
//!    the network; it waits only under [`FullPolicy::Block`], bounded by its timeout.
//! 2. **It never loses telemetry it has accepted**, within the loss windows stated in
//!    [`disk_queue`]: every record gets a `producer_id` + strictly increasing `producer_seq`,
//!    is kept until the daemon's *durable* ack watermark covers it, and is resent after
//!    reconnects and restarts; the daemon drops what its watermark already covers, so each
//!    record is stored exactly once (docs/ARCHITECTURE.md, "Exactly once").
//!
//! ```no_run
//! use telemetry_shim::{Telemetry, ShimConfig, pb::RunStep};
//! # fn main() -> Result<(), telemetry_shim::ShimError> {
//! let shim = Telemetry::new(ShimConfig::from_env()?)?;
//! shim.step(RunStep { episode_index: 0, step_index: 0, reward: 1.0, ..Default::default() })?;
//! let report = shim.close(std::time::Duration::from_secs(5))?;
//! println!("{:?}", report.outcome);
//! # Ok(()) }
//! ```
//!
//! **TLS.** An `https://` endpoint (`GYM_TELEMETRY_ENDPOINT=https://daemon.lab:50151`) is
//! TLS (rustls); `http://` stays plaintext. The daemon's certificate is checked against the CA
//! file `GYM_TELEMETRY_TLS_CA_FILE` (for a self-signed daemon, its certificate itself; the
//! daemon sets it for the workers it spawns) or, without one, the Mozilla roots compiled into
//! the shim; `GYM_TELEMETRY_TLS_DOMAIN` overrides the name checked (default: the endpoint's
//! host). An unreadable CA file is a [`ConfigError::TlsCaFile`] from [`Telemetry::new`].
//!
//! **Frames** have their own path beside the records: [`frames::FrameSender`] (capture never
//! blocks, PNG on its own thread, its own byte budget and spill directory, `Frames.Publish`).
//!
//! Modules: [`config`] (settings and `GYM_TELEMETRY_*` variables), [`shim`] (the facade),
//! [`disk_queue`] (the write-ahead/offline queue and its guarantees), [`tracker`] (episode and
//! step numbering for callers that do not count). The JSONL proxy for legacy workers is its own
//! crate, `telemetry-proxy`, so workers that link the shim (the Python package among them) carry
//! no CLI or process-group code.
//!
//! Layering (a module imports only modules to its right): `frames` → `shim` → `sender` →
//! `dry_run` → `backlog` → `wire` → `tls` → `inbox` → `metadata` → `error` → `config` → `disk_queue` →
//! `policy`, `flush`, `stats`, `ratelimit`, `backoff`, `tracker`.

pub mod config;
pub mod disk_queue;
pub mod error;
#[cfg(feature = "fake-ingest")]
pub mod fake_ingest;
pub mod frames;
pub mod metadata;
pub mod query;
pub mod ratelimit;
pub mod shim;
pub mod stats;
pub mod tracker;

mod backlog;
mod backoff;
mod dry_run;
mod flush;
mod inbox;
mod policy;
mod sender;
mod tls;
mod wire;

pub use config::{ConfigError, DryRunTarget, FsyncPolicy, FullPolicy, Mode, ShimConfig};
pub use error::ShimError;
pub use flush::{FlushOutcome, FlushReport};
pub use frames::{FrameCaptureError, FrameFullPolicy, FrameOptions, FrameSender, FrameStats};
pub use metadata::Metadata;
pub use shim::Telemetry;
pub use stats::ShimStats;
pub use telemetry_core::{pb, ControlMode};
pub use tracker::Tracker;
