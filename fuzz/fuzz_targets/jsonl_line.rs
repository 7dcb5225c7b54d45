//! Fuzzes the worker JSONL contract with arbitrary bytes: the line parser and the streaming
//! reader must never panic, must report every error with a line number, and every record they
//! produce must survive the canonical writer's round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telemetry_core::jsonl::{parse_line, to_line, JsonlReader};

fuzz_target!(|data: &[u8]| {
    match parse_line(data, 1) {
        Ok(record) => {
            let line = to_line(&record);
            let back = parse_line(line.as_bytes(), 1).expect("a written line parses");
            assert_eq!(back, record, "canonical round trip of {line}");
        }
        Err(e) => assert_eq!(e.line(), Some(1)),
    }
    // A small limit so the fuzzer also reaches the over-long-line path.
    let mut last_line = 0;
    for item in JsonlReader::with_max_line_bytes(data, 64) {
        match item {
            Ok(parsed) => {
                assert!(parsed.line_no > last_line, "line numbers increase");
                last_line = parsed.line_no;
            }
            Err(e) => {
                let line = e.line().expect("a slice reader has no I/O errors");
                assert!(line > last_line, "line numbers increase");
                last_line = line;
            }
        }
    }
});
