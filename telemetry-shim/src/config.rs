//! Every knob of the shim, its default, and how `GYM_TELEMETRY_*` variables set it.
//!
//! Workers are started by schedulers, notebooks and the daemon itself; the environment is the
//! one channel all of them share, so [`ShimConfig::from_env`] is the usual way in. A bad value
//! is a typed error naming the variable, never a silent default: a typo in a queue size must not
//! turn into a run that quietly drops telemetry.

use std::{ffi::OsString, path::PathBuf, time::Duration};
use telemetry_core::ControlMode;

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

/// What happens to a new record when the shim's buffers are full (the daemon has been away long
/// enough to fill the queue, or the disk is slower than the worker). Every drop is counted in
/// [`ShimStats::dropped`](crate::ShimStats::dropped) and logged at a bounded rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// The caller waits for room, at most `timeout`; then the new record is dropped and the call
    /// returns [`ShimError::QueueFull`](crate::ShimError::QueueFull).
    Block {
        /// The longest wait per record.
        timeout: Duration,
    },
    /// The oldest queued records make room (the default: the training loop never waits and the
    /// most recent telemetry survives). On disk, room is made a whole segment at a time.
    #[default]
    DropOldest,
    /// The new record is dropped (the call returns `QueueFull`).
    DropNewest,
}

/// When the disk queue forces its writes to stable storage. A process crash loses nothing the
/// queue has written whatever the policy (the kernel has it); the policy bounds what an OS crash
/// or power loss may take. See the loss windows in [`disk_queue`](crate::disk_queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` after every batch the sender writes (default).
    #[default]
    EveryBatch,
    /// At most one sync per interval (and at flush/close).
    Interval(Duration),
    /// Only at flush/close; the kernel writes back when it likes.
    Never,
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
    /// Sent as `authorization: Bearer <token>` (`GYM_TELEMETRY_AUTH_TOKEN`).
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
    /// How long dropping a [`Shim`](crate::Shim) may wait for its final flush
    /// (`GYM_TELEMETRY_DROP_FLUSH_MS`). Default 5 s.
    pub drop_flush_timeout: Duration,
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
        }
    }
}

/// The largest frame the disk queue reads back; a length field above it is corruption.
pub(crate) const MAX_RECORD_BYTES_LIMIT: usize = crate::disk_queue::MAX_FRAME_BYTES - 64;

