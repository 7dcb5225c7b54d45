//! The worker JSONL contract: one JSON object per line, in the shapes legacy RL workers print on
//! stdout, to and from [`Record`]s.
//!
//! The predecessor's workers cannot be changed, so their lines are accepted *as they are*; the
//! proxy (`telemetry-shim`) turns them into records with [`JsonlReader`], and tools write
//! records back out with [`write_record`] in one canonical shape that reads back losslessly.
//!
//! # Legacy lines
//!
//! Every line is an object with a `type`: `step`, `episode`, `run_started`, `run_completed` or
//! `artifact`. Keys are read by the protobuf field name or a legacy alias (first listed wins;
//! a later alias present on the same line is kept as an extra key):
//!
//! | field | accepted keys |
//! |---|---|
//! | every kind: time | `ts_unix_ns` (integer ns), `ts`, `timestamp` (RFC 3339 text, or a number of Unix seconds) |
//! | step | `run_id`*, `episode_index`/`episode`*, `step_index`/`step`*, `action_json`/`action`, `observation_json`/`observation`/`obs`, `reward`, `terminated`, `truncated`, `policy_label`, `backend`, `agent_id`, `render_hint_json`/`render_hint`, `frame_ref`, `payload_version`, `control_mode`, `info_json`/`info`, `producer_id`, `producer_seq`, `seq_id` |
//! | episode | `run_id`*, `episode_index`/`episode`*, `total_reward`/`reward` (an episode's `reward` is its total), `steps`, `terminated`, `truncated`, `metadata_json`/`metadata`, `agent_id`, `control_mode`, `producer_id`, `producer_seq`, `seq_id` |
//! | run_started | `run_id`*, `config_json`/`config`, `agent_id`, `control_mode`, `producer_id`, `producer_seq`, `seq_id` |
//! | run_completed | `run_id`*, `status` (or, without one, `exit_code` 0 means succeeded and any other exit code or a `signal` means failed), `exit_code`/`returncode`, `error`, `reason`, `signal`, `info_json`/`info`, `producer_id`, `producer_seq`, `seq_id` |
//! | artifact | `run_id`*, `path`/`uri`/`url`*, `kind`, `info_json`/`info`, `producer_id`, `producer_seq`, `seq_id` |
//!
//! (* required: [`JsonlError::MissingField`].) A known key holding `null` counts as absent.
//!
//! - **JSON payloads.** A string under a `*_json` key is JSON text: it is checked and kept byte
//!   for byte (a non-JSON string is [`JsonlError::InvalidField`]; `""` means "not given"). A value under the short key
//!   (`action: 2`, `observation: {..}`, `metadata: {..}`) is stored re-serialised compactly.
//! - **Status words.** `completed`, `succeeded`, `success`, `ok`, `done`, `finished` ->
//!   SUCCEEDED; `failed`, `failure`, `error` -> FAILED; `cancelled`, `canceled`, `aborted`,
//!   `interrupted` -> CANCELLED; `skipped` -> SKIPPED (case-insensitive); a bare number is the
//!   protobuf enum value; anything else is [`JsonlError::InvalidField`].
//! - **Control mode** is normalised with [`ControlMode`](crate::ControlMode) (`agent_only` ->
//!   `agent`); an unknown spelling is [`JsonlError::InvalidField`].
//! - **Metadata discoverability.** An episode's `agent_id` and `control_mode` come from its top
//!   level, else from its metadata (top level of the object, then a nested `config`). Its
//!   metadata gets canonical `seed` and `game_id` keys when the worker sent them under any alias
//!   (`env_id`, `game`, `env`) or nested in `config`; the original keys are kept. The
//!   metadata's own value wins over a clashing top-level one. A `run_started` takes
//!   `agent_id` / `control_mode` from its `config` when they are not at the top level.
//!   Viewers use [`discover_episode_meta`].
//! - **Extra keys are never dropped.** Keys with no field of their own go into the record's
//!   JSON document: `info_json` for steps, run_completed and artifacts (BDI's `state`,
//!   `next_state`, `q_before`, `epsilon`, the duplicate `timestamp`, ...), `metadata_json` for
//!   episodes (`success`, ...), and `config_json` for run_started (merged into the `config`
//!   object). An extra key equal to one the document already has is not repeated; one with a
//!   different value is kept under the document's `_jsonl_extra` object. A document that is not
//!   an object cannot take extra keys: that line is [`JsonlError::InvalidField`]. A document is
//!   re-serialised (compactly) only when keys are added to it.
//! - **Run context.** [`JsonlReader`] remembers each run's `run_started` (agent, control mode,
//!   seed, game) in a bounded [`RunContext`] and fills them into that run's later steps and
//!   episodes that lack them. [`parse_line`] is stateless.
//!
//! # The canonical shape (what [`to_line`] writes)
//!
//! ```json
//! {"type":"step","schema":"gym_telemetry.v1","run_id":"r","episode_index":0,"step_index":3,
//!  "action_json":"1","reward":0.5,"ts_unix_ns":1795914168088378923,"control_mode":"agent"}
//! ```
//!
//! - `type`, then `"schema":"gym_telemetry.v1"`, then the record's fields in protobuf field
//!   order under their protobuf names. Required keys (`run_id`, the indices, `status`, `path`)
//!   are always written; every other field is left out when it has its default value (empty
//!   string, 0, false, no timestamp, no exit code / signal).
//! - `*_json` fields are written as JSON strings holding the record's exact text.
//! - Time is `ts_unix_ns`, an integer of Unix nanoseconds (exact; timestamps must lie in the
//!   i64 nanosecond range, 1677-2262).
//! - Floats are written by serde_json's shortest round-trip form and read with its
//!   `float_roundtrip` parser, so every finite f64 (including -0.0) comes back bit for bit.
//!   JSON has no NaN or infinity: a non-finite reward (an invalid record) is written as `null`.
//! - `status` is `succeeded`, `failed`, `cancelled`, `skipped` or `unspecified` (a number for a
//!   value outside the enum); `exit_code` and `signal` are written whenever they are set, 0
//!   included.
//!
//! A line with the `schema` marker is read verbatim: no alias discovery, no control-mode
//! rewriting (the mode is still checked), no run-context filling. Hence
//! `parse_line(to_line(r)) == r` for every record with a kind, valid JSON in its `*_json`
//! fields and finite rewards.
//!
//! # Errors and limits
//!
//! Every bad line gives a typed [`JsonlError`] with its 1-based line number, and the reader
//! goes on with the next line. A line that does not start with `{` is
//! [`JsonlError::NotJson`] (a worker's `print()`; the proxy passes it through), one that starts
//! with `{` but does not parse is [`JsonlError::Malformed`], unless what keeps it from parsing is a
//! bare `NaN`, `Infinity` or `-Infinity` (Python's `json.dumps` of a non-finite float): that is
//! [`JsonlError::NonFinite`], naming the field (non-finite rewards are rejected everywhere). Lines may end in `\r\n`; a UTF-8
//! byte-order mark and surrounding whitespace are ignored. The reader never buffers more than
//! `max_line_bytes + 1` bytes of a line ([`DEFAULT_MAX_LINE_BYTES`] by default); a longer line
//! is skipped as it streams past and reported as [`JsonlError::TooLong`].

mod context;
mod error;
mod fields;
mod meta;
mod parse;
mod reader;
mod write;

pub use context::{RunContext, RunDefaults};
pub use error::JsonlError;
pub use meta::{discover_episode_meta, EpisodeMeta};
pub use reader::{JsonlReader, ParsedLine, ReaderStats};
pub use write::{to_line, write_record};

use crate::pb::Record;

/// The longest line [`JsonlReader::new`] accepts (1 MiB, line ending excluded).
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// Parses one line (without its `\n`; a trailing `\r` is tolerated) into a record.
/// `line_no` (1-based) is only used in errors. Stateless: no [`RunContext`] is applied.
pub fn parse_line(line: &[u8], line_no: u64) -> Result<Record, JsonlError> {
    parse::parse(line, line_no).map(|p| p.record)
}
