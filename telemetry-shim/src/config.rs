//! Every knob of the shim, its default, and how `GYM_TELEMETRY_*` variables set it.
//!
//! Workers are started by schedulers, notebooks and the daemon itself; the environment is the
//! one channel all of them share, so [`ShimConfig::from_env`] is the usual way in. A bad value
//! is a typed error naming the variable, never a silent default: a typo in a queue size must not
//! turn into a run that quietly drops telemetry.
//!
//! This module holds the settings, their defaults and [`ShimConfig::validate`]; reading them
//! from `GYM_TELEMETRY_*` variables is in `config/env.rs`, and the full and fsync policies are
//! in `policy` (the disk queue needs them without depending on the configuration).

use rustls_pki_types::ServerName;
use std::{path::PathBuf, time::Duration};
use telemetry_core::ControlMode;

pub use crate::policy::{FsyncPolicy, FullPolicy};

mod env;

/// The daemon's default Ingest address.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50151";

/// What the shim does with the records it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Send them to the daemon (the default).
    #[default]
    Live,
    /// Validate them and write them as JSONL, with no daemon (`GYM_TELEMETRY_DRY_RUN`).
    DryRun(DryRunTarget),
    /// Do nothing at all, at almost no cost (`GYM_TELEMETRY_DISABLED=1`, `GYM_TELEMETRY=off`).
    Disabled,
}

