//! A store backend that fails on command, over the real SQLite backend: the pipeline's tests
//! inject store failures (final and retryable), a whole-store outage (a crash of the disk), and
//! hold the writer inside an append to queue batches behind it deterministically.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
};

use telemetry_core::pb::{self, Record};
use telemetry_store::{
    AppendReport, Backend, BackendReader, BackendWriter, CheckpointStats, Maintenance,
    SqliteBackend, StoreConfig, StoreError,
};

/// The switches, shared between the test and the writer thread.
#[derive(Default)]
pub struct Faults {
    /// Appends to fail with a final (non-retryable) error.
    pub fail: AtomicU32,
    /// Appends to fail with a retryable error (`StoreError::Busy`).
    pub busy: AtomicU32,
    /// Every append fails while set.
    pub down: AtomicBool,
    /// Append attempts made.
    pub attempts: AtomicU64,
    gate: Mutex<Option<Gate>>,
}

struct Gate {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

/// A held gate: the next append stops inside the backend until [`Held::release`].
pub struct Held {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl Held {
    /// Waits until the writer is inside the held append.
    pub fn wait_entered(&self) {
        self.entered
            .recv_timeout(super::WAIT)
            .expect("the writer reached the held append");
    }
    /// Lets the held append go on.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

impl Faults {
    /// Holds the next append inside the backend.
    pub fn hold_next(&self) -> Held {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.gate.lock().expect("gate") = Some(Gate {
            entered: entered_tx,
            release: release_rx,
        });
        Held {
            entered: entered_rx,
            release: release_tx,
        }
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// SQLite with [`Faults`] in front of its writer.
pub struct FaultyBackend {
    inner: SqliteBackend,
    /// The switches.
    pub faults: Arc<Faults>,
}

impl FaultyBackend {
    /// A backend on `<var_dir>/telemetry.sqlite`.
    pub fn new(var_dir: &Path, faults: Arc<Faults>) -> Self {
        FaultyBackend {
            inner: SqliteBackend::new(StoreConfig::in_var_dir(var_dir)),
            faults,
        }
    }
}

struct FaultyWriter {
    inner: Box<dyn BackendWriter>,
    faults: Arc<Faults>,
}

fn injected() -> StoreError {
    StoreError::Io {
        path: "injected".into(),
        source: std::io::Error::other("injected failure"),
    }
}

impl BackendWriter for FaultyWriter {
    fn append(
        &mut self,
        records: &mut [Record],
        rejected: &[(String, u64)],
    ) -> Result<AppendReport, StoreError> {
        self.faults.attempts.fetch_add(1, Ordering::SeqCst);
        let gate = self.faults.gate.lock().expect("gate").take();
        if let Some(g) = gate {
            let _ = g.entered.send(());
            let _ = g.release.recv_timeout(super::WAIT);
        }
        if self.faults.down.load(Ordering::SeqCst) || Faults::take(&self.faults.fail) {
            return Err(injected());
        }
        if Faults::take(&self.faults.busy) {
            return Err(StoreError::Busy);
        }
        self.inner.append(records, rejected)
    }
    fn watermark(&self, producer_id: &str) -> Result<u64, StoreError> {
        if self.faults.down.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.watermark(producer_id)
    }
    fn put_run_info(&mut self, info: &pb::RunInfo) -> Result<(), StoreError> {
        self.inner.put_run_info(info)
    }
    fn checkpoint(&mut self) -> Result<CheckpointStats, StoreError> {
        self.inner.checkpoint()
    }
}

impl Backend for FaultyBackend {
    fn open_writer(&self) -> Result<Box<dyn BackendWriter>, StoreError> {
        Ok(Box::new(FaultyWriter {
            inner: self.inner.open_writer()?,
            faults: self.faults.clone(),
        }))
    }
    fn reader(&self) -> Result<Arc<dyn BackendReader>, StoreError> {
        self.inner.reader()
    }
    fn maintenance(&self) -> Result<Option<Box<dyn Maintenance>>, StoreError> {
        self.inner.maintenance()
    }
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
}
