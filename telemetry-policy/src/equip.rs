//! The equip handshake's checks: does a policy fit the run it is about to be bound to?
//!
//! Each refusal is its own variant with a stable [`Refusal::kind`], so the daemon's status
//! message, the CLI and tests can tell them apart without parsing prose.

use crate::{manifest::FormatVersion, Manifest};

/// Formats the daemon's own loaders read, at the highest version they know.
pub const KNOWN_FORMATS: &[(&str, u32)] = &[("q_table", 1)];

/// What a run's worker accepts; an empty field is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// The run's environment.
    pub env_id: String,
    /// The worker's observation space.
    pub observation_space: String,
    /// The worker's action space.
    pub action_space: String,
    /// `format/vN` entries the worker loads; empty: [`KNOWN_FORMATS`] up to their versions.
    pub formats: Vec<String>,
}

impl Requirements {
    /// From the wire form; `default_env` stands in for an empty `env_id` (the run's game id).
    pub fn from_pb(r: Option<&telemetry_core::pb::EquipRequirements>, default_env: &str) -> Self {
        let r = r.cloned().unwrap_or_default();
        Requirements {
            env_id: if r.env_id.is_empty() {
                default_env.to_owned()
            } else {
                r.env_id
            },
            observation_space: r.observation_space,
            action_space: r.action_space,
            formats: r.formats,
        }
    }
}

/// Why a policy cannot be equipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Trained on another environment.
    #[error("env_mismatch: the policy was trained on {policy:?}, the run plays {run:?}")]
    EnvMismatch {
        /// The manifest's env id.
        policy: String,
        /// The run's.
        run: String,
    },
    /// Another observation space.
    #[error("observation_space_mismatch: the policy observes {policy:?}, the run {run:?}")]
    ObservationSpaceMismatch {
        /// The manifest's.
        policy: String,
        /// The run's.
        run: String,
    },
    /// Another action space.
    #[error("action_space_mismatch: the policy acts in {policy:?}, the run in {run:?}")]
    ActionSpaceMismatch {
        /// The manifest's.
        policy: String,
        /// The run's.
        run: String,
    },
    /// A format or version the worker cannot load.
    #[error("format_unsupported: {format} is not among the accepted formats {accepted:?}")]
    FormatUnsupported {
        /// The manifest's `format/vN`.
        format: String,
        /// What is accepted.
        accepted: Vec<String>,
    },
    /// The file no longer hashes to its manifest's digest.
    #[error(
        "digest_mismatch: the manifest says sha256 {expected}, the file now hashes to {actual}"
    )]
    DigestMismatch {
        /// The manifest's digest.
        expected: String,
        /// The file's.
        actual: String,
    },
    /// The policy's file or manifest is not usable.
    #[error("invalid_policy: {0}")]
    Invalid(String),
}

impl Refusal {
    /// A stable word for the reason (the prefix of the message).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::EnvMismatch { .. } => "env_mismatch",
            Refusal::ObservationSpaceMismatch { .. } => "observation_space_mismatch",
            Refusal::ActionSpaceMismatch { .. } => "action_space_mismatch",
            Refusal::FormatUnsupported { .. } => "format_unsupported",
            Refusal::DigestMismatch { .. } => "digest_mismatch",
            Refusal::Invalid(_) => "invalid_policy",
        }
    }
}

/// Space descriptions compare without whitespace (`Box(0, 1, (3,))` = `Box(0,1,(3,))`).
fn same_space(a: &str, b: &str) -> bool {
    a.chars()
        .filter(|c| !c.is_whitespace())
        .eq(b.chars().filter(|c| !c.is_whitespace()))
}

/// Checks `manifest` against `req`, and `current_sha256` (the file's digest now) against the
/// manifest's. The first failing check, in the order env, spaces, format, digest, is returned.
pub fn check(manifest: &Manifest, req: &Requirements, current_sha256: &str) -> Result<(), Refusal> {
    if !req.env_id.is_empty() && req.env_id != manifest.env_id {
        return Err(Refusal::EnvMismatch {
            policy: manifest.env_id.clone(),
            run: req.env_id.clone(),
        });
    }
    if !req.observation_space.is_empty()
        && !same_space(&req.observation_space, &manifest.observation_space)
    {
        return Err(Refusal::ObservationSpaceMismatch {
            policy: manifest.observation_space.clone(),
            run: req.observation_space.clone(),
        });
    }
    if !req.action_space.is_empty() && !same_space(&req.action_space, &manifest.action_space) {
        return Err(Refusal::ActionSpaceMismatch {
            policy: manifest.action_space.clone(),
            run: req.action_space.clone(),
        });
    }
    let fv = manifest.format_version();
    let accepted: Vec<String> = if req.formats.is_empty() {
        KNOWN_FORMATS
            .iter()
            .flat_map(|(f, max)| (1..=*max).map(move |v| format!("{f}/v{v}")))
            .collect()
    } else {
        req.formats.clone()
    };
    let ok = accepted
        .iter()
        .filter_map(|a| FormatVersion::parse(a).ok())
        .any(|a| a == fv);
    if !ok {
        return Err(Refusal::FormatUnsupported {
            format: fv.to_string(),
            accepted,
        });
    }
    if current_sha256 != manifest.sha256 {
        return Err(Refusal::DigestMismatch {
            expected: manifest.sha256.clone(),
            actual: current_sha256.to_owned(),
        });
    }
    Ok(())
}
