//! The manifest every checkpoint gets, its sidecar file, and policy ids.
//!
//! A manifest is what a run needs to know before it equips a policy: which environment and
//! spaces it was trained for, how its payload is encoded, where it came from, and the digest the
//! file had when it was registered (so a changed file is caught before a worker loads it).

use serde::{Deserialize, Serialize};
use telemetry_core::pb;

use crate::PolicyError;

/// The sidecar of payload `P` is `P` + this suffix.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Largest sidecar manifest read, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Longest policy id, in bytes.
pub const MAX_POLICY_ID_LEN: usize = 512;
/// The manifest layout this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// How a manifest came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A predecessor file found under the root and given a manifest.
    Discovered,
    /// Registered with a caller's manifest (`RegisterPolicy`, `policies import`).
    Registered,
    /// Registered from a run's `artifact` event of kind `policy`.
    Artifact,
}

impl Origin {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Discovered => "discovered",
            Origin::Registered => "registered",
            Origin::Artifact => "artifact",
        }
    }
}

/// A payload format and its version, written `format/vN` (`q_table/v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatVersion {
    /// `[a-z0-9_]+`.
    pub format: String,
    /// At least 1.
    pub version: u32,
}

impl FormatVersion {
    /// Parses `format/vN`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (format, v) = text
            .split_once("/v")
            .ok_or_else(|| format!("{text:?} is not of the form format/vN"))?;
        check_format(format)?;
        let version = v
            .parse::<u32>()
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| format!("{text:?}: the version must be a number from 1"))?;
        Ok(FormatVersion {
            format: format.to_owned(),
            version,
        })
    }
}

impl std::fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/v{}", self.format, self.version)
    }
}

/// A format name: 1 to 64 bytes of `[a-z0-9_]`.
pub(crate) fn check_format(format: &str) -> Result<(), String> {
    if format.is_empty()
        || format.len() > 64
        || !format
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "format {format:?} must be 1 to 64 characters of [a-z0-9_]"
        ));
    }
    Ok(())
}

/// What the inventory knows of one checkpoint (stored as its sidecar, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub manifest_version: u32,
    /// The payload's path relative to the root, `/`-separated.
    pub policy_id: String,
    /// The environment it was trained on.
    pub env_id: String,
    /// The agent it belongs to.
    #[serde(default)]
    pub agent_id: String,
    /// Observation space, in Gymnasium's notation (`Discrete(16)`); empty: unknown.
    #[serde(default)]
    pub observation_space: String,
    /// Action space, as above.
    #[serde(default)]
    pub action_space: String,
    /// The control mode it was trained under.
    #[serde(default)]
    pub control_mode: String,
    /// The payload's format (`q_table`, `npz`, `torch_state`, ...).
    pub format: String,
    /// The payload's version within its format.
    pub payload_version: u32,
    /// The run that produced it (empty: unknown).
    #[serde(default)]
    pub source_run_id: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The payload's size when registered.
    pub size_bytes: u64,
    /// The payload's lowercase hex SHA-256 when registered.
    pub sha256: String,
    /// Free-form metadata (the predecessor's `metadata` object for discovered files).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// How the manifest came to be.
    pub origin: Origin,
}

impl Manifest {
    /// `format/vN`.
    pub fn format_version(&self) -> FormatVersion {
        FormatVersion {
            format: self.format.clone(),
            version: self.payload_version,
        }
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::PolicyManifest {
        pb::PolicyManifest {
            policy_id: self.policy_id.clone(),
            env_id: self.env_id.clone(),
            agent_id: self.agent_id.clone(),
            observation_space: self.observation_space.clone(),
            action_space: self.action_space.clone(),
            control_mode: self.control_mode.clone(),
            format: self.format.clone(),
            payload_version: self.payload_version,
            source_run_id: self.source_run_id.clone(),
            created_at: telemetry_core::timestamp::parse_rfc3339(&self.created_at).ok(),
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
            metadata_json: if self.metadata.is_empty() {
                String::new()
            } else {
                serde_json::Value::Object(self.metadata.clone()).to_string()
            },
            origin: self.origin.as_str().to_owned(),
        }
    }

    /// Checks a manifest read from disk or built from a registration.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.manifest_version != MANIFEST_VERSION {
            return Err(format!(
                "manifest_version {} (this build reads {MANIFEST_VERSION})",
                self.manifest_version
            ));
        }
        check_env_id(&self.env_id)?;
        check_format(&self.format)?;
        if self.payload_version == 0 {
            return Err("payload_version must be at least 1".into());
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 must be 64 hex digits".into());
        }
        for (name, v) in [
            ("agent_id", &self.agent_id),
            ("observation_space", &self.observation_space),
            ("action_space", &self.action_space),
            ("control_mode", &self.control_mode),
            ("source_run_id", &self.source_run_id),
        ] {
            if v.len() > 1024 || v.chars().any(char::is_control) {
                return Err(format!(
                    "{name} must be at most 1024 bytes without control characters"
                ));
            }
        }
        Ok(())
    }
}

