//! The daemon's command line as a user meets it: a token on the command line (visible to every
//! local account in `ps`) is refused before anything starts, and says what to use instead.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn daemon() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gym-telemetry-daemon"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GYM_TELEMETRY") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn a_token_in_argv_is_refused_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = daemon()
        .args(["serve", "--var-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--auth-token", "s3cret"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auth-token-file"), "{err}");
    assert!(
        !err.contains("s3cret"),
        "the refusal does not echo the token: {err}"
    );
    assert!(
        !dir.path().join("telemetry.sqlite").exists(),
        "nothing started"
    );
}

#[test]
fn the_help_offers_a_token_file_and_the_insecure_switch() {
    let out = daemon().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--auth-token-file"), "{help}");
    assert!(help.contains("--insecure-no-auth"), "{help}");
    assert!(
        !help.contains("--auth-token <"),
        "the argv token is not offered: {help}"
    );
}

#[test]
fn other_subcommands_still_parse() {
    let dir = tempfile::tempdir().unwrap();
    let out = daemon()
        .args(["dump", "--var-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    // No store there: a clear error, not a crash (a panic exits 101).
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no store"),
        "{out:?}"
    );
}
