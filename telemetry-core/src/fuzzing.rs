//! Entry points for the `jsonl_line` and `ingest_batch` fuzz targets and their corpus replay
//! test (feature `fuzzing`; not part of the public API).
//!
//! The fuzz targets (nightly, `fuzz/`) and the stable replay of their corpora
//! (`tests/fuzz_corpus.rs`, run by `cargo test`) must check the same properties, so the checks
//! live here, once. Each function takes untrusted bytes, runs them through the same code the
//! proxy or the daemon runs, and panics only when a promise of that code is broken (never on
//! bad input, which must come back as a typed error).

use crate::{
    jsonl::{parse_line, to_line, JsonlReader},
    pb::{record::Kind, IngestBatch, Record},
    timestamp,
    validate::{self, Limits},
    ControlMode,
};
use prost::Message;

/// Limits small enough for a fuzzer's short inputs to reach every size rule.
const SMALL: Limits = Limits {
    max_record_bytes: 256,
    max_frame_ref_len: 16,
    max_render_hint_bytes: 32,
};

/// One worker stdout line (and the bytes as a whole stream): the stateless parser, the streaming
/// reader with and without run context, then the daemon's validation of every record produced.
pub fn jsonl_line(data: &[u8]) {
    match parse_line(data, 1) {
        Ok(record) => {
            assert!(record.kind.is_some(), "a parsed line has a kind");
            let line = to_line(&record);
            let back = parse_line(line.as_bytes(), 1).expect("a written line parses");
            assert_eq!(back, record, "canonical round trip of {line}");
            ingest_record(&record);
        }
        Err(e) => {
            assert_eq!(e.line(), Some(1));
            let _ = (e.to_string(), e.label());
        }
    }
    // A small limit also reaches the over-long-line path; the default one parses every line,
    // with the run context filling later lines from a `run_started`.
    for reader in [
        JsonlReader::with_max_line_bytes(data, 64),
        JsonlReader::new(data),
        JsonlReader::new(data).without_context(),
    ] {
        let mut reader = reader;
        let (mut last_line, mut records) = (0, 0u64);
        for item in reader.by_ref() {
            match item {
                Ok(parsed) => {
                    assert!(parsed.line_no > last_line, "line numbers increase");
                    last_line = parsed.line_no;
                    records += 1;
                    ingest_record(&parsed.record);
                }
                Err(e) => {
                    let line = e.line().expect("a slice reader has no I/O errors");
                    assert!(line > last_line, "line numbers increase");
                    last_line = line;
                }
            }
        }
        let stats = reader.stats();
        assert_eq!(stats.records, records, "{stats:?}");
        assert!(stats.lines >= last_line, "{stats:?} after line {last_line}");
        assert!(stats.records + stats.blank + stats.not_json + stats.rejected <= stats.lines);
    }
}

/// Bytes as the daemon receives them: an `IngestBatch` (a `Publish` request) and, on their own,
/// one `Record` (a disk-queue frame, a legacy message's re-read); every record decoded is
/// validated as ingest does it.
pub fn ingest_batch(data: &[u8]) {
    if let Ok(batch) = IngestBatch::decode(data) {
        for record in &batch.records {
            ingest_record(record);
        }
    }
    if let Ok(record) = Record::decode(data) {
        ingest_record(&record);
    }
}

/// The daemon's check of one record (`validate::normalize`, default and small limits), and what
/// must hold of its outcome. Shared with the legacy transcoding target in `telemetry-server`.
pub fn ingest_record(record: &Record) {
    // What prost decoded re-encodes to bytes that decode to the same encoding.
    let bytes = record.encode_to_vec();
    let again = Record::decode(bytes.as_slice()).expect("an encoded record decodes");
    assert_eq!(again.encode_to_vec(), bytes, "protobuf round trip");

    for limits in [Limits::default(), SMALL] {
        let checked = validate::validate(record, &limits);
        let mut normalized = record.clone();
        let result = validate::normalize(&mut normalized, &limits);
        assert_eq!(
            checked.as_ref().err().map(validate::ValidationError::label),
            result.as_ref().err().map(validate::ValidationError::label),
            "validate and normalize agree"
        );
        match result {
            Err(e) => {
                let _ = e.to_string();
                assert_eq!(
                    normalized.encode_to_vec(),
                    bytes,
                    "a rejected record is not modified"
                );
            }
            Ok(()) => valid_record(&normalized, &limits),
        }
    }
}

/// What holds of every record the daemon accepts (after `normalize`).
fn valid_record(r: &Record, limits: &Limits) {
    // Normalizing is idempotent: a stored record passes the check again, unchanged.
    let mut twice = r.clone();
    validate::normalize(&mut twice, limits).expect("a normalized record is still valid");
    assert_eq!(
        twice.encode_to_vec(),
        r.encode_to_vec(),
        "normalize is idempotent"
    );
    let kind = r.kind.as_ref().expect("a valid record has a kind");
    let mode = match kind {
        Kind::Step(s) => Some(&s.control_mode),
        Kind::Episode(e) => Some(&e.control_mode),
        Kind::RunStarted(s) => Some(&s.control_mode),
        Kind::RunCompleted(_) | Kind::Artifact(_) | Kind::Scalar(_) => None,
    };
    if let Some(mode) = mode {
        let parsed = ControlMode::from_wire(mode).expect("a valid record's mode parses");
        assert_eq!(parsed.as_str(), mode, "the mode is canonical");
    }
    // A stored record can be dumped as JSONL and read back (`gym-telemetry-daemon dump`), the
    // same record but for time, which JSONL keeps as i64 Unix nanoseconds.
    let line = to_line(r);
    let back = parse_line(line.as_bytes(), 1).unwrap_or_else(|e| panic!("{e}: {line}"));
    // Compared encoded: a NaN scalar value is data (and NaN != NaN); its JSONL form is "NaN".
    assert_eq!(
        back.encode_to_vec(),
        with_nanos_time(r).encode_to_vec(),
        "JSONL round trip of {line}"
    );
}

/// `r` as JSONL keeps it: its timestamp saturated to, and normalized from, i64 nanoseconds, and a
/// NaN scalar value as the one NaN the line's `"NaN"` reads back as.
fn with_nanos_time(r: &Record) -> Record {
    let mut r = r.clone();
    let ts = match &mut r.kind {
        Some(Kind::Step(s)) => &mut s.timestamp,
        Some(Kind::Episode(e)) => &mut e.timestamp,
        Some(Kind::RunStarted(s)) => &mut s.timestamp,
        Some(Kind::RunCompleted(c)) => &mut c.timestamp,
        Some(Kind::Artifact(a)) => &mut a.timestamp,
        Some(Kind::Scalar(v)) => {
            if v.value.is_nan() {
                v.value = f64::NAN;
            }
            &mut v.timestamp
        }
        None => return r,
    };
    if let Some(t) = ts {
        *t = timestamp::from_unix_nanos(timestamp::to_unix_nanos(t));
    }
    r
}
