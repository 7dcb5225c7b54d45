//! Reading a [`ShimConfig`] from `GYM_TELEMETRY_*` variables.
//!
//! Every variable, how its value is spelled and the typed error for a value we cannot use:
//! split from the settings themselves because it is the one part that knows about the
//! environment (and most of the tests are about spellings).

use super::{ConfigError, DryRunTarget, FsyncPolicy, FullPolicy, Mode, ShimConfig};
use std::{ffi::OsString, path::PathBuf, time::Duration};

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
        if let Some(path) = env.string(telemetry_policy::POLICIES_FILE_ENV)? {
            let policies = telemetry_policy::RunPolicies::read(std::path::Path::new(&path))
                .map_err(|reason| ConfigError::Policy { reason })?;
            for p in &policies.policies {
                p.verify().map_err(|r| ConfigError::Policy {
                    reason: format!("{} ({}): {r}", p.policy_id, p.path.display()),
                })?;
            }
            c.policies = Some(std::sync::Arc::new(policies));
        }
        Ok(c)
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
    use crate::config::DEFAULT_ENDPOINT;
    use std::collections::HashMap;
    use telemetry_core::ControlMode;

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
