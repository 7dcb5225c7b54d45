//! TLS to PostgreSQL: the test cluster gets a self-signed certificate (made with rcgen, written
//! into its data directory, `ssl = on` by `ALTER SYSTEM` and a reload; plaintext clients are
//! unaffected), and a backend with `sslmode=verify-full&sslrootcert=…` writes, reads and
//! listens over TLS; a wrong root or a fall-back mode is refused.
//! Skipped (with a message) when GYM_TELEMETRY_TEST_PG is unset outside CI.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use telemetry_core::pb;
use telemetry_store::{Backend, Filter};
use telemetry_store_pg::{testing, PgBackend, PgConfig};
use tokio_postgres::NoTls;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn superuser(url: &str) -> tokio_postgres::Client {
    let (client, conn) = url
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Turns TLS on in the test cluster if it is off; returns the server certificate's path.
fn enable_tls(url: &str) -> Option<String> {
    rt().block_on(async {
        let c = superuser(url).await;
        let on: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        let data: String = c
            .query_one("SHOW data_directory", &[])
            .await
            .unwrap()
            .get(0);
        if on != "on" {
            if !nix_is_root() {
                eprintln!("SKIPPED tls: the test cluster has ssl off and we are not root");
                return None;
            }
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ])
            .unwrap();
            let (cert, key) = (format!("{data}/gym-tls.crt"), format!("{data}/gym-tls.key"));
            std::fs::write(&cert, ck.cert.pem()).unwrap();
            std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
            for f in [&cert, &key] {
                let ok = std::process::Command::new("chown")
                    .args(["postgres:", f])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "chown {f}");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            for stmt in [
                format!("ALTER SYSTEM SET ssl_cert_file = '{cert}'"),
                format!("ALTER SYSTEM SET ssl_key_file = '{key}'"),
                "ALTER SYSTEM SET ssl = on".to_owned(),
                "SELECT pg_reload_conf()".to_owned(),
            ] {
                c.batch_execute(&stmt).await.unwrap();
            }
            // The postmaster applies a reload asynchronously: wait (bounded) until it says so.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let c = superuser(url).await;
                let on: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
                if on == "on" {
                    break;
                }
                assert!(Instant::now() < deadline, "ssl never came on");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let c = superuser(url).await;
        let cert: String = c.query_one("SHOW ssl_cert_file", &[]).await.unwrap().get(0);
        Some(if cert.starts_with('/') {
            cert
        } else {
            format!("{data}/{cert}")
        })
    })
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

#[test]
fn a_verified_tls_store_writes_reads_and_listens_and_nothing_falls_back() {
    let Some(url) = testing::test_url("a_verified_tls_store_writes_reads_and_listens") else {
        return;
    };
    let Some(cert) = enable_tls(&url) else {
        return;
    };
    let schema = testing::unique_schema("tls");
    let tls_url = with_params(
        &url,
        &format!("sslmode=verify-full&sslrootcert={cert}&schema={schema}"),
    );
    let cfg = PgConfig::from_url(&tls_url).unwrap();
    assert!(cfg.uses_tls());
    let backend = PgBackend::new(cfg).unwrap();
    let mut w = backend.open_writer().unwrap();
    let mut batch = vec![pb::RunStep {
        run_id: "tls".into(),
        producer_id: "p".into(),
        producer_seq: 1,
        ..Default::default()
    }
    .into()];
    assert_eq!(w.append(&mut batch, &[]).unwrap().stored, 1);
    let steps = backend
        .reader()
        .unwrap()
        .steps_page(0, &Filter::default(), 10)
        .unwrap();
    assert_eq!(steps.len(), 1);
    // The change feed listens over TLS too.
    let feed = backend
        .change_feed(std::sync::Arc::new(|| {}))
        .unwrap()
        .unwrap();
    let listen = format!("LISTEN {schema}");
    let ssl: bool = rt().block_on(async {
        superuser(&url)
            .await
            .query_one(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.query = $1",
                &[&listen],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert!(ssl, "the feed's session is encrypted");
    drop(feed);

    // A root that did not sign the server's certificate: refused, not plaintext.
    let dir = tempfile::tempdir().unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let wrong = dir.path().join("other.crt");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    let bad = PgBackend::from_url(&with_params(
        &url,
        &format!(
            "sslmode=verify-full&sslrootcert={}&schema={schema}",
            wrong.display()
        ),
    ))
    .unwrap();
    let err = bad
        .open_writer()
        .err()
        .expect("an unverifiable server is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // Modes that would fall back to plaintext, and TLS without a root, are refused up front.
    for params in ["sslmode=prefer", "sslmode=allow", "sslmode=require"] {
        let e = PgConfig::from_url(&with_params(&url, params)).err();
        assert!(e.is_some(), "{params} must be refused");
    }
}
