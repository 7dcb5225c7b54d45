//! `dump --format parquet -o FILE` and `dump --events` as a user runs them: the file is
//! complete, private (0600) and readable by a Parquet reader; JSONL goes to a file too.
#![allow(clippy::unwrap_used)]

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use parquet::file::reader::{FileReader, SerializedFileReader};
use telemetry_core::pb::{Artifact, Record, RunStarted, RunStep};
use telemetry_store::{Store, StoreConfig};

fn daemon() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gym-telemetry-daemon"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GYM_TELEMETRY") {
            c.env_remove(k);
        }
    }
    c
}

fn filled(var: &Path) {
    let mut store = Store::open(StoreConfig::in_var_dir(var)).unwrap();
    let mut batch: Vec<Record> = (0..3u64)
        .map(|i| {
            RunStep {
                run_id: "r".into(),
                step_index: i,
                action_json: "1".into(),
                control_mode: "agent".into(),
                ..Default::default()
            }
            .into()
        })
        .collect();
    batch.push(
        RunStarted {
            run_id: "r".into(),
            ..Default::default()
        }
        .into(),
    );
    batch.push(
        Artifact {
            run_id: "r".into(),
            kind: "video".into(),
            path: "v.mp4".into(),
            ..Default::default()
        }
        .into(),
    );
    store.append(&mut batch, &[]).unwrap();
}

#[test]
fn parquet_to_a_file_and_events_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    filled(&var);

    let file = dir.path().join("steps.parquet");
    let out = daemon()
        .args(["dump", "--format", "parquet", "--run", "r", "--var-dir"])
        .arg(&var)
        .arg("-o")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exported 3 steps rows in 1 row groups"),
        "{out:?}"
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!dir.path().join("steps.parquet.partial").exists());
    let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 3);

    let events = dir.path().join("events.jsonl");
    let out = daemon()
        .args(["dump", "--events", "--var-dir"])
        .arg(&var)
        .arg("-o")
        .arg(&events)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&events).unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.contains(r#""type":"run_started""#) {
                "run_started"
            } else if l.contains(r#""type":"artifact""#) {
                "artifact"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(kinds, ["run_started", "artifact"], "{text}");
}

#[test]
fn events_refuse_an_agent_filter_and_parquet_streams_to_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    filled(&var);
    let out = daemon()
        .args(["dump", "--events", "--agent", "a", "--var-dir"])
        .arg(&var)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // Parquet to a pipe (stdout is not a terminal here) works too.
    let out = daemon()
        .args(["dump", "--format", "parquet", "--episodes", "--var-dir"])
        .arg(&var)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(&out.stdout[..4], b"PAR1");
    assert_eq!(&out.stdout[out.stdout.len() - 4..], b"PAR1");
}