/// Where a dry run writes its JSONL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRunTarget {
    /// Standard output (`GYM_TELEMETRY_DRY_RUN=-`).
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An environment variable holds a value we cannot use.
    #[error("{var}={value:?}: {reason}")]
    InvalidVar {
        /// The variable.
        var: &'static str,
        /// Its value (lossily decoded).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A field of [`ShimConfig`] is out of range or inconsistent with another.
    #[error("invalid shim config: {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No `auth_token` was given and the credential the shim found (`GYM_TELEMETRY_AUTH_TOKEN`,
    /// `_AUTH_TOKEN_FILE`, `$GYM_TELEMETRY_VAR_DIR/auth-token`) cannot be used.
    #[error("auth token: {0}")]
    Credential(#[from] telemetry_core::credentials::CredentialError),
    /// The equipped policies file cannot be read, or a payload no longer matches its digest:
    /// the worker must not run with a policy other than the one equipped.
    #[error("equipped policy ({}): {reason}", telemetry_policy::POLICIES_FILE_ENV)]
    Policy {
        /// What is wrong.
        reason: String,
    },
    /// The CA file of an `https://` endpoint (`tls_ca_file`) cannot be read or holds no usable
    /// certificate. Reported when the shim starts, not at the first connection.
    #[error("tls_ca_file (GYM_TELEMETRY_TLS_CA_FILE) {}: {reason}", path.display())]
    TlsCaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The shim's settings. Build with `ShimConfig { field: value, ..Default::default() }` or from
/// the environment with [`ShimConfig::from_env`]. Each field names its variable and default.
#[derive(Debug, Clone, PartialEq)]
pub struct ShimConfig {
    /// Live, dry run or disabled. Default: live.
    pub mode: Mode,
    /// The daemon's Ingest URL (`GYM_TELEMETRY_ENDPOINT`). Default: [`DEFAULT_ENDPOINT`].
    /// `http://` is plaintext; `https://` is TLS (rustls), checked against `tls_ca_file`.
    pub endpoint: String,
    /// PEM file of the CA certificate(s) an `https://` endpoint's certificate must chain to
    /// (`GYM_TELEMETRY_TLS_CA_FILE`); for a self-signed daemon, its certificate itself. When set,
    /// only these are trusted. `None` (default): the Mozilla roots compiled into the shim
    /// (webpki-roots). Read when the shim starts: an unreadable file or one with no
    /// certificate is a [`ConfigError::TlsCaFile`]. Needs an `https://` endpoint.
    pub tls_ca_file: Option<PathBuf>,
    /// The name checked against the daemon's certificate (`GYM_TELEMETRY_TLS_DOMAIN`), a DNS
    /// name or an IP address. `None` (default): the endpoint's host. Set it to reach a daemon
    /// by address whose certificate names a host (`https://10.0.0.5:50151` with a certificate
    /// for `daemon.lab`). Needs an `https://` endpoint.
    pub tls_domain: Option<String>,
    /// Fills `run_id` of records that have none (`GYM_TELEMETRY_RUN_ID`).
    pub run_id: Option<String>,
    /// Fills `agent_id` of steps, episodes and run starts that have none
    /// (`GYM_TELEMETRY_AGENT_ID`).
    pub agent_id: Option<String>,
    /// Fills `control_mode` where empty (`GYM_TELEMETRY_CONTROL_MODE`; legacy spellings accepted).
    pub control_mode: Option<ControlMode>,
    /// Sent as `authorization: Bearer <token>`. `None`: [`Telemetry::new`](crate::Telemetry::new) finds
    /// the owner's, in the order of `telemetry_core::credentials` (`GYM_TELEMETRY_AUTH_TOKEN`,
    /// `GYM_TELEMETRY_AUTH_TOKEN_FILE`, `$GYM_TELEMETRY_VAR_DIR/auth-token`,
    /// `./var/telemetry/auth-token`).
    pub auth_token: Option<String>,
    /// The disk queue (`GYM_TELEMETRY_QUEUE_DIR`). `None` (default): records wait in memory only,
    /// and a crash loses what the daemon has not acked; the producer id lives for the process.
    pub queue_dir: Option<PathBuf>,
    /// Most records per batch sent (`GYM_TELEMETRY_BATCH_RECORDS`). Default 512.
    pub batch_max_records: usize,
    /// Most encoded bytes per batch (`GYM_TELEMETRY_BATCH_BYTES`). Default 1 MiB.
    pub batch_max_bytes: usize,
    /// Longest a record waits for its batch to fill (`GYM_TELEMETRY_BATCH_LINGER_MS`).
    /// Default 50 ms. This is also the process-crash loss window (see [`disk_queue`](crate::disk_queue)).
    pub batch_linger: Duration,
    /// Most records accepted but not yet taken by the sender (`GYM_TELEMETRY_BUFFER_RECORDS`).
    /// Default 65 536.
    pub buffer_max_records: usize,
    /// Most bytes accepted but not yet taken by the sender (`GYM_TELEMETRY_BUFFER_BYTES`).
    /// Default 64 MiB.
    pub buffer_max_bytes: usize,
    /// Bound of the disk queue's files (`GYM_TELEMETRY_QUEUE_MAX_BYTES`). Default 1 GiB.
    pub queue_max_bytes: u64,
    /// Size at which a queue segment file is closed and a new one started
    /// (`GYM_TELEMETRY_SEGMENT_BYTES`). Default 16 MiB; at most `queue_max_bytes / 4`.
    pub segment_max_bytes: u64,
    /// Bound of the in-memory queue used when `queue_dir` is `None`
    /// (`GYM_TELEMETRY_MEMORY_QUEUE_BYTES`). Default 128 MiB.
    pub memory_queue_max_bytes: u64,
    /// What to do when full (`GYM_TELEMETRY_QUEUE_FULL` = `block` | `drop_oldest` |
    /// `drop_newest`, with `GYM_TELEMETRY_BLOCK_TIMEOUT_MS`, default 1000). Default drop oldest.
    pub full_policy: FullPolicy,
    /// Disk queue sync policy (`GYM_TELEMETRY_FSYNC` = `every_batch` | `never` | `<n>ms`).
    /// Default every batch.
    pub fsync: FsyncPolicy,
    /// Largest encoded record accepted; bigger ones are refused at the call
    /// (`GYM_TELEMETRY_MAX_RECORD_BYTES`). Default 1 MiB, the daemon's limit.
    pub max_record_bytes: usize,
    /// Batches sent and not yet acked, per stream. Default 4.
    pub max_in_flight_batches: usize,
    /// Timeout of one connection attempt. Default 2 s.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failure, with jitter. Default 100 ms.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay (`GYM_TELEMETRY_RECONNECT_MAX_MS`). Default 5 s.
    pub reconnect_max: Duration,
    /// How long dropping a [`Telemetry`](crate::Telemetry) may wait for its final flush
    /// (`GYM_TELEMETRY_DROP_FLUSH_MS`). Default 5 s.
    pub drop_flush_timeout: Duration,
    /// The policies the daemon equipped to this run (`GYM_TELEMETRY_POLICIES_FILE`, each
    /// payload verified against its digest when the configuration is read). Every step and
    /// episode of an equipped agent carries its policy's id and digest. Default: none.
    pub policies: Option<std::sync::Arc<telemetry_policy::RunPolicies>>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            mode: Mode::Live,
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            tls_ca_file: None,
            tls_domain: None,
            run_id: None,
            agent_id: None,
            control_mode: None,
            auth_token: None,
            queue_dir: None,
            batch_max_records: 512,
            batch_max_bytes: 1024 * 1024,
            batch_linger: Duration::from_millis(50),
            buffer_max_records: 65_536,
            buffer_max_bytes: 64 * 1024 * 1024,
            queue_max_bytes: 1024 * 1024 * 1024,
            segment_max_bytes: 16 * 1024 * 1024,
            memory_queue_max_bytes: 128 * 1024 * 1024,
            full_policy: FullPolicy::DropOldest,
            fsync: FsyncPolicy::EveryBatch,
            max_record_bytes: 1024 * 1024,
            max_in_flight_batches: 4,
            connect_timeout: Duration::from_secs(2),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            drop_flush_timeout: Duration::from_secs(5),
            policies: None,
        }
    }
}

