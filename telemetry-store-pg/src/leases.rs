//! Owner leases of the shared run registry ([`telemetry_store::Leases`] on PostgreSQL).
//!
//! Why: a run belongs to the daemon that registered it, and only that daemon persists, reaps or
//! times it out. When that daemon dies, somebody else has to, or its runs stay "running"
//! forever. A lease tells a dead owner from a live one without any clock of ours: each daemon
//! keeps a row in `daemon_leases` whose `expires_at` it pushes forward (`clock_timestamp()` of
//! the database plus the TTL), and a lease is current while the database's clock is before it.
//!
//! The take-over is one transaction (READ COMMITTED):
//!
//! 1. lock every lapsed lease row of another owner (`FOR UPDATE`): an owner renewing now waits
//!    for this transaction, and a lease renewed just before is re-checked on its new version
//!    and skipped, so the owners we go on with are exactly those whose lease is lapsed while we
//!    hold their rows;
//! 2. add the owners of active runs that have no lease row at all (written by a build before
//!    leases; a daemon of this build takes its lease before it writes any run);
//! 3. lock those owners' pending and running run rows and rewrite them with the taker as owner
//!    (in the `owner` column and inside the encoded `info`).
//!
//! A run row is replaced by a later write only when the writer is its owner (the writer's
//! upsert has `WHERE runs.owner = excluded.owner`), so a daemon that lost its lease (paused,
//! cut off from the database) and comes back cannot write a taken run back: it finds the run
//! under its new owner when it next reads the rows.

use std::time::Duration;

use prost::Message;
use telemetry_core::{
    pb::{self, RunState},
    timestamp,
};
use telemetry_store::{Leases, Renewal, StoreError, TakenRun};

use crate::{error::classify, Shared};

/// The PostgreSQL leases of one backend (its read pool's connections).
pub(crate) struct PgLeases {
    shared: std::sync::Arc<Shared>,
}

impl PgLeases {
    pub(crate) fn new(shared: std::sync::Arc<Shared>) -> Self {
        PgLeases { shared }
    }
}

fn ttl_ms(ttl: Duration) -> f64 {
    // Sub-millisecond precision is meaningless for a lease; bounded so the interval fits.
    ttl.as_secs_f64().min(86_400.0 * 365.0) * 1000.0
}

impl Leases for PgLeases {
    fn renew(&self, owner: &str, ttl: Duration) -> Result<Renewal, StoreError> {
        let s = &self.shared;
        let ms = ttl_ms(ttl);
        s.block_on(async {
            let mut client = s.read_client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            // Locking our row first: a take-over holding it finishes before we look.
            let before = tx
                .query_opt(
                    "SELECT expires_at > clock_timestamp() FROM daemon_leases \
                     WHERE owner = $1 FOR UPDATE",
                    &[&owner],
                )
                .await
                .map_err(classify)?;
            tx.execute(
                "INSERT INTO daemon_leases (owner, expires_at, renewed_at) VALUES \
                 ($1, clock_timestamp() + $2 * interval '1 millisecond', clock_timestamp()) \
                 ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at, \
                 renewed_at = excluded.renewed_at",
                &[&owner, &ms],
            )
            .await
            .map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            Ok(match before {
                None => Renewal::New,
                Some(row) if row.try_get::<_, bool>(0).map_err(classify)? => Renewal::Held,
                Some(_) => Renewal::Lapsed,
            })
        })
    }

