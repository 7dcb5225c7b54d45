//! Fuzzes the predecessor's API: arbitrary bytes decoded as its `RunStep`, `RunEpisode` and
//! `SubmitRunRequest` (and as our step and episode, for the streams served to old clients),
//! transcoded as the legacy service does, the records then validated as ingest does. Whatever the
//! old API decodes must transcode, keep its fields, and pass or fail validation with a typed
//! error. Checks: `telemetry_server::fuzzing::legacy_messages`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| telemetry_server::fuzzing::legacy_messages(data));
