//! Entry points for the `legacy_transcode` fuzz target and its corpus replay test (feature
//! `fuzzing`; not part of the public API).
//!
//! The predecessor's clients send `gymgui.trainer` messages that we re-read as our own by their
//! wire bytes ([`crate::legacy`]) and `SubmitRun` configs that we turn into our submissions
//! ([`crate::legacy_config`], [`crate::legacy_runs`]). Those modules are private; this one runs
//! arbitrary bytes through the same functions the service calls and panics only when a promise
//! is broken: a message the old API decodes always becomes one of our records (which ingest
//! then validates), the transcoding keeps every field the old API has, our records always
//! re-read as the old API's for its streams, and a config that passes validation becomes a
//! submission our dispatcher can check.

use crate::{
    dispatch::SubmitLimits,
    legacy::{episode_record, parse_submit, step_record, transcode},
    legacy_config::{is_train_run_config, parse_train_run_config},
    legacy_runs::{build_submission, run_id_for},
};
use prost::Message;
use prost_types::Timestamp;
use std::path::Path;
use telemetry_core::{
    fuzzing::ingest_record,
    pb::{self, legacy, record::Kind},
};

/// Decodes `data` as each of the predecessor's messages we accept (and as our own step and
/// episode, for the streams we serve the old clients), transcodes whatever decodes, and, when
/// `data` is UTF-8, also submits it as a `config_json`.
pub fn legacy_messages(data: &[u8]) {
    if let Ok(old) = legacy::RunStep::decode(data) {
        let record = step_record(old.clone()).expect("a legacy step always transcodes");
        ingest_record(&record);
        let Some(Kind::Step(ours)) = &record.kind else {
            panic!("a legacy step became {record:?}")
        };
        let back: legacy::RunStep = transcode(ours).expect("our step re-reads as a legacy one");
        assert_eq!(
            back.encode_to_vec(),
            old.encode_to_vec(),
            "transcoding keeps every legacy step field"
        );
    }
    if let Ok(old) = legacy::RunEpisode::decode(data) {
        let record = episode_record(old.clone()).expect("a legacy episode always transcodes");
        ingest_record(&record);
        let Some(Kind::Episode(ours)) = &record.kind else {
            panic!("a legacy episode became {record:?}")
        };
        let back: legacy::RunEpisode =
            transcode(ours).expect("our episode re-reads as a legacy one");
        assert_eq!(
            back.encode_to_vec(),
            old.encode_to_vec(),
            "transcoding keeps every legacy episode field"
        );
    }
    // The follow direction: every stored record is re-read as the old type (a failure would
    // silently drop it from the old client's stream).
    if let Ok(ours) = pb::RunStep::decode(data) {
        transcode::<_, legacy::RunStep>(&ours).expect("every step of ours re-reads as legacy");
    }
    if let Ok(ours) = pb::RunEpisode::decode(data) {
        transcode::<_, legacy::RunEpisode>(&ours)
            .expect("every episode of ours re-reads as legacy");
    }
    if let Ok(req) = legacy::SubmitRunRequest::decode(data) {
        submit(&req);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        submit(&legacy::SubmitRunRequest {
            run_id: String::new(),
            config_json: text.to_owned(),
        });
    }
}

/// `SubmitRun` up to the point where it would register the run and spawn a worker: the same
/// size check, parsing and choice of form, then our dispatcher's checks of the result.
fn submit(req: &legacy::SubmitRunRequest) {
    let limits = SubmitLimits::default();
    if req.config_json.len() > limits.max_metadata_bytes {
        return;
    }
    let Ok(cfg) = serde_json::from_str::<serde_json::Value>(&req.config_json) else {
        return;
    };
    if cfg.as_object().is_some_and(is_train_run_config) || !cfg.is_object() {
        let Ok(train) = parse_train_run_config(&cfg) else {
            return;
        };
        // The canonical form is JSON that reads back as the normalised config.
        let canonical = train.canonical();
        let reread: serde_json::Value = serde_json::from_str(&canonical)
            .unwrap_or_else(|e| panic!("canonical config is not JSON ({e}): {canonical}"));
        assert_eq!(reread, train.normalised, "canonical JSON round trip");
        assert_eq!(train.digest().len(), 64);
        let now = Timestamp {
            seconds: 1_760_709_780,
            nanos: 123_456_000,
        };
        let run_id = run_id_for(&req.run_id, &train, &now);
        if req.run_id.is_empty() {
            telemetry_core::check_run_id(&run_id).expect("a derived run id is path safe");
        }
        // A worker config would be written to the run directory: not from a fuzzer.
        if train.worker.config.is_none() {
            let sub = build_submission(
                &train,
                &run_id,
                Path::new("/nonexistent"),
                Path::new("demo"),
                &[0],
            )
            .expect("a submission without a worker config needs no I/O");
            dispatchable(&sub.request);
            assert_eq!(sub.digest, train.digest());
            let argv = sub.request.command.map(|c| c.argv).unwrap_or_default();
            assert!(
                argv.first().is_some_and(|a| !a.is_empty()),
                "argv names a program"
            );
        }
    } else if let Ok(ours) = parse_submit(req) {
        dispatchable(&ours);
    }
}

/// Our dispatcher's checks before anything is registered (typed errors, never a panic); a
/// request's `metadata_json` is JSON whenever it came from a parsed config.
fn dispatchable(req: &pb::SubmitRunRequest) {
    let _ = SubmitLimits::default()
        .check(req)
        .map_err(|e| e.to_string());
    let _ = telemetry_core::check_run_id(&req.run_id).map_err(|e| e.to_string());
    let _ = telemetry_core::ControlMode::from_wire(&req.control_mode).map_err(|e| e.to_string());
    assert!(
        req.metadata_json.is_empty()
            || serde_json::from_str::<serde_json::Value>(&req.metadata_json).is_ok(),
        "metadata_json is JSON: {}",
        req.metadata_json
    );
}