impl ShimConfig {
    /// Reads the process environment (see each field for its variable).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Like [`from_env`](Self::from_env) with variables looked up through `lookup` (tests,
    /// embedding hosts with their own settings store).
    pub fn from_lookup<F>(lookup: F) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Option<OsString>,
    {
        let env = Env { lookup };
        let mut c = ShimConfig::default();
        let disabled = env.flag("GYM_TELEMETRY_DISABLED")?.unwrap_or(false)
            || env.switch_off("GYM_TELEMETRY")?;
        if disabled {
            c.mode = Mode::Disabled;
        } else if let Some(target) = env.string("GYM_TELEMETRY_DRY_RUN")? {
            c.mode = Mode::DryRun(if target == "-" {
                DryRunTarget::Stdout
            } else {
                DryRunTarget::File(PathBuf::from(target))
            });
        }
        if let Some(v) = env.string("GYM_TELEMETRY_ENDPOINT")? {
            c.endpoint = v;
        }
        c.tls_ca_file = env.string("GYM_TELEMETRY_TLS_CA_FILE")?.map(PathBuf::from);
        c.tls_domain = env.string("GYM_TELEMETRY_TLS_DOMAIN")?;
        c.run_id = env.string("GYM_TELEMETRY_RUN_ID")?;
        c.agent_id = env.string("GYM_TELEMETRY_AGENT_ID")?;
        c.auth_token = env.string("GYM_TELEMETRY_AUTH_TOKEN")?;
        c.queue_dir = env.string("GYM_TELEMETRY_QUEUE_DIR")?.map(PathBuf::from);
        if let Some(v) = env.string("GYM_TELEMETRY_CONTROL_MODE")? {
            c.control_mode = Some(v.parse().map_err(|e: telemetry_core::ControlModeError| {
                ConfigError::InvalidVar {
                    var: "GYM_TELEMETRY_CONTROL_MODE",
                    value: v.clone(),
                    reason: e.to_string(),
                }
            })?);
        }
        env.size("GYM_TELEMETRY_BATCH_RECORDS", &mut c.batch_max_records)?;
        env.size("GYM_TELEMETRY_BATCH_BYTES", &mut c.batch_max_bytes)?;
        env.millis("GYM_TELEMETRY_BATCH_LINGER_MS", &mut c.batch_linger)?;
        env.size("GYM_TELEMETRY_BUFFER_RECORDS", &mut c.buffer_max_records)?;
        env.size("GYM_TELEMETRY_BUFFER_BYTES", &mut c.buffer_max_bytes)?;
        env.size("GYM_TELEMETRY_QUEUE_MAX_BYTES", &mut c.queue_max_bytes)?;
        env.size("GYM_TELEMETRY_SEGMENT_BYTES", &mut c.segment_max_bytes)?;
        env.size(
            "GYM_TELEMETRY_MEMORY_QUEUE_BYTES",
            &mut c.memory_queue_max_bytes,
        )?;
        env.size("GYM_TELEMETRY_MAX_RECORD_BYTES", &mut c.max_record_bytes)?;
        env.millis("GYM_TELEMETRY_RECONNECT_MAX_MS", &mut c.reconnect_max)?;
        env.millis("GYM_TELEMETRY_DROP_FLUSH_MS", &mut c.drop_flush_timeout)?;
        let mut block_timeout = Duration::from_secs(1);
        env.millis("GYM_TELEMETRY_BLOCK_TIMEOUT_MS", &mut block_timeout)?;
        if let Some(v) = env.string("GYM_TELEMETRY_QUEUE_FULL")? {
            c.full_policy = match v.to_ascii_lowercase().replace('-', "_").as_str() {
                "block" => FullPolicy::Block {
                    timeout: block_timeout,
                },
                "drop_oldest" => FullPolicy::DropOldest,
                "drop_newest" => FullPolicy::DropNewest,
                _ => {
                    return Err(ConfigError::InvalidVar {
                        var: "GYM_TELEMETRY_QUEUE_FULL",
                        value: v,
                        reason: "expected block, drop_oldest or drop_newest".into(),
                    })
                }
            };
        }
        if let Some(v) = env.string("GYM_TELEMETRY_FSYNC")? {
            c.fsync = parse_fsync(&v).ok_or_else(|| ConfigError::InvalidVar {
                var: "GYM_TELEMETRY_FSYNC",
                value: v.clone(),
                reason: "expected every_batch, never, or an interval such as 500ms".into(),
            })?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks ranges and consistency; [`Shim::new`](crate::Shim::new) calls it too.
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
            if tls_set && !crate::tls::is_https(&self.endpoint) {
                return bad(
                    "tls_ca_file/tls_domain",
                    "TLS settings need an https:// endpoint (the endpoint is plaintext)",
                );
            }
            if let Some(d) = &self.tls_domain {
                if let Err(reason) = crate::tls::check_domain(d) {
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

fn parse_fsync(v: &str) -> Option<FsyncPolicy> {
    let v = v.trim().to_ascii_lowercase().replace('-', "_");
    match v.as_str() {
        "every_batch" | "always" | "batch" => Some(FsyncPolicy::EveryBatch),
        "never" | "off" => Some(FsyncPolicy::Never),
        other => {
            let ms: u64 = other
                .strip_suffix("ms")
                .unwrap_or(other)
                .trim()
                .parse()
                .ok()?;
            (ms > 0).then(|| FsyncPolicy::Interval(Duration::from_millis(ms)))
        }
    }
}

/// Parses `123`, `64k`, `16M`, `1G` (binary multiples, case-insensitive, optional `iB`/`B`).
fn parse_size(v: &str) -> Option<u64> {
    let s = v.trim().to_ascii_lowercase();
    let s = s
        .strip_suffix("ib")
        .or_else(|| s.strip_suffix('b'))
        .unwrap_or(&s);
    let (digits, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(mult)
}

struct Env<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<OsString>> Env<F> {
    fn string(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match (self.lookup)(var) {
            None => Ok(None),
            Some(os) => match os.into_string() {
                Ok(s) if s.trim().is_empty() => Ok(None),
                Ok(s) => Ok(Some(s)),
                Err(os) => Err(ConfigError::InvalidVar {
                    var,
                    value: os.to_string_lossy().into_owned(),
                    reason: "not valid UTF-8".into(),
                }),
            },
        }
    }

    fn invalid(var: &'static str, value: String, reason: &str) -> ConfigError {
        ConfigError::InvalidVar {
            var,
            value,
            reason: reason.to_owned(),
        }
    }

    fn flag(&self, var: &'static str) -> Result<Option<bool>, ConfigError> {
        let Some(v) = self.string(var)? else {
            return Ok(None);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(Self::invalid(var, v, "expected 1/0, true/false, yes/no")),
        }
    }

    /// `GYM_TELEMETRY=off` (or 0/false/disabled) turns telemetry off.
    fn switch_off(&self, var: &'static str) -> Result<bool, ConfigError> {
        let Some(v) = self.string(var)? else {
            return Ok(false);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "off" | "0" | "false" | "no" | "disabled" => Ok(true),
            "on" | "1" | "true" | "yes" | "enabled" => Ok(false),
            _ => Err(Self::invalid(var, v, "expected on or off")),
        }
    }

    fn size<T: TryFrom<u64>>(&self, var: &'static str, out: &mut T) -> Result<(), ConfigError> {
        if let Some(v) = self.string(var)? {
            let n = parse_size(&v).ok_or_else(|| {
                Self::invalid(var, v.clone(), "expected a size such as 512, 64k, 16M")
            })?;
            *out = T::try_from(n).map_err(|_| Self::invalid(var, v, "too large"))?;
        }
        Ok(())
    }

    fn millis(&self, var: &'static str, out: &mut Duration) -> Result<(), ConfigError> {
        if let Some(v) = self.string(var)? {
            let ms: u64 = v
                .trim()
                .trim_end_matches("ms")
                .parse()
                .map_err(|_| Self::invalid(var, v.clone(), "expected milliseconds"))?;
            *out = Duration::from_millis(ms);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<ShimConfig, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(*v)))
            .collect();
        ShimConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn empty_environment_gives_the_documented_defaults() {
        let c = from(&[]).expect("defaults are valid");
        assert_eq!(c, ShimConfig::default());
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(c.batch_max_records, 512);
        assert_eq!(c.full_policy, FullPolicy::DropOldest);
    }

    #[test]
    fn every_variable_reaches_its_field() {
        let c = from(&[
            ("GYM_TELEMETRY_ENDPOINT", "http://127.0.0.1:9"),
            ("GYM_TELEMETRY_RUN_ID", "r1"),
            ("GYM_TELEMETRY_AGENT_ID", "a1"),
            ("GYM_TELEMETRY_CONTROL_MODE", "agent_only"),
            ("GYM_TELEMETRY_QUEUE_DIR", "/tmp/q"),
            ("GYM_TELEMETRY_AUTH_TOKEN", "s3cret"),
            ("GYM_TELEMETRY_BATCH_RECORDS", "64"),
            ("GYM_TELEMETRY_BATCH_BYTES", "64k"),
            ("GYM_TELEMETRY_BATCH_LINGER_MS", "5"),
            ("GYM_TELEMETRY_QUEUE_MAX_BYTES", "1G"),
            ("GYM_TELEMETRY_SEGMENT_BYTES", "8MiB"),
            ("GYM_TELEMETRY_QUEUE_FULL", "block"),
            ("GYM_TELEMETRY_BLOCK_TIMEOUT_MS", "250"),
            ("GYM_TELEMETRY_FSYNC", "200ms"),
        ])
        .expect("valid");
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert_eq!(c.run_id.as_deref(), Some("r1"));
        assert_eq!(c.agent_id.as_deref(), Some("a1"));
        assert_eq!(c.control_mode, Some(ControlMode::Agent));
        assert_eq!(c.queue_dir, Some(PathBuf::from("/tmp/q")));
        assert_eq!(c.auth_token.as_deref(), Some("s3cret"));
        assert_eq!(c.batch_max_records, 64);
        assert_eq!(c.batch_max_bytes, 64 * 1024);
        assert_eq!(c.batch_linger, Duration::from_millis(5));
        assert_eq!(c.queue_max_bytes, 1 << 30);
        assert_eq!(c.segment_max_bytes, 8 << 20);
        assert_eq!(
            c.full_policy,
            FullPolicy::Block {
                timeout: Duration::from_millis(250)
            }
        );
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(200)));
    }

    #[test]
    fn modes_disabled_wins_over_dry_run() {
        let c = from(&[("GYM_TELEMETRY_DRY_RUN", "-")]).expect("valid");
        assert_eq!(c.mode, Mode::DryRun(DryRunTarget::Stdout));
        let c = from(&[("GYM_TELEMETRY_DRY_RUN", "/tmp/x.jsonl")]).expect("valid");
        assert_eq!(
            c.mode,
            Mode::DryRun(DryRunTarget::File("/tmp/x.jsonl".into()))
        );
        for vars in [
            &[
                ("GYM_TELEMETRY_DISABLED", "1"),
                ("GYM_TELEMETRY_DRY_RUN", "-"),
            ][..],
            &[("GYM_TELEMETRY", "off")][..],
            &[
                ("GYM_TELEMETRY", "OFF"),
                ("GYM_TELEMETRY_ENDPOINT", "not a url"),
            ][..],
        ] {
            assert_eq!(from(vars).expect("valid").mode, Mode::Disabled);
        }
        assert_eq!(
            from(&[("GYM_TELEMETRY_DISABLED", "0")])
                .expect("valid")
                .mode,
            Mode::Live
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("GYM_TELEMETRY_CONTROL_MODE", "telepathy"),
            ("GYM_TELEMETRY_BATCH_RECORDS", "many"),
            ("GYM_TELEMETRY_QUEUE_FULL", "explode"),
            ("GYM_TELEMETRY_FSYNC", "sometimes"),
            ("GYM_TELEMETRY_DISABLED", "maybe"),
            ("GYM_TELEMETRY", "perhaps"),
            ("GYM_TELEMETRY_BATCH_LINGER_MS", "-3"),
        ] {
            let err = from(&[(var, value)]).expect_err(var);
            match &err {
                ConfigError::InvalidVar {
                    var: v, value: got, ..
                } => {
                    assert_eq!(*v, var);
                    assert_eq!(got, value);
                }
                other => panic!("{var}: unexpected {other:?}"),
            }
            assert!(err.to_string().contains(var), "{err}");
        }
        let err = from(&[("GYM_TELEMETRY_ENDPOINT", "127.0.0.1:50151")]).expect_err("no scheme");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "endpoint",
                ..
            }
        ));
        let err = from(&[("GYM_TELEMETRY_QUEUE_MAX_BYTES", "1M")]).expect_err("too small");
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }

    #[test]
    fn tls_variables_reach_their_fields_and_need_https() {
        let c = from(&[
            ("GYM_TELEMETRY_ENDPOINT", "https://10.0.0.5:50151"),
            ("GYM_TELEMETRY_TLS_CA_FILE", "/etc/gym/ca.pem"),
            ("GYM_TELEMETRY_TLS_DOMAIN", "daemon.lab"),
        ])
        .expect("valid");
        assert_eq!(c.endpoint, "https://10.0.0.5:50151");
        assert_eq!(c.tls_ca_file, Some(PathBuf::from("/etc/gym/ca.pem")));
        assert_eq!(c.tls_domain.as_deref(), Some("daemon.lab"));
        // https alone is fine (compiled-in roots); plain http is untouched by TLS.
        let c = from(&[("GYM_TELEMETRY_ENDPOINT", "https://daemon.lab")]).expect("valid");
        assert_eq!((c.tls_ca_file, c.tls_domain), (None, None));

        for var in ["GYM_TELEMETRY_TLS_CA_FILE", "GYM_TELEMETRY_TLS_DOMAIN"] {
            let err = from(&[("GYM_TELEMETRY_ENDPOINT", "http://127.0.0.1:9"), (var, "x")])
                .expect_err("TLS settings on a plaintext endpoint");
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        field: "tls_ca_file/tls_domain",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("https://"), "{err}");
        }
        let err = from(&[
            ("GYM_TELEMETRY_ENDPOINT", "https://127.0.0.1:9"),
            ("GYM_TELEMETRY_TLS_DOMAIN", "two words"),
        ])
        .expect_err("not a name");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "tls_domain",
                    ..
                }
            ),
            "{err}"
        );
        // Disabled: the TLS settings are not looked at, like the endpoint.
        let c = from(&[
            ("GYM_TELEMETRY", "off"),
            ("GYM_TELEMETRY_TLS_DOMAIN", "two words"),
        ])
        .expect("valid");
        assert_eq!(c.mode, Mode::Disabled);
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64k"), Some(65_536));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }
}