/// An env id: 1 to 256 bytes, no control characters.
pub(crate) fn check_env_id(env: &str) -> Result<(), String> {
    if env.is_empty() || env.len() > 256 || env.chars().any(char::is_control) {
        return Err(format!(
            "env_id {env:?} must be 1 to 256 bytes without control characters"
        ));
    }
    Ok(())
}

/// What a caller supplies to register a file (the rest is computed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    /// Required.
    pub env_id: String,
    /// Empty: the file stem.
    pub agent_id: String,
    /// Optional space descriptions.
    pub observation_space: String,
    /// Optional.
    pub action_space: String,
    /// Optional.
    pub control_mode: String,
    /// Required (`npz`, `torch_state`, `flax_state`, `q_table`, ...).
    pub format: String,
    /// Required, from 1.
    pub payload_version: u32,
    /// The run that produced it.
    pub source_run_id: String,
    /// Non-empty: the file must hash to this.
    pub expected_sha256: String,
    /// Free-form.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Copy into `<env>/<subdir>/` (an artifact's run id) rather than `<env>/`.
    pub subdir: String,
}

impl Registration {
    /// From the wire form (`RegisterPolicyRequest.manifest`).
    pub fn from_pb(m: &pb::PolicyManifest) -> Result<Self, PolicyError> {
        let metadata = if m.metadata_json.is_empty() {
            serde_json::Map::new()
        } else {
            match serde_json::from_str::<serde_json::Value>(&m.metadata_json) {
                Ok(serde_json::Value::Object(o)) => o,
                _ => {
                    return Err(PolicyError::Invalid(
                        "metadata_json must be a JSON object".into(),
                    ))
                }
            }
        };
        Ok(Registration {
            env_id: m.env_id.clone(),
            agent_id: m.agent_id.clone(),
            observation_space: m.observation_space.clone(),
            action_space: m.action_space.clone(),
            control_mode: m.control_mode.clone(),
            format: m.format.clone(),
            payload_version: m.payload_version,
            source_run_id: m.source_run_id.clone(),
            expected_sha256: m.sha256.to_ascii_lowercase(),
            metadata,
            subdir: String::new(),
        })
    }
}

/// A policy id: a relative `/`-separated path of safe components, at most
/// [`MAX_POLICY_ID_LEN`] bytes, never naming a sidecar.
pub fn check_policy_id(id: &str) -> Result<Vec<&str>, PolicyError> {
    let bad = |reason: &str| PolicyError::BadId {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    if id.is_empty() || id.len() > MAX_POLICY_ID_LEN {
        return Err(bad("must be 1 to 512 bytes"));
    }
    if id.ends_with(MANIFEST_SUFFIX) {
        return Err(bad("names a manifest, not a policy"));
    }
    let parts: Vec<&str> = id.split('/').collect();
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." || p.starts_with('.') {
            return Err(bad("each path component must be a plain name"));
        }
        if p.contains('\\') || p.chars().any(char::is_control) {
            return Err(bad("no backslashes or control characters"));
        }
    }
    Ok(parts)
}

/// A directory name for an env id (`ALE/Pong-v5` → `ALE_Pong-v5`): one safe path component.
pub(crate) fn env_dir_name(env: &str) -> String {
    let s: String = env
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_start_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_versions_parse_and_print() {
        let f = FormatVersion::parse("q_table/v1").expect("parse");
        assert_eq!((f.format.as_str(), f.version), ("q_table", 1));
        assert_eq!(f.to_string(), "q_table/v1");
        assert!(FormatVersion::parse("q_table").is_err());
        assert!(FormatVersion::parse("q_table/v0").is_err());
        assert!(FormatVersion::parse("Q-Table/v1").is_err());
    }

    #[test]
    fn policy_ids_stay_inside_the_root() {
        assert_eq!(
            check_policy_id("FrozenLake-v1/a.json").expect("ok"),
            ["FrozenLake-v1", "a.json"]
        );
        for bad in [
            "",
            "../x",
            "a/../b",
            "/abs",
            "a//b",
            ".hidden/x",
            "a.json.manifest.json",
        ] {
            assert!(check_policy_id(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(env_dir_name("ALE/Pong-v5"), "ALE_Pong-v5");
    }
}
