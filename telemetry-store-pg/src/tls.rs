//! TLS to PostgreSQL: `sslmode` and `sslrootcert` in the store URL, as libpq spells them.
//!
//! - `sslmode=disable` (or no `sslmode` and no `sslrootcert`): plaintext, as before.
//! - `sslmode=require`, `verify-ca` or `verify-full`, with `sslrootcert=FILE` (PEM: the CA, or
//!   a self-signed server certificate itself): TLS is required, and the server's certificate
//!   must chain to FILE **and** name the host of the URL. All three verify both (stricter than
//!   libpq's `require`, which checks nothing): a connection that would accept any certificate
//!   protects against nothing but a passive listener, and the store carries tokens' worth of
//!   data. A URL asking for TLS without `sslrootcert` is refused at start (we bundle no CA set).
//! - `sslmode=prefer` or `allow` are refused: a silent fall back to plaintext is what TLS is
//!   there to prevent.
//!
//! rustls with ring, through tokio-postgres-rustls (its maintained adapter): no OpenSSL.

use std::{path::PathBuf, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer};
use telemetry_store::StoreError;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the backend's connections are made.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Plaintext.
    Plain,
    /// TLS, verified against the configured roots and the URL's host name.
    Tls(MakeRustlsConnect),
}

fn bad(detail: impl Into<String>) -> StoreError {
    StoreError::Server {
        engine: "postgres",
        code: None,
        retryable: false,
        detail: detail.into(),
    }
}

/// What the URL asked for, taken out of its query before tokio-postgres parses it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsParams {
    pub mode: Option<String>,
    pub root_cert: Option<PathBuf>,
}

impl TlsParams {
    /// Takes `sslmode` and `sslrootcert` from a query parameter; returns whether it was one.
    pub(crate) fn take(&mut self, param: &str) -> bool {
        match param.split_once('=') {
            Some(("sslmode", v)) => {
                self.mode = Some(v.to_owned());
                true
            }
            Some(("sslrootcert", v)) => {
                self.root_cert = Some(PathBuf::from(v));
                true
            }
            _ => false,
        }
    }

    /// Whether TLS is asked for.
    pub(crate) fn wants_tls(&self) -> Result<bool, StoreError> {
        match self.mode.as_deref() {
            None => Ok(self.root_cert.is_some()),
            Some("disable") => Ok(false),
            Some("require" | "verify-ca" | "verify-full") => Ok(true),
            Some("prefer" | "allow") => Err(bad(
                "sslmode=prefer/allow would fall back to plaintext silently: use \
                 sslmode=verify-full with sslrootcert=FILE, or sslmode=disable",
            )),
            Some(other) => Err(bad(format!("sslmode {other:?} is not one we know"))),
        }
    }

    /// The connector for these parameters.
    pub(crate) fn connector(&self) -> Result<Connector, StoreError> {
        if !self.wants_tls()? {
            return Ok(Connector::Plain);
        }
        let Some(path) = &self.root_cert else {
            return Err(bad(
                "TLS to PostgreSQL needs sslrootcert=FILE (the CA's PEM, or the server's \
                 self-signed certificate)",
            ));
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| bad(format!("sslrootcert {}: {e}", path.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad(format!(
                "sslrootcert {} holds no usable certificate",
                path.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector::Tls(MakeRustlsConnect::new(config)))
    }
}
