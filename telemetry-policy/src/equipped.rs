//! What the daemon hands a worker: the policies equipped to its run, verified again on the
//! worker's side before the first record.
//!
//! The daemon writes `<var-dir>/runs/<run>/policies.json` (0600) and passes its path in
//! [`POLICIES_FILE_ENV`]; the shim reads it ([`RunPolicies::read`]), re-hashes each payload
//! ([`EquippedPolicy::verify`]) and stamps the policy id and digest on every step and episode of
//! the agent it belongs to.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{digest, equip::Refusal, inventory, Manifest};

/// The environment variable naming a run's policies file.
pub const POLICIES_FILE_ENV: &str = "GYM_TELEMETRY_POLICIES_FILE";
/// Largest policies file read, in bytes.
pub const MAX_POLICIES_FILE_BYTES: u64 = 1024 * 1024;

/// One policy bound to one agent of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EquippedPolicy {
    /// The agent it is bound to.
    pub agent_id: String,
    /// The policy's id.
    pub policy_id: String,
    /// The digest the daemon checked at equip time (the manifest's).
    pub sha256: String,
    /// Absolute path of the payload.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl EquippedPolicy {
    /// Re-hashes the payload: the worker loads only the bytes that were equipped.
    pub fn verify(&self) -> Result<(), Refusal> {
        let (actual, _) = digest::sha256_file(&self.path)
            .map_err(|e| Refusal::Invalid(format!("{}: {e}", self.path.display())))?;
        if actual != self.sha256 {
            return Err(Refusal::DigestMismatch {
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// An evaluation run's plan: play `episodes` episodes with the equipped policy, greedily.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Episodes to play.
    pub episodes: u64,
    /// The policy evaluated.
    pub policy_id: String,
    /// The run it came from.
    pub source_run_id: String,
    /// The agent playing it.
    pub agent_id: String,
}

/// Everything equipped to one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunPolicies {
    /// One per equipped agent.
    pub policies: Vec<EquippedPolicy>,
    /// Set for an evaluation run.
    #[serde(default)]
    pub evaluation: Option<Evaluation>,
}

impl RunPolicies {
    /// The policy of `agent_id`.
    pub fn for_agent(&self, agent_id: &str) -> Option<&EquippedPolicy> {
        self.policies.iter().find(|p| p.agent_id == agent_id)
    }

    /// Writes the file (0600, atomically).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        inventory::write_private_atomic(path, &text)
    }

    /// Reads a policies file (at most [`MAX_POLICIES_FILE_BYTES`]).
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        f.take(MAX_POLICIES_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_POLICIES_FILE_BYTES {
            return Err(format!(
                "{} is over {MAX_POLICIES_FILE_BYTES} bytes",
                path.display()
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}
