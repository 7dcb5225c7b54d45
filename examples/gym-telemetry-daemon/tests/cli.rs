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

/// `import-tensorboard` against a `serve` with the default credentials: the token is found
/// through `--var-dir`, a rerun stores nothing, and `--follow --idle-exit-secs` ends by itself.
#[test]
fn import_tensorboard_through_a_serving_daemon() {
    use std::io::BufRead;
    let var = tempfile::tempdir().unwrap();
    let mut serve = daemon()
        .args(["serve", "--var-dir"])
        .arg(var.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let endpoint = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("gym-telemetry-daemon listening on ")
                .map(str::to_owned)
        })
        .expect("the daemon prints its endpoint");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../telemetry-tensorboard/tests/fixtures/tbx");
    let import = |extra: &[&str]| {
        daemon()
            .args(["import-tensorboard", "--run-id", "cli-run", "--endpoint"])
            .arg(&endpoint)
            .arg("--var-dir")
            .arg(var.path())
            .args(extra)
            .arg(&fixtures)
            .output()
            .unwrap()
    };
    let first = import(&[]);
    let second = import(&[
        "--follow",
        "--idle-exit-secs",
        "1",
        "--poll-interval-ms",
        "50",
    ]);
    let dump = daemon()
        .args(["dump", "--scalars", "--run", "cli-run", "--var-dir"])
        .arg(var.path())
        .output()
        .unwrap();
    // Stop the daemon this test started (by its pid), then look at what happened.
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    let _ = serve.wait();
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert!(out(&first).contains(" stored=18 "), "{}", out(&first));
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    assert!(
        out(&second).contains(" stored=0 duplicates=3 "),
        "{}",
        out(&second)
    );
    assert_eq!(out(&dump).lines().count(), 18, "{}", out(&dump));
}

/// `serve` prints the dashboard's login URL (with the operator token, for the operator's
/// terminal) and logs nothing with the token in it; a `--web-listen` that is no address is refused.
#[test]
fn serve_prints_the_web_login_url_and_logs_no_token() {
    use std::io::BufRead;
    let var = tempfile::tempdir().unwrap();
    let mut serve = daemon()
        .args(["serve", "--var-dir"])
        .arg(var.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--web-listen", "127.0.0.1:0", "--log", "debug"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("web dashboard: ").map(str::to_owned))
        .expect("the daemon prints the dashboard URL");
    let token = std::fs::read_to_string(var.path().join("auth-token")).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    let out = serve.wait_with_output().unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with(&format!("/?token={}", token.trim())), "{url}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains(token.trim()),
        "the token is in the log: {log}"
    );

    let off = daemon()
        .args(["serve", "--var-dir"])
        .arg(var.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--web-listen", "nowhere"])
        .output()
        .unwrap();
    assert_ne!(off.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&off.stderr).contains("--web-listen \"nowhere\""));
}