    fn take_over(&self, taker: &str) -> Result<Vec<TakenRun>, StoreError> {
        let s = &self.shared;
        let active = [RunState::Pending as i32, RunState::Running as i32];
        s.block_on(async {
            let mut client = s.read_client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let mut lapsed: Vec<String> = tx
                .query(
                    "SELECT owner FROM daemon_leases \
                     WHERE expires_at <= clock_timestamp() AND owner <> $1 \
                     ORDER BY owner FOR UPDATE",
                    &[&taker],
                )
                .await
                .map_err(classify)?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(classify)?;
            let leaseless = tx
                .query(
                    "SELECT DISTINCT owner FROM runs WHERE state = ANY($2) AND owner <> '' \
                     AND owner <> $1 \
                     AND NOT EXISTS (SELECT 1 FROM daemon_leases l WHERE l.owner = runs.owner)",
                    &[&taker, &active.as_slice()],
                )
                .await
                .map_err(classify)?;
            for r in leaseless {
                lapsed.push(r.try_get(0).map_err(classify)?);
            }
            if lapsed.is_empty() {
                // Nothing to take: end the transaction (it only read and locked nothing).
                tx.commit().await.map_err(classify)?;
                return Ok(Vec::new());
            }
            let rows = tx
                .query(
                    "SELECT run_id, owner, info FROM runs \
                     WHERE owner = ANY($1) AND state = ANY($2) ORDER BY run_id FOR UPDATE",
                    &[&lapsed, &active.as_slice()],
                )
                .await
                .map_err(classify)?;
            let stamp = timestamp::now();
            let now = timestamp::to_unix_nanos(&stamp);
            let mut taken = Vec::with_capacity(rows.len());
            for row in rows {
                let run_id: String = row.try_get(0).map_err(classify)?;
                let from: String = row.try_get(1).map_err(classify)?;
                let body: &[u8] = row.try_get(2).map_err(classify)?;
                let mut info = pb::RunInfo::decode(body).map_err(|e| StoreError::Decode {
                    what: "run info",
                    seq: 0,
                    detail: format!("run {run_id}: {e}"),
                })?;
                info.owner = taker.to_owned();
                info.updated_at = Some(stamp);
                let body = info.encode_to_vec();
                tx.execute(
                    "UPDATE runs SET owner = $2, info = $3, updated_ns = $4 WHERE run_id = $1",
                    &[&run_id, &taker, &body, &now],
                )
                .await
                .map_err(classify)?;
                taken.push(TakenRun { info, from });
            }
            tx.commit().await.map_err(classify)?;
            Ok(taken)
        })
    }

    fn beat(&self, run_id: &str) -> Result<bool, StoreError> {
        let s = &self.shared;
        let active = [RunState::Pending as i32, RunState::Running as i32];
        s.block_on(async {
            let client = s.read_client().await?;
            // Only for an active run row (the foreign key bounds the table by `runs`).
            let written = client
                .execute(
                    "INSERT INTO run_beats (run_id, beat_at) SELECT run_id, clock_timestamp() \
                     FROM runs WHERE run_id = $1 AND state = ANY($2) \
                     ON CONFLICT (run_id) DO UPDATE SET beat_at = excluded.beat_at",
                    &[&run_id, &active.as_slice()],
                )
                .await
                .map_err(classify)?;
            Ok(written > 0)
        })
    }

    fn beat_ages(&self, run_ids: &[String]) -> Result<Vec<(String, Duration)>, StoreError> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.shared;
        s.block_on(async {
            let client = s.read_client().await?;
            let rows = client
                .query(
                    "SELECT run_id, greatest(extract(epoch FROM clock_timestamp() - beat_at), 0)\
                     ::float8 FROM run_beats WHERE run_id = ANY($1)",
                    &[&run_ids],
                )
                .await
                .map_err(classify)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let run_id: String = row.try_get(0).map_err(classify)?;
                let secs: f64 = row.try_get(1).map_err(classify)?;
                let age = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
                out.push((run_id, age));
            }
            Ok(out)
        })
    }

    fn release(&self, owner: &str) -> Result<(), StoreError> {
        let s = &self.shared;
        s.block_on(async {
            let client = s.read_client().await?;
            client
                .execute(
                    "UPDATE daemon_leases SET expires_at = clock_timestamp() WHERE owner = $1",
                    &[&owner],
                )
                .await
                .map_err(classify)?;
            Ok(())
        })
    }
}