/// The largest frame the disk queue reads back; a length field above it is corruption.
pub(crate) const MAX_RECORD_BYTES_LIMIT: usize = crate::disk_queue::MAX_FRAME_BYTES - 64;

impl ShimConfig {
    /// Checks ranges and consistency; [`Telemetry::new`](crate::Telemetry::new) calls it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.mode == Mode::Live {
            let uri_ok = self.endpoint.parse::<tonic::transport::Uri>().is_ok()
                && (self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://"));
            if !uri_ok {
                return bad("endpoint", "expected a URL such as http://127.0.0.1:50151");
            }
            let tls_set = self.tls_ca_file.is_some() || self.tls_domain.is_some();
            if tls_set && !is_https(&self.endpoint) {
                return bad(
                    "tls_ca_file/tls_domain",
                    "TLS settings need an https:// endpoint (the endpoint is plaintext)",
                );
            }
            if let Some(d) = &self.tls_domain {
                if let Err(reason) = check_domain(d) {
                    return bad("tls_domain", &reason);
                }
            }
        }
        if let Some(t) = &self.auth_token {
            if tonic::metadata::MetadataValue::try_from(format!("Bearer {t}")).is_err() {
                return bad("auth_token", "must be printable ASCII");
            }
        }
        if self.batch_max_records == 0 || self.batch_max_bytes == 0 {
            return bad("batch_max_records/batch_max_bytes", "must be at least 1");
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > MAX_RECORD_BYTES_LIMIT {
            return bad("max_record_bytes", "must be between 1 byte and 16 MiB");
        }
        if self.buffer_max_records == 0 || self.buffer_max_bytes < self.max_record_bytes {
            return bad(
                "buffer_max_records/buffer_max_bytes",
                "need room for at least one record of max_record_bytes",
            );
        }
        let frame = self.max_record_bytes as u64 + 64;
        if self.segment_max_bytes < frame || self.queue_max_bytes < 4 * self.segment_max_bytes {
            return bad(
                "segment_max_bytes/queue_max_bytes",
                "need segment >= max_record_bytes and queue >= 4 segments",
            );
        }
        if self.memory_queue_max_bytes < frame {
            return bad(
                "memory_queue_max_bytes",
                "must hold at least one record of max_record_bytes",
            );
        }
        if self.max_in_flight_batches == 0 {
            return bad("max_in_flight_batches", "must be at least 1");
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return bad(
                "reconnect_initial/reconnect_max",
                "need 0 < reconnect_initial <= reconnect_max",
            );
        }
        if let FsyncPolicy::Interval(d) = self.fsync {
            if d.is_zero() {
                return bad("fsync", "an interval must be positive (or use every_batch)");
            }
        }
        Ok(())
    }
}

/// Whether `endpoint` asks for TLS.
pub(crate) fn is_https(endpoint: &str) -> bool {
    endpoint.starts_with("https://")
}

/// Checks `tls_domain` is a DNS name or an IP address a certificate can be checked against.
pub(crate) fn check_domain(domain: &str) -> Result<(), String> {
    ServerName::try_from(domain)
        .map(|_| ())
        .map_err(|e| format!("{domain:?} is not a DNS name or IP address: {e}"))
}
