//! Finding the credential a client presents, with no flag for the owner: one home for the
//! lookup order that the shim, the Python package, the proxy, the viewer and the demo share.
//!
//! A server makes a random token on first start and keeps it in `<var-dir>/auth-token`
//! ([`TOKEN_FILE_NAME`], mode 0600 in a 0700 directory). A client running as the same user finds
//! it, in this order:
//!
//! 1. `GYM_TELEMETRY_AUTH_TOKEN` (the token itself; what a server hands the workers it spawns);
//! 2. `GYM_TELEMETRY_AUTH_TOKEN_FILE` (a file holding it);
//! 3. `$GYM_TELEMETRY_VAR_DIR/auth-token`;
//! 4. the default var dir's, `./var/telemetry/auth-token` ([`DEFAULT_VAR_DIR`]).
//!
//! A variable that is set but names a missing or unreadable file is an error (the user asked for
//! that file); a default location that does not exist is simply not a credential. Token files
//! are bounded ([`MAX_TOKEN_BYTES`]) and must hold one line of visible ASCII.

use std::path::{Path, PathBuf};

/// The token file's name inside a var dir.
pub const TOKEN_FILE_NAME: &str = "auth-token";
/// The server's default var dir (relative to its working directory).
pub const DEFAULT_VAR_DIR: &str = "./var/telemetry";
/// Longest token accepted (and longest token file read).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Where a discovered token came from (for messages; never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `GYM_TELEMETRY_AUTH_TOKEN`.
    Env,
    /// `GYM_TELEMETRY_AUTH_TOKEN_FILE`.
    TokenFile(PathBuf),
    /// `$GYM_TELEMETRY_VAR_DIR/auth-token`.
    VarDir(PathBuf),
    /// The default var dir's token file.
    DefaultVarDir(PathBuf),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Env => f.write_str("GYM_TELEMETRY_AUTH_TOKEN"),
            TokenSource::TokenFile(p) => {
                write!(f, "GYM_TELEMETRY_AUTH_TOKEN_FILE ({})", p.display())
            }
            TokenSource::VarDir(p) | TokenSource::DefaultVarDir(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A token and where it was found. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The token.
    pub token: String,
    /// Where it came from.
    pub source: TokenSource,
}

impl std::fmt::Debug for Discovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovered")
            .field("token", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Why a credential could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A token file named by a variable (or given explicitly) could not be read.
    #[error("cannot read the token file {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why (the I/O error's message).
        reason: String,
    },
    /// A token (or token file) is empty, too long, or not one line of visible ASCII.
    #[error("the token from {origin} is not usable: {reason}")]
    Malformed {
        /// Where it came from.
        origin: String,
        /// What is wrong (never the token).
        reason: &'static str,
    },
}

/// Checks a token: 1..=[`MAX_TOKEN_BYTES`] bytes of visible ASCII (no spaces), as an HTTP
/// header value needs.
pub fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("it is empty");
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err("it is longer than 4096 bytes");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it must be visible ASCII without spaces");
    }
    Ok(())
}

/// Reads a token file: its first line, trimmed, checked with [`check_token`].
pub fn read_token_file(path: &Path) -> Result<String, CredentialError> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| CredentialError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    file.take(MAX_TOKEN_BYTES as u64 + 2)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    check_token(&token).map_err(|reason| CredentialError::Malformed {
        origin: path.display().to_string(),
        reason,
    })?;
    Ok(token)
}

