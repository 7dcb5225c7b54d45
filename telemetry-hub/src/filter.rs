//! Per-subscription predicates and transforms, with the two a UI needs ready-made.
//!
//! A hidden view does not need render hints or frame references, and a chart of a fast run
//! does not need every step. Filtering in the hub (instead of in the viewer) saves queue room
//! and bandwidth. A filter's `keep` runs on the publish path, before the record takes a queue
//! slot, so filtered records are never counted as drops and never cause false gaps (see the
//! crate docs, "Gap detection"). `transform` runs on the subscriber's side, at delivery.

use std::sync::Arc;

use telemetry_core::pb::{record::Kind, Record};

/// A predicate and/or transform applied to one subscription's records.
///
/// `keep` is called on the publish path with the run's and the subscriber's locks held: it
/// must be cheap, must not block and must not panic. It must be a pure function of the record, because it is applied to stored
/// records during catch-up and to live records alike.
pub trait RecordFilter: Send + Sync + 'static {
    /// Whether the subscriber gets this record (default: always).
    fn keep(&self, record: &Record) -> bool {
        let _ = record;
        true
    }

    /// Rewrites a kept record just before delivery (default: unchanged).
    fn transform(&self, record: Arc<Record>) -> Arc<Record> {
        record
    }
}

/// Leaves out `render_hint_json` and `frame_ref` of steps, for a view that is hidden. Records
/// without them are passed on without a copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct StripRender;

impl RecordFilter for StripRender {
    fn transform(&self, record: Arc<Record>) -> Arc<Record> {
        match &record.kind {
            Some(Kind::Step(s)) if !s.render_hint_json.is_empty() || !s.frame_ref.is_empty() => {
                let mut step = s.clone();
                step.render_hint_json.clear();
                step.frame_ref.clear();
                Arc::new(Record::from(step))
            }
            _ => record,
        }
    }
}

/// Keeps every k-th step of each episode (`step_index % k == 0`) plus each episode's last step
/// (terminated or truncated), so a thinned view still sees episode ends. Other records pass.
/// Stateless, so catch-up and live agree and a reconnect thins the same way.
#[derive(Debug, Clone, Copy)]
pub struct EveryKthStep {
    k: u64,
}

impl EveryKthStep {
    /// `k` of 0 or 1 keeps every step.
    pub fn new(k: u64) -> Self {
        EveryKthStep { k: k.max(1) }
    }
}

impl RecordFilter for EveryKthStep {
    fn keep(&self, record: &Record) -> bool {
        match &record.kind {
            Some(Kind::Step(s)) => s.step_index % self.k == 0 || s.terminated || s.truncated,
            _ => true,
        }
    }
}

/// Several filters as one: a record is kept when every filter keeps it; transforms apply in
/// order.
#[derive(Clone, Default)]
pub struct AllOf(pub Vec<Arc<dyn RecordFilter>>);

impl RecordFilter for AllOf {
    fn keep(&self, record: &Record) -> bool {
        self.0.iter().all(|f| f.keep(record))
    }

    fn transform(&self, record: Arc<Record>) -> Arc<Record> {
        self.0.iter().fold(record, |r, f| f.transform(r))
    }
}
