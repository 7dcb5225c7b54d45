//! `https://` endpoints: a CA file that cannot be used stops the shim at `Telemetry::new` with an
//! error naming it, and TLS never falls back to plaintext. (Delivery over TLS to the real
//! daemon is the daemon's `e2e_tls` test.)

mod common;

use common::{config, step, WAIT};
use telemetry_shim::{fake_ingest::FakeIngest, ConfigError, ShimError, Telemetry};

#[test]
fn an_https_endpoint_with_a_missing_ca_file_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-ca.pem");
    let mut c = config("https://127.0.0.1:50151", Some(&dir.path().join("q")));
    c.tls_ca_file = Some(missing.clone());
    let err = Telemetry::new(c).expect_err("the CA file is missing");
    match &err {
        ShimError::Config(ConfigError::TlsCaFile { path, reason }) => {
            assert_eq!(path, &missing);
            assert!(reason.contains("cannot open"), "{reason}");
        }
        other => panic!("expected a CA file error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("GYM_TELEMETRY_TLS_CA_FILE"), "{text}");
    assert!(text.contains("no-such-ca.pem"), "{text}");
    // The queue directory was released: a corrected configuration starts on it.
    let mut ok = config("https://127.0.0.1:50151", Some(&dir.path().join("q")));
    ok.tls_ca_file = None;
    Telemetry::new(ok).expect("starts").abandon();
}

#[test]
fn https_to_a_plaintext_server_delivers_nothing() {
    let fake = FakeIngest::start().expect("fake ingest");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).expect("write");
    let mut c = config(&format!("https://{}", fake.addr()), None);
    c.tls_ca_file = Some(ca);
    let shim = Telemetry::new(c).expect("shim");
    for i in 0..5 {
        shim.step(step(i)).expect("accepted");
    }
    // A peer that does not speak TLS cannot heal by waiting: answered at once.
    let started = std::time::Instant::now();
    match shim.flush(WAIT) {
        Err(ShimError::NotDelivered { pending, .. }) => assert_eq!(pending, 5),
        other => panic!("expected NotDelivered, got {other:?}"),
    }
    assert!(started.elapsed() < WAIT / 2, "answered at once");
    assert_eq!(fake.state().stored(), 0, "no plaintext fallback");
    assert!(shim.stats().last_error.is_some());
}
