//! Every kind of bad input gives its own typed error with the right 1-based line number, and
//! never stops the stream.

use std::io::{self, BufRead, Read};
use telemetry_core::{
    jsonl::{parse_line, JsonlError, JsonlReader, ParsedLine, ReaderStats, DEFAULT_MAX_LINE_BYTES},
    pb::{record::Kind, CompletionStatus, Record},
};

const GOOD: &str = r#"{"type":"step","run_id":"r","episode":0,"step":1,"reward":0.5}"#;

/// Reads everything: (line, label) for errors, (line, "ok") for records.
fn outcomes(input: &[u8]) -> Vec<(u64, &'static str)> {
    JsonlReader::new(input)
        .map(|item| match item {
            Ok(ParsedLine { line_no, .. }) => (line_no, "ok"),
            Err(e) => (e.line().expect("a data error has a line"), e.label()),
        })
        .collect()
}

fn err(line: &str) -> JsonlError {
    parse_line(line.as_bytes(), 7).expect_err(line)
}

#[test]
fn good_bad_good_gives_two_records_and_one_error() {
    let input = format!("{GOOD}\n{{\"type\":\"step\",\n{GOOD}\n");
    assert_eq!(
        outcomes(input.as_bytes()),
        [(1, "ok"), (2, "malformed"), (3, "ok")]
    );
}

#[test]
fn each_variant_from_crafted_input_and_the_stream_goes_on() {
    let mut input = Vec::new();
    let bad_lines: [&[u8]; 7] = [
        b"Episode 3 finished!",                         // 1 not_json
        b"{\"type\":\"step\",\"run_id\":",              // 3 malformed
        b"{\"type\":\"telepathy\",\"run_id\":\"r\"}",   // 5 unknown_type
        b"{\"run_id\":\"r\",\"episode\":0,\"step\":0}", // 7 missing_field (type)
        b"{\"type\":\"step\",\"run_id\":\"r\",\"episode\":0,\"step\":0,\"reward\":\"high\"}", // 9
        b"{\"type\":\"step\",\"run_id\":\"\xff\xfe\"}", // 11 invalid_utf8
        b"{\"type\":\"episode\",\"episode\":0}",        // 13 missing_field (run_id)
    ];
    for bad in bad_lines {
        input.extend_from_slice(bad);
        input.push(b'\n');
        input.extend_from_slice(GOOD.as_bytes());
        input.push(b'\n');
    }
    let mut reader = JsonlReader::new(&input[..]);
    let got: Vec<(u64, &'static str)> = reader
        .by_ref()
        .map(|item| match item {
            Ok(p) => (p.line_no, "ok"),
            Err(e) => (e.line().expect("line"), e.label()),
        })
        .collect();
    let labels = [
        "not_json",
        "malformed",
        "unknown_type",
        "missing_field",
        "invalid_field",
        "invalid_utf8",
        "missing_field",
    ];
    let expected: Vec<(u64, &str)> = labels
        .iter()
        .enumerate()
        .flat_map(|(i, l)| [(2 * i as u64 + 1, *l), (2 * i as u64 + 2, "ok")])
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        reader.stats(),
        ReaderStats {
            lines: 14,
            records: 7,
            blank: 0,
            not_json: 1,
            rejected: 6
        }
    );
}

