//! Bounds on what one ingest batch may hold.

use telemetry_core::validate::Limits;

/// Bounds on what one batch may hold.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Per-record limits.
    pub record: Limits,
    /// Most records in one batch.
    pub max_batch_records: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            record: Limits::default(),
            max_batch_records: 16 * 1024,
        }
    }
}
