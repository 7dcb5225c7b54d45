//! Fuzzes ingest validation: arbitrary bytes decoded as an `IngestBatch` (and as one `Record`),
//! every record validated and normalized as the daemon does, with default and small limits.
//! Validation must return a typed error or a record that stays valid, unchanged, when checked
//! again and that survives the JSONL dump round trip. Checks: `telemetry_core::fuzzing::ingest_batch`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| telemetry_core::fuzzing::ingest_batch(data));
