//! One daemon per var dir.
//!
//! Two daemons writing one store would each believe they assign `seq` and own the run registry.
//! The guard is an exclusive OS lock (`flock`) on `<var_dir>/daemon.lock`, held for the daemon's
//! life. The kernel drops the lock when the process dies, even by `kill -9`, so a stale lock cannot
//! exist; the PID file `<var_dir>/daemon.pid` next to it only tells people (and the error message)
//! who holds the lock. A PID file found while the lock is free was left by a killed daemon: it is
//! reported and replaced.

use std::{
    fs::{self, File, TryLockError},
    io::Write,
    path::{Path, PathBuf},
};

/// Why the instance lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another daemon holds the var dir.
    #[error(
        "another gym-telemetry-daemon holds {var_dir} ({holder}); stop it or use another --var-dir"
    )]
    Held {
        /// The var dir.
        var_dir: PathBuf,
        /// What the PID file says of the holder.
        holder: String,
    },
    /// The lock or PID file could not be written.
    #[error("cannot use {path} as the daemon lock: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The held lock. Dropping it removes the PID file and releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    pid_path: PathBuf,
    /// A PID the previous, killed daemon left behind, if any.
    pub recovered_stale_pid: Option<String>,
}

impl InstanceLock {
    /// Takes the lock of `var_dir` (creating the directory), writing our PID and `listen` into
    /// the PID file.
    pub fn acquire(var_dir: &Path, listen: &str) -> Result<InstanceLock, LockError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        crate::security::private_dir(var_dir).map_err(io_err(var_dir))?;
        let lock_path = var_dir.join("daemon.lock");
        let pid_path = var_dir.join("daemon.pid");
        let file = crate::security::private_file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&pid_path)
                    .map(|s| s.trim().replace('\n', ", "))
                    .unwrap_or_else(|_| "unknown pid".to_owned());
                return Err(LockError::Held {
                    var_dir: var_dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let recovered_stale_pid = fs::read_to_string(&pid_path)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        if let Some(stale) = &recovered_stale_pid {
            tracing::warn!(stale = %stale, "replacing the PID file of a daemon that did not shut down cleanly");
        }
        let mut pid_file = crate::security::private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&pid_path)
            .map_err(io_err(&pid_path))?;
        for p in [&lock_path, &pid_path] {
            crate::security::make_private(p).map_err(io_err(p))?;
        }
        writeln!(pid_file, "pid {}\nlisten {listen}", std::process::id())
            .map_err(io_err(&pid_path))?;
        Ok(InstanceLock {
            file,
            pid_path,
            recovered_stale_pid,
        })
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.pid_path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = InstanceLock::acquire(dir.path(), "127.0.0.1:1").expect("first");
        let err = InstanceLock::acquire(dir.path(), "127.0.0.1:2").expect_err("second");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("127.0.0.1:1"), "{msg}");
        drop(first);
        let again = InstanceLock::acquire(dir.path(), "127.0.0.1:3").expect("released");
        assert!(again.recovered_stale_pid.is_none());
    }

    #[test]
    fn a_stale_pid_file_is_recovered() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("daemon.pid"), "pid 999999\nlisten x\n").expect("write");
        let lock = InstanceLock::acquire(dir.path(), "127.0.0.1:4").expect("stale is not a holder");
        assert_eq!(
            lock.recovered_stale_pid.as_deref(),
            Some("pid 999999\nlisten x")
        );
        let now = fs::read_to_string(dir.path().join("daemon.pid")).expect("pid file");
        assert!(now.contains(&std::process::id().to_string()));
    }
}
