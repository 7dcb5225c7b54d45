//! Fuzzes the worker JSONL contract with arbitrary bytes: the line parser, the streaming reader
//! (with and without run context) and the daemon's validation of every record they produce must
//! never panic, must report every error with a line number, and every record must survive the
//! canonical writer's round trip. The checks are `telemetry_core::fuzzing::jsonl_line`, shared
//! with the stable corpus replay (`telemetry-core/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| telemetry_core::fuzzing::jsonl_line(data));
