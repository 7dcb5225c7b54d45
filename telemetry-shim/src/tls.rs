//! TLS for `https://` endpoints: which certificates the shim trusts and which name it checks.
//!
//! A daemon serving remote workers over the network runs TLS (`--tls-cert/--tls-key`); the
//! workers it spawns, or that a scheduler starts elsewhere, must trust its certificate. Most
//! such daemons use a private or self-signed certificate, so the usual knob is a CA file
//! (`GYM_TELEMETRY_TLS_CA_FILE`, which the daemon sets for its own workers). Without one, the
//! Mozilla roots compiled into the shim are trusted (public certificates; no system store is
//! read, nothing is downloaded).
//!
//! The CA file is read and parsed when the shim starts, not at the first connection: a path
//! typo or a key pasted in place of a certificate is a [`ConfigError::TlsCaFile`] naming the
//! variable and the path, not a worker that retries a failing handshake for its whole run.
//! `http://` endpoints never touch any of this.

use crate::{config::is_https, ConfigError, ShimConfig};
use rustls_pki_types::{pem::PemObject, CertificateDer, TrustAnchor};
use std::{io::Read, path::Path};
use tonic::transport::ClientTlsConfig;

/// Largest CA file read (a bundle of a few hundred certificates fits; anything larger is not a
/// CA file).
pub(crate) const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// The TLS settings of an `https://` endpoint; `None` for `http://` (plaintext, as before).
pub(crate) fn client_config(c: &ShimConfig) -> Result<Option<ClientTlsConfig>, ConfigError> {
    if !is_https(&c.endpoint) {
        return Ok(None);
    }
    let mut tls = match &c.tls_ca_file {
        Some(path) => ClientTlsConfig::new().trust_anchors(read_anchors(path)?),
        None => ClientTlsConfig::new().with_webpki_roots(),
    };
    if let Some(domain) = &c.tls_domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(Some(tls))
}

/// Reads a PEM file of CA certificates (bounded) and parses each into a trust anchor.
fn read_anchors(path: &Path) -> Result<Vec<TrustAnchor<'static>>, ConfigError> {
    let fail = |reason: String| ConfigError::TlsCaFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(fail(format!(
            "larger than {MAX_CA_FILE_BYTES} bytes; not a CA file"
        )));
    }
    let mut anchors = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| fail(format!("certificate {}: bad PEM: {e}", i + 1)))?;
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| fail(format!("certificate {}: not a usable CA: {e}", i + 1)))?;
        anchors.push(anchor.to_owned());
    }
    if anchors.is_empty() {
        return Err(fail(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(anchors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check_domain;
    use std::path::PathBuf;

    fn https(ca: Option<PathBuf>) -> ShimConfig {
        ShimConfig {
            endpoint: "https://127.0.0.1:50151".into(),
            tls_ca_file: ca,
            ..ShimConfig::default()
        }
    }

    fn ca_error(c: &ShimConfig) -> (PathBuf, String) {
        match client_config(c) {
            Err(ConfigError::TlsCaFile { path, reason }) => (path, reason),
            other => panic!("expected a CA file error, got {other:?}"),
        }
    }

    #[test]
    fn plaintext_endpoints_get_no_tls() {
        let c = ShimConfig::default();
        assert!(client_config(&c).expect("valid").is_none());
    }

    #[test]
    fn https_without_a_ca_file_uses_the_compiled_in_roots() {
        assert!(client_config(&https(None)).expect("valid").is_some());
    }

    #[test]
    fn a_self_signed_certificate_is_a_usable_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let path = dir.path().join("ca.pem");
        // A bundle: the certificate twice, with the key in between (skipped, not an error).
        let pem = format!(
            "{}{}{}",
            cert.cert.pem(),
            cert.signing_key.serialize_pem(),
            cert.cert.pem()
        );
        std::fs::write(&path, pem).expect("write");
        assert_eq!(read_anchors(&path).expect("parses").len(), 2);
        assert!(client_config(&https(Some(path))).expect("valid").is_some());
    }

    #[test]
    fn unusable_ca_files_are_errors_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let (path, reason) = ca_error(&https(Some(missing.clone())));
        assert_eq!(path, missing);
        assert!(reason.contains("cannot open"), "{reason}");

        let empty = dir.path().join("key-only.pem");
        let key = rcgen::KeyPair::generate().expect("key");
        std::fs::write(&empty, key.serialize_pem()).expect("write");
        let (_, reason) = ca_error(&https(Some(empty)));
        assert!(reason.contains("no PEM certificate"), "{reason}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let (_, reason) = ca_error(&https(Some(garbage)));
        assert!(reason.contains("certificate 1"), "{reason}");

        let huge = dir.path().join("huge.pem");
        std::fs::write(&huge, vec![b'x'; MAX_CA_FILE_BYTES as usize + 1]).expect("write");
        let err = client_config(&https(Some(huge.clone()))).expect_err("too large");
        let text = err.to_string();
        assert!(text.contains("GYM_TELEMETRY_TLS_CA_FILE"), "{text}");
        assert!(text.contains(&huge.display().to_string()), "{text}");
        assert!(text.contains("larger than"), "{text}");
    }

    #[test]
    fn domains_must_be_names_or_addresses() {
        assert!(check_domain("localhost").is_ok());
        assert!(check_domain("daemon.example.org").is_ok());
        assert!(check_domain("127.0.0.1").is_ok());
        assert!(check_domain("::1").is_ok());
        assert!(check_domain("not a name").is_err());
        assert!(check_domain("").is_err());
    }
}
