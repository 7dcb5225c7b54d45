//! The `scalar` line of the JSONL contract: a training curve point, NaN and infinities included.

use telemetry_core::{
    jsonl::{parse_line, to_line},
    pb::{record::Kind, Record, Scalar},
};

fn scalar(value: f64) -> Record {
    Scalar {
        run_id: "r".into(),
        tag: "losses/value_loss".into(),
        value,
        step: 1024,
        ..Default::default()
    }
    .into()
}

#[test]
fn scalars_round_trip_including_nan_and_infinities() {
    for v in [0.25, -0.0, f64::INFINITY, f64::NEG_INFINITY, 1e-300] {
        let r = scalar(v);
        let back = parse_line(to_line(&r).as_bytes(), 1).expect("reads back");
        assert_eq!(back, r, "{v}");
    }
    let line = to_line(&scalar(f64::NAN));
    assert!(line.contains(r#""value":"NaN""#), "{line}");
    match parse_line(line.as_bytes(), 1).expect("reads back").kind {
        Some(Kind::Scalar(s)) => assert!(s.value.is_nan()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_hand_written_scalar_line_accepts_global_step_and_rejects_unknown_keys() {
    let ok = br#"{"type":"scalar","run_id":"r","tag":"charts/SPS","value":812,"global_step":4096}"#;
    match parse_line(ok, 7).expect("valid").kind {
        Some(Kind::Scalar(s)) => {
            assert_eq!(
                (s.tag.as_str(), s.value, s.step),
                ("charts/SPS", 812.0, 4096)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let typo = br#"{"type":"scalar","run_id":"r","tag":"t","value":1,"stpe":3}"#;
    let err = parse_line(typo, 8).expect_err("unknown key");
    assert!(err.to_string().contains("stpe"), "{err}");
    let no_value = br#"{"type":"scalar","run_id":"r","tag":"t"}"#;
    let err = parse_line(no_value, 9).expect_err("no value");
    assert!(err.to_string().contains("value"), "{err}");
    let text = br#"{"type":"scalar","run_id":"r","tag":"t","value":"high"}"#;
    assert!(parse_line(text, 10).is_err());
}
