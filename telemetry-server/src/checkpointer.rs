//! The backend's upkeep on its own thread: for SQLite, WAL checkpoints on their own connection.
//!
//! If the writer's commits ran the checkpoints (SQLite's automatic checkpoint, or a periodic
//! call on the writer thread), the commit that does one copies the WAL into the database and
//! fsyncs both while every later batch waits: measured as 25-150 ms stalls in the live-latency
//! tail. The SQLite backend opens its writer with automatic checkpoints off and hands out a
//! `telemetry_store::Checkpointer`, run here every [`ServerConfig::checkpoint_interval`]
//! (`PASSIVE` copies without waiting for anyone; the WAL is truncated when no reader needs it).
//!
//! [`ServerConfig::checkpoint_interval`]: crate::ServerConfig::checkpoint_interval

use std::{
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::Duration,
};

use telemetry_store::Maintenance;

use crate::metrics::Metrics;

/// The running checkpoint thread; [`CheckpointThread::stop`] ends it.
pub struct CheckpointThread {
    stop: mpsc::Sender<()>,
    join: thread::JoinHandle<()>,
}

impl CheckpointThread {
    /// Starts checkpointing every `interval`.
    pub fn spawn(
        mut upkeep: Box<dyn Maintenance>,
        metrics: Metrics,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let (stop, rx) = mpsc::channel::<()>();
        let join = thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || loop {
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => match upkeep.run() {
                        Ok(stats) => metrics.record_checkpoint(&stats),
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                    },
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(CheckpointThread { stop, join })
    }

    /// Stops the thread and waits for it (at most one checkpoint's time).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.join.join();
    }
}
