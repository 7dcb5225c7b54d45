//! `migrate-store`: SQLite → PostgreSQL → SQLite, verified by counts and digests; rerun copies
//! nothing; new source records are copied on the next run (resume); a foreign target is
//! refused untouched; the target deduplicates a resend after the move.
//! Skipped (with a message) when GYM_TELEMETRY_TEST_PG is unset outside CI.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use telemetry_core::pb::{self, Record};
use telemetry_store::{AppendOutcome, Backend, Store, StoreConfig};
use telemetry_store_pg::testing;

fn migrate(from: &str, to: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gym-telemetry-daemon"))
        .args(["migrate-store", "--from", from, "--to", to])
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `name: copied=… total=… last_seq=… sha256=…` lines, without the copied count.
fn digests(o: &Output) -> Vec<String> {
    stdout(o)
        .lines()
        .filter(|l| l.contains("sha256="))
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.starts_with("copied="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn copied(o: &Output) -> u64 {
    stdout(o)
        .lines()
        .filter_map(|l| l.split(' ').find_map(|w| w.strip_prefix("copied=")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

/// One batch mixing every stream, producers' seqs shared across streams as a shim stamps them.
fn mixed(round: u64) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let base = round * 100;
    for i in 0..40 {
        let pseq = base + i + 1;
        let rec: Record = match i % 5 {
            0 => pb::RunEpisode {
                run_id: "m".into(),
                episode_index: pseq,
                total_reward: f64::NAN,
                producer_id: "w1".into(),
                producer_seq: pseq,
                ..Default::default()
            }
            .into(),
            1 => pb::Scalar {
                run_id: "m".into(),
                tag: "loss/v".into(),
                step: pseq as i64,
                value: if i == 1 {
                    f64::INFINITY
                } else {
                    0.5 * i as f64
                },
                producer_id: "w1".into(),
                producer_seq: pseq,
                ..Default::default()
            }
            .into(),
            _ => pb::RunStep {
                run_id: "m".into(),
                step_index: pseq,
                observation_json: format!("{{\"o\":{pseq}}}"),
                reward: -0.25,
                producer_id: "w1".into(),
                producer_seq: pseq,
                ..Default::default()
            }
            .into(),
        };
        out.push(rec);
        // A second producer and an unstamped record in the same batch.
        out.push(
            pb::RunStep {
                run_id: "m2".into(),
                step_index: pseq,
                producer_id: "w2".into(),
                producer_seq: pseq,
                ..Default::default()
            }
            .into(),
        );
    }
    out.push(
        pb::RunStarted {
            run_id: format!("m{round}"),
            ..Default::default()
        }
        .into(),
    );
    out
}

#[test]
fn migrate_store_copies_verifies_resumes_and_refuses_a_foreign_target() {
    let Some(url) = testing::test_url("migrate_store_copies_verifies_resumes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("telemetry.sqlite");
    {
        let mut store = Store::open(StoreConfig::new(&sqlite)).unwrap();
        // Steps of w1 committed later than its episodes and scalars would be copied first by a
        // stream-at-a-time copy: the merge must keep w1's seqs increasing.
        for round in 0..30 {
            store.append(&mut mixed(round), &[]).unwrap();
        }
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let pg = format!("{url}{sep}schema={}", testing::unique_schema("mig"));
    let src = sqlite.to_str().unwrap();

    let first = migrate(src, &pg);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(copied(&first), 30 * 81, "{}", stdout(&first));
    assert!(stdout(&first).contains("migrate-store: verified"));

    // Idempotent: nothing more to copy, same digests.
    let again = migrate(src, &pg);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(copied(&again), 0);
    assert_eq!(digests(&again), digests(&first));

    // Resumable: what the source gained since is copied, and only that.
    {
        let mut store = Store::open(StoreConfig::new(&sqlite)).unwrap();
        store.append(&mut mixed(30), &[]).unwrap();
    }
    let more = migrate(src, &pg);
    assert!(more.status.success(), "{more:?}");
    assert_eq!(copied(&more), 81);

    // And back: PostgreSQL → a new SQLite file, the same digests as the source.
    let back = dir.path().join("back.sqlite");
    let round_trip = migrate(&pg, back.to_str().unwrap());
    assert!(round_trip.status.success(), "{round_trip:?}");
    assert_eq!(digests(&round_trip), digests(&more));

    // The watermarks moved with the rows: a worker's resend after the move is a duplicate.
    let target = telemetry_store_pg::PgBackend::from_url(&pg).unwrap();
    let mut w = target.open_writer().unwrap();
    let mut resend = mixed(30);
    let report = w.append(&mut resend[..2], &[]).unwrap();
    assert!(
        report
            .outcomes
            .iter()
            .all(|o| matches!(o, AppendOutcome::Duplicate)),
        "{report:?}"
    );

    // A target holding another store's data is refused untouched.
    let foreign = format!("{url}{sep}schema={}", testing::unique_schema("migx"));
    let other = telemetry_store_pg::PgBackend::from_url(&foreign).unwrap();
    let mut ow = other.open_writer().unwrap();
    ow.append(
        &mut [pb::RunStep {
            run_id: "elsewhere".into(),
            producer_id: "z".into(),
            producer_seq: 1,
            ..Default::default()
        }
        .into()],
        &[],
    )
    .unwrap();
    let refused = migrate(src, &foreign);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a prefix"),
        "{refused:?}"
    );
    let steps = other
        .reader()
        .unwrap()
        .steps_page(0, &telemetry_store::Filter::default(), 10)
        .unwrap();
    assert_eq!(steps.len(), 1, "the foreign target is untouched");
}