/// Finds the client's token in the order of the module docs, reading variables through `var`
/// (pass `|k| std::env::var(k).ok()`). `Ok(None)`: no credential anywhere.
pub fn discover(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Discovered>, CredentialError> {
    let set = |k: &str| {
        var(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if let Some(token) = set("GYM_TELEMETRY_AUTH_TOKEN") {
        check_token(&token).map_err(|reason| CredentialError::Malformed {
            origin: "GYM_TELEMETRY_AUTH_TOKEN".into(),
            reason,
        })?;
        return Ok(Some(Discovered {
            token,
            source: TokenSource::Env,
        }));
    }
    if let Some(file) = set("GYM_TELEMETRY_AUTH_TOKEN_FILE") {
        let path = PathBuf::from(file);
        return Ok(Some(Discovered {
            token: read_token_file(&path)?,
            source: TokenSource::TokenFile(path),
        }));
    }
    if let Some(dir) = set("GYM_TELEMETRY_VAR_DIR") {
        let path = Path::new(&dir).join(TOKEN_FILE_NAME);
        if path.exists() {
            return Ok(Some(Discovered {
                token: read_token_file(&path)?,
                source: TokenSource::VarDir(path),
            }));
        }
        return Ok(None);
    }
    let path = Path::new(DEFAULT_VAR_DIR).join(TOKEN_FILE_NAME);
    if path.exists() {
        return Ok(Some(Discovered {
            token: read_token_file(&path)?,
            source: TokenSource::DefaultVarDir(path),
        }));
    }
    Ok(None)
}

/// [`discover`] over the process environment.
pub fn discover_from_env() -> Result<Option<Discovered>, CredentialError> {
    discover(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn the_order_is_env_then_file_then_var_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tok");
        std::fs::write(&file, "from-file\n").expect("write");
        std::fs::write(dir.path().join(TOKEN_FILE_NAME), "from-var-dir").expect("write");
        let var_dir = dir.path().display().to_string();
        let all = vars(&[
            ("GYM_TELEMETRY_AUTH_TOKEN", "from-env".into()),
            ("GYM_TELEMETRY_AUTH_TOKEN_FILE", file.display().to_string()),
            ("GYM_TELEMETRY_VAR_DIR", var_dir.clone()),
        ]);
        let d = discover(all).expect("ok").expect("found");
        assert_eq!((d.token.as_str(), d.source), ("from-env", TokenSource::Env));
        let no_env = vars(&[
            ("GYM_TELEMETRY_AUTH_TOKEN_FILE", file.display().to_string()),
            ("GYM_TELEMETRY_VAR_DIR", var_dir.clone()),
        ]);
        assert_eq!(
            discover(no_env).expect("ok").expect("found").token,
            "from-file"
        );
        let var_only = vars(&[("GYM_TELEMETRY_VAR_DIR", var_dir)]);
        let d = discover(var_only).expect("ok").expect("found");
        assert_eq!(d.token, "from-var-dir");
        assert!(
            !format!("{d:?}").contains("from-var-dir"),
            "Debug hides the token"
        );
    }

    #[test]
    fn a_named_file_must_exist_but_a_var_dir_without_a_token_is_no_credential() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = discover(vars(&[(
            "GYM_TELEMETRY_AUTH_TOKEN_FILE",
            missing.display().to_string(),
        )]))
        .expect_err("named file missing");
        assert!(err.to_string().contains("nope"), "{err}");
        let none = discover(vars(&[(
            "GYM_TELEMETRY_VAR_DIR",
            dir.path().display().to_string(),
        )]))
        .expect("ok");
        assert_eq!(none, None);
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tok");
        std::fs::write(&file, "has space\n").expect("write");
        let err = read_token_file(&file).expect_err("space");
        assert!(!err.to_string().contains("has space"), "{err}");
        std::fs::write(&file, "x".repeat(MAX_TOKEN_BYTES + 1)).expect("write");
        assert!(read_token_file(&file).is_err());
        std::fs::write(&file, "\n").expect("write");
        assert!(read_token_file(&file).is_err());
        let err = discover(vars(&[("GYM_TELEMETRY_AUTH_TOKEN", "a\tb".into())])).expect_err("tab");
        assert!(
            err.to_string().contains("GYM_TELEMETRY_AUTH_TOKEN"),
            "{err}"
        );
    }
}
