//! # telemetry-policy
//!
//! Policies as first-class objects: the checkpoint inventory under `<var-dir>/policies/`.
//!
//! The predecessor stashed checkpoints under `var/trainer/policies/<env_id>/<agent_id>.json`
//! and let workers find them implicitly, which made runs hard to reproduce and hid which policy
//! an agent ran with. This crate gives each checkpoint a [`Manifest`] (env id, spaces, control
//! mode, format and payload version, the run that produced it, creation time, size, SHA-256),
//! discovers the predecessor's files ([`legacy`]), registers other formats with a manifest the
//! caller supplies, and checks whether a policy fits a run before it is equipped ([`equip`]).
//! The daemon, its CLI and the worker shim all use it, so each rule has one home.
//!
//! Layout on disk: the payload files under the root (any depth), each with a sidecar
//! `<payload>.manifest.json`. A policy's id is its payload's path relative to the root,
//! `/`-separated (`FrozenLake-v1/bdi_rl_demo.json`). Everything read from disk is bounded
//! ([`Limits`]); a file that cannot be used is listed as invalid with its reason and never
//! breaks the inventory.

pub mod digest;
pub mod equip;
pub mod equipped;
mod error;
pub mod inventory;
pub mod legacy;
pub mod manifest;
pub mod report;

pub use equip::{Refusal, Requirements, KNOWN_FORMATS};
pub use equipped::{EquippedPolicy, Evaluation, RunPolicies, POLICIES_FILE_ENV};
pub use error::PolicyError;
pub use inventory::{InvalidFile, InvalidKind, Inventory, Limits, Listing, Verification};
pub use manifest::{
    check_policy_id, FormatVersion, Manifest, Origin, Registration, MANIFEST_SUFFIX,
    MAX_MANIFEST_BYTES,
};