#[test]
fn error_details_name_the_problem() {
    match err("hello from print()") {
        JsonlError::NotJson { line: 7, text } => assert_eq!(text, "hello from print()"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(err("[1,2]"), JsonlError::NotJson { .. }));
    assert!(matches!(
        err(r#"{"a":1} trailing"#),
        JsonlError::Malformed { line: 7, .. }
    ));
    match err(r#"{"type":"telepathy","run_id":"r"}"#) {
        JsonlError::UnknownType { line: 7, type_name } => assert_eq!(type_name, "telepathy"),
        other => panic!("unexpected {other:?}"),
    }
    let missing = |line: &str| match err(line) {
        JsonlError::MissingField { line: 7, field } => field,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(missing(r#"{"run_id":"r"}"#), "type");
    assert_eq!(missing(r#"{"type":"step","episode":0,"step":0}"#), "run_id");
    assert_eq!(
        missing(r#"{"type":"step","run_id":"r","step":0}"#),
        "episode_index"
    );
    assert_eq!(
        missing(r#"{"type":"step","run_id":"r","episode":0,"step":null}"#),
        "step_index"
    );
    assert_eq!(
        missing(r#"{"type":"artifact","run_id":"r","kind":"video"}"#),
        "path"
    );
    assert_eq!(
        missing(r#"{"type":"run_completed","run_id":"r"}"#),
        "status"
    );

    let invalid = |line: &str| match err(line) {
        JsonlError::InvalidField {
            line: 7,
            field,
            reason,
        } => (field, reason),
        other => panic!("unexpected {other:?}"),
    };
    let step =
        |extra: &str| format!(r#"{{"type":"step","run_id":"r","episode":0,"step":0,{extra}}}"#);
    assert_eq!(invalid(&step(r#""reward":"high""#)).0, "reward");
    assert_eq!(invalid(&step(r#""reward":[1]"#)).0, "reward");
    assert_eq!(invalid(&step(r#""terminated":"yes""#)).0, "terminated");
    let (field, reason) = invalid(&step(r#""control_mode":"telepathy""#));
    assert_eq!(field, "control_mode");
    assert!(reason.contains("telepathy"), "{reason}");
    assert_eq!(
        invalid(&step(r#""action_json":"{not json""#)).0,
        "action_json"
    );
    let empty_json = step(r#""action_json":"","info_json":"","state":3"#);
    match parse_line(empty_json.as_bytes(), 1)
        .expect("empty *_json means not given")
        .kind
    {
        Some(Kind::Step(s)) => assert_eq!(
            (s.action_json.as_str(), s.info_json.as_str()),
            ("", r#"{"state":3}"#)
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(invalid(&step(r#""ts":"yesterday""#)).0, "ts");
    assert_eq!(invalid(&step(r#""ts_unix_ns":"1""#)).0, "ts_unix_ns");
    assert_eq!(
        invalid(&step(r#""payload_version":4294967296"#)).0,
        "payload_version"
    );
    assert_eq!(
        invalid(r#"{"type":"step","run_id":"r","episode":-1,"step":0}"#).0,
        "episode"
    );
    assert_eq!(invalid(r#"{"type":7,"run_id":"r"}"#).0, "type");
    assert_eq!(
        invalid(
            r#"{"type":"episode","run_id":"r","episode":0,"metadata":{"control_mode":"sometimes"}}"#
        )
        .0,
        "metadata.control_mode"
    );
    assert_eq!(
        invalid(r#"{"type":"episode","run_id":"r","episode":0,"metadata":[1],"success":true}"#).0,
        "metadata"
    );
    let (field, reason) = invalid(r#"{"type":"run_completed","run_id":"r","status":"exploded"}"#);
    assert_eq!(field, "status");
    assert!(reason.contains("exploded"), "{reason}");
    assert_eq!(
        invalid(r#"{"type":"run_completed","run_id":"r","status":"failed","exit_code":1.5}"#).0,
        "exit_code"
    );
}

#[test]
fn too_long_line_is_skipped_without_stopping() {
    let mut input = Vec::with_capacity(2 * DEFAULT_MAX_LINE_BYTES + 200);
    input.extend_from_slice(br#"{"type":"step","run_id":"r","episode":0,"step":0,"pad":""#);
    let pad = 2 * DEFAULT_MAX_LINE_BYTES - input.len() - 2;
    input.resize(input.len() + pad, b'x');
    input.extend_from_slice(b"\"}");
    assert_eq!(input.len(), 2 * DEFAULT_MAX_LINE_BYTES);
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(GOOD.as_bytes());
    let mut reader = JsonlReader::new(&input[..]);
    match reader.next() {
        Some(Err(JsonlError::TooLong { line, len, max })) => {
            assert_eq!(
                (line, len, max),
                (1, 2 * DEFAULT_MAX_LINE_BYTES as u64, DEFAULT_MAX_LINE_BYTES)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let next = reader
        .next()
        .expect("an item")
        .expect("the next line parses");
    assert_eq!(next.line_no, 2);
    assert!(reader.next().is_none());
}

#[test]
fn crlf_blank_lines_and_a_final_line_without_newline() {
    let input = format!("{GOOD}\r\n\r\n   \n\tnot json\r\n{GOOD}");
    let items: Vec<_> = JsonlReader::new(input.as_bytes()).collect();
    assert_eq!(items.len(), 3);
    assert!(matches!(items[0], Ok(ParsedLine { line_no: 1, .. })));
    match &items[1] {
        Err(JsonlError::NotJson { line: 4, text }) => assert_eq!(text, "\tnot json"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(items[2], Ok(ParsedLine { line_no: 5, .. })));
    // parse_line tolerates the \r too, and a byte-order mark.
    let with_cr = format!("\u{feff}{GOOD}\r");
    assert!(parse_line(with_cr.as_bytes(), 1).is_ok());
}

/// Yields `data`, then fails.
struct ThenFail<'a>(&'a [u8]);
impl Read for ThenFail<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "worker died"));
        }
        let n = self.0.read(buf)?;
        Ok(n)
    }
}

#[test]
fn io_error_is_typed_and_ends_the_stream_after_the_good_lines() {
    let data = format!("{GOOD}\n{GOOD}\n");
    let reader: Box<dyn BufRead> = Box::new(io::BufReader::new(ThenFail(data.as_bytes())));
    let items: Vec<_> = JsonlReader::new(reader).collect();
    assert_eq!(items.len(), 3);
    assert!(items[0].is_ok() && items[1].is_ok());
    match &items[2] {
        Err(e @ JsonlError::Io { source }) => {
            assert_eq!(source.kind(), io::ErrorKind::BrokenPipe);
            assert_eq!((e.line(), e.label()), (None, "io"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn extra_keys_are_kept_and_clashes_are_not_lost() {
    let line = r#"{"type":"episode","run_id":"r","episode":2,"reward":3.5,"success":true,"seed":7,"metadata":{"seed":8,"success":true,"env":"E"}}"#;
    let Some(Kind::Episode(e)) = parse_line(line.as_bytes(), 1).expect("parses").kind else {
        panic!("not an episode")
    };
    assert_eq!(e.total_reward, 3.5);
    let meta: serde_json::Value = serde_json::from_str(&e.metadata_json).expect("json");
    assert_eq!(
        meta,
        serde_json::json!({"seed":8,"success":true,"env":"E","_jsonl_extra":{"seed":7},"game_id":"E"})
    );

    let line = r#"{"type":"run_completed","run_id":"r","status":"FAILED","error":"boom","exit_code":3,"signal":9,"host":"h1"}"#;
    let Some(Kind::RunCompleted(c)) = parse_line(line.as_bytes(), 1).expect("parses").kind else {
        panic!("not run_completed")
    };
    assert_eq!(c.status(), CompletionStatus::Failed);
    assert_eq!(
        (c.error.as_str(), c.exit_code, c.signal),
        ("boom", Some(3), Some(9))
    );
    assert_eq!(c.info_json, r#"{"host":"h1"}"#);

    let line = r#"{"type":"run_started","run_id":"r","control_mode":"manual","seed":5,"config":{"seed":5,"agent_id":"cfg"}}"#;
    let Some(Kind::RunStarted(s)) = parse_line(line.as_bytes(), 1).expect("parses").kind else {
        panic!("not run_started")
    };
    assert_eq!(
        (s.agent_id.as_str(), s.control_mode.as_str()),
        ("cfg", "human")
    );
    assert_eq!(
        s.config_json, r#"{"seed":5,"agent_id":"cfg"}"#,
        "equal extra not repeated"
    );
}

#[test]
fn legacy_status_words_and_exit_codes() {
    let status = |extra: &str| -> CompletionStatus {
        let line = format!(r#"{{"type":"run_completed","run_id":"r"{extra}}}"#);
        match parse_line(line.as_bytes(), 1).expect(&line) {
            Record {
                kind: Some(Kind::RunCompleted(c)),
            } => c.status(),
            other => panic!("unexpected {other:?}"),
        }
    };
    for word in ["completed", "succeeded", "success", "OK"] {
        assert_eq!(
            status(&format!(r#","status":"{word}""#)),
            CompletionStatus::Succeeded
        );
    }
    assert_eq!(
        status(r#","status":"cancelled""#),
        CompletionStatus::Cancelled
    );
    assert_eq!(
        status(r#","status":"skipped","reason":"dry-run""#),
        CompletionStatus::Skipped
    );
    assert_eq!(status(r#","exit_code":0"#), CompletionStatus::Succeeded);
    assert_eq!(status(r#","exit_code":2"#), CompletionStatus::Failed);
    assert_eq!(status(r#","signal":15"#), CompletionStatus::Failed);
    assert_eq!(status(r#","status":3"#), CompletionStatus::Cancelled);
}

#[test]
fn labels_are_distinct() {
    let errors = [
        JsonlError::Io {
            source: io::Error::other("x"),
        },
        JsonlError::TooLong {
            line: 1,
            len: 2,
            max: 1,
        },
        JsonlError::InvalidUtf8 { line: 1 },
        JsonlError::NotJson {
            line: 1,
            text: String::new(),
        },
        JsonlError::Malformed {
            line: 1,
            reason: String::new(),
        },
        JsonlError::UnknownType {
            line: 1,
            type_name: String::new(),
        },
        JsonlError::MissingField {
            line: 1,
            field: "f",
        },
        JsonlError::InvalidField {
            line: 1,
            field: String::new(),
            reason: String::new(),
        },
        JsonlError::NonFinite {
            line: 1,
            field: String::new(),
            token: "NaN",
        },
    ];
    let mut labels: Vec<&str> = errors.iter().map(JsonlError::label).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), errors.len());
    assert!(errors[1..].iter().all(|e| e.line() == Some(1)));
}
