//! Uniform accessors over the six record types.
//!
//! Store, hub and shim all need the same few facts of any record (its run, its producer stamp,
//! its store `seq`) without matching on six variants each time. The generated
//! [`Record`](crate::pb::Record) gets them here as inherent methods.

use crate::pb::{
    record::Kind, Artifact, Record, RunCompleted, RunEpisode, RunStarted, RunStep, Scalar,
};

/// Which of the six record types a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// [`RunStep`].
    Step,
    /// [`RunEpisode`].
    Episode,
    /// [`RunStarted`].
    RunStarted,
    /// [`RunCompleted`].
    RunCompleted,
    /// [`Artifact`].
    Artifact,
    /// [`Scalar`].
    Scalar,
}

impl RecordKind {
    /// The JSONL `type` of this kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            RecordKind::Step => "step",
            RecordKind::Episode => "episode",
            RecordKind::RunStarted => "run_started",
            RecordKind::RunCompleted => "run_completed",
            RecordKind::Artifact => "artifact",
            RecordKind::Scalar => "scalar",
        }
    }

    /// Steps, episodes and scalars are telemetry; the rest are lifecycle events.
    pub const fn is_lifecycle(self) -> bool {
        matches!(
            self,
            RecordKind::RunStarted | RecordKind::RunCompleted | RecordKind::Artifact
        )
    }
}

macro_rules! each_kind {
    ($kind:expr, $r:ident => $e:expr) => {
        match $kind {
            Kind::Step($r) => $e,
            Kind::Episode($r) => $e,
            Kind::RunStarted($r) => $e,
            Kind::RunCompleted($r) => $e,
            Kind::Artifact($r) => $e,
            Kind::Scalar($r) => $e,
        }
    };
}

impl Record {
    /// The kind of record, or `None` for a record with no payload (an empty oneof).
    pub fn record_kind(&self) -> Option<RecordKind> {
        self.kind.as_ref().map(|k| match k {
            Kind::Step(_) => RecordKind::Step,
            Kind::Episode(_) => RecordKind::Episode,
            Kind::RunStarted(_) => RecordKind::RunStarted,
            Kind::RunCompleted(_) => RecordKind::RunCompleted,
            Kind::Artifact(_) => RecordKind::Artifact,
            Kind::Scalar(_) => RecordKind::Scalar,
        })
    }

    /// The run this record belongs to ("" for an empty record).
    pub fn run_id(&self) -> &str {
        match &self.kind {
            Some(k) => each_kind!(k, r => r.run_id.as_str()),
            None => "",
        }
    }

    /// Sets the run this record belongs to (a no-op on an empty record).
    pub fn set_run_id(&mut self, run_id: &str) {
        if let Some(k) = &mut self.kind {
            each_kind!(k, r => {
                if r.run_id != run_id {
                    run_id.clone_into(&mut r.run_id);
                }
            })
        }
    }

    /// The producer stamp `(producer_id, producer_seq)`.
    pub fn producer(&self) -> (&str, u64) {
        match &self.kind {
            Some(k) => each_kind!(k, r => (r.producer_id.as_str(), r.producer_seq)),
            None => ("", 0),
        }
    }

    /// Stamps the record with its producer id and sequence.
    pub fn set_producer(&mut self, producer_id: &str, producer_seq: u64) {
        if let Some(k) = &mut self.kind {
            each_kind!(k, r => {
                r.producer_id = producer_id.to_owned();
                r.producer_seq = producer_seq;
            })
        }
    }

    /// The store sequence (0 until stored).
    pub fn seq_id(&self) -> u64 {
        match &self.kind {
            Some(k) => each_kind!(k, r => r.seq_id),
            None => 0,
        }
    }

    /// Sets the store sequence; only the store calls this.
    pub fn set_seq_id(&mut self, seq: u64) {
        if let Some(k) = &mut self.kind {
            each_kind!(k, r => r.seq_id = seq)
        }
    }
}

macro_rules! into_record {
    ($($t:ident),*) => {$(
        impl From<$t> for Record {
            fn from(r: $t) -> Self {
                Record { kind: Some(Kind::$t(r)) }
            }
        }
    )*};
}
into_record!(RunStarted, RunCompleted, Artifact, Scalar);

impl From<RunStep> for Record {
    fn from(r: RunStep) -> Self {
        Record {
            kind: Some(Kind::Step(r)),
        }
    }
}

impl From<RunEpisode> for Record {
    fn from(r: RunEpisode) -> Self {
        Record {
            kind: Some(Kind::Episode(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_reach_every_kind() {
        let records: Vec<Record> = vec![
            RunStep {
                run_id: "a".into(),
                ..Default::default()
            }
            .into(),
            RunEpisode {
                run_id: "b".into(),
                ..Default::default()
            }
            .into(),
            RunStarted {
                run_id: "c".into(),
                ..Default::default()
            }
            .into(),
            RunCompleted {
                run_id: "d".into(),
                ..Default::default()
            }
            .into(),
            Artifact {
                run_id: "e".into(),
                ..Default::default()
            }
            .into(),
            Scalar {
                run_id: "f".into(),
                ..Default::default()
            }
            .into(),
        ];
        let ids: Vec<&str> = records.iter().map(Record::run_id).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(records[5].record_kind(), Some(RecordKind::Scalar));
        for (i, mut r) in records.into_iter().enumerate() {
            r.set_producer("p", i as u64 + 10);
            r.set_seq_id(i as u64 + 100);
            assert_eq!(r.producer(), ("p", i as u64 + 10));
            assert_eq!(r.seq_id(), i as u64 + 100);
        }
        assert_eq!(Record::default().record_kind(), None);
        assert_eq!(Record::default().run_id(), "");
    }
}
