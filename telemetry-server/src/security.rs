//! Private files and the operator token file.
//!
//! Telemetry, logs and the token are the user's: the var dir is made 0700, and every file the
//! server creates in it (store, WAL, lock, PID file, token, worker logs and queues) 0600. An
//! existing var dir that other accounts can read is reported at start-up (it is not changed:
//! it may be a directory the user shares on purpose), and the files inside are still private.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use telemetry_core::credentials::{self, TOKEN_FILE_NAME};

use crate::{auth, config::AuthConfig, error::ServerError};

/// Creates `dir` (and its parents) with mode 0700 where they are new.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Options that create a file with mode 0600 (where it is new).
pub fn private_file_options() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

/// Makes an existing file 0600 (SQLite gives its WAL and shared-memory files the database
/// file's mode, so the store file decides theirs).
pub fn make_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Prepares the var dir: created 0700 when new; a warning when other accounts can read it.
pub fn prepare_var_dir(dir: &Path) -> Result<(), ServerError> {
    let existed = dir.exists();
    private_dir(dir).map_err(crate::error::io(format!("creating {}", dir.display())))?;
    #[cfg(unix)]
    if existed {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(dir) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(var_dir = %dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the var dir is readable by other accounts; its files are kept 0600, but `chmod 700` it to hide their names too");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = existed;
    Ok(())
}

/// The store file, created empty with mode 0600 if absent, so SQLite (and its WAL) inherit it.
pub fn prepare_store_file(path: &Path) -> Result<(), ServerError> {
    if !path.exists() {
        private_file_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(crate::error::io(format!("creating {}", path.display())))?;
    }
    for p in [
        path.to_path_buf(),
        PathBuf::from(format!("{}-wal", path.display())),
        PathBuf::from(format!("{}-shm", path.display())),
    ] {
        make_private(&p).map_err(crate::error::io(format!("chmod 600 {}", p.display())))?;
    }
    Ok(())
}

/// The operator token of `auth` (`None` for [`AuthConfig::InsecureNoAuth`]), making
/// `<var_dir>/auth-token` on first start.
pub fn operator_token(auth: &AuthConfig, var_dir: &Path) -> Result<Option<String>, ServerError> {
    let cred = |e: credentials::CredentialError| ServerError::Credentials(e.to_string());
    match auth {
        AuthConfig::InsecureNoAuth => Ok(None),
        AuthConfig::Token(t) => {
            credentials::check_token(t)
                .map_err(|r| ServerError::Credentials(format!("the configured token: {r}")))?;
            Ok(Some(t.clone()))
        }
        AuthConfig::File(p) => credentials::read_token_file(p).map(Some).map_err(cred),
        AuthConfig::VarDirFile => {
            let path = var_dir.join(TOKEN_FILE_NAME);
            if path.exists() {
                make_private(&path)
                    .map_err(crate::error::io(format!("chmod 600 {}", path.display())))?;
                return credentials::read_token_file(&path).map(Some).map_err(cred);
            }
            let token =
                auth::random_token().map_err(|e| ServerError::Credentials(e.to_string()))?;
            let mut f = private_file_options()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(crate::error::io(format!("creating {}", path.display())))?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(crate::error::io(format!("writing {}", path.display())))?;
            tracing::info!(path = %path.display(), "made the operator token (mode 0600)");
            Ok(Some(token))
        }
    }
}
