//! # telemetry-core
//!
//! The vocabulary every other gym-telemetry crate speaks:
//!
//! - [`pb`]: the protobuf messages and gRPC stubs generated from `proto/` (our
//!   `gym_telemetry.v1` API and the predecessor's `gymgui.trainer` API, kept wire compatible).
//!   The generated records ([`pb::RunStep`], [`pb::RunEpisode`], ...) *are* the domain records:
//!   there is no second copy of each type to keep in sync.
//! - [`ControlMode`]: who was acting (human, agent, multi_agent, hybrid, replay, unknown).
//! - [`ids`]: the rules for run, agent and producer ids (one length limit, one path-safe
//!   run-id rule).
//! - [`completion`]: the words for how a run ended (`FromStr` for [`pb::CompletionStatus`]).
//! - [`watermark`]: the exactly-once rule, a producer's durable [`Watermark`].
//! - [`validate`]: the checks a record must pass before it is stored, with typed errors.
//! - [`frames`]: the `frame_ref` format and the checks a frame passes before it is stored.
//! - [`jsonl`]: the worker JSONL contract, the line format legacy workers print on stdout.
//!
//! This crate does no I/O of its own beyond reading lines from a caller's reader.

pub mod completion;
pub mod control_mode;
pub mod credentials;
pub mod frames;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod jsonl;
pub mod pb;
pub mod record;
pub mod timestamp;
pub mod validate;
pub mod watermark;

pub use completion::CompletionStatusError;
pub use control_mode::{ControlMode, ControlModeError, ModeFilter};
pub use ids::{check_id, check_run_id, IdError, MAX_ID_LEN};
pub use record::RecordKind;
pub use watermark::{Watermark, MAX_SEQ_JUMP};
