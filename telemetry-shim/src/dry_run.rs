//! Dry-run mode: validate every record exactly as the daemon would and write it as JSONL,
//! with no daemon at all.
//!
//! A worker author sees a bad record (NaN reward, unknown control mode, inline frame) as an
//! error from the very call that made it, and gets a file in the JSONL contract that the proxy
//! and the store's importer read back.

use crate::{
    flush::{FlushOutcome, FlushReport},
    metadata::Decorator,
    stats::Counters,
    DryRunTarget, ShimConfig, ShimError,
};
use std::{
    fs::File,
    io::{BufWriter, Write},
    sync::{Arc, Mutex, MutexGuard},
};
use telemetry_core::{jsonl, pb::Record, validate};

struct Output {
    out: BufWriter<Box<dyn Write + Send>>,
    next_seq: u64,
}

pub(crate) struct DryRun {
    decorator: Decorator,
    output: Mutex<Output>,
    limits: validate::Limits,
    producer_id: String,
    counters: Arc<Counters>,
}

impl DryRun {
    pub fn open(
        target: &DryRunTarget,
        config: &ShimConfig,
        producer_id: String,
        counters: Arc<Counters>,
    ) -> Result<Self, ShimError> {
        let sink: Box<dyn Write + Send> = match target {
            DryRunTarget::Stdout => Box::new(std::io::stdout()),
            DryRunTarget::File(path) => Box::new(File::create(path)?),
        };
        Ok(DryRun {
            decorator: Decorator::new(config),
            output: Mutex::new(Output {
                out: BufWriter::new(sink),
                next_seq: 1,
            }),
            limits: validate::Limits {
                max_record_bytes: config.max_record_bytes,
                ..validate::Limits::default()
            },
            producer_id,
            counters,
        })
    }

    pub fn decorator(&self) -> &Decorator {
        &self.decorator
    }

    fn lock(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, mut record: Record) -> Result<(), ShimError> {
        self.decorator.decorate(&mut record);
        let mut out = self.lock();
        record.set_producer(&self.producer_id, out.next_seq);
        if let Err(e) = validate::normalize(&mut record, &self.limits) {
            drop(out);
            Counters::add(&self.counters.rejected, 1);
            return Err(ShimError::Invalid(e));
        }
        out.next_seq += 1;
        jsonl::write_record(&mut out.out, &record)?;
        drop(out);
        Counters::add(&self.counters.accepted, 1);
        Ok(())
    }

    pub fn flush(&self) -> Result<FlushReport, ShimError> {
        let mut out = self.lock();
        out.out.flush()?;
        Ok(FlushReport {
            outcome: FlushOutcome::Written,
            accepted_through: out.next_seq - 1,
            acked_through: 0,
            pending_records: 0,
        })
    }
}
