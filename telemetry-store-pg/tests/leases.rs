//! Owner leases on real PostgreSQL: no run is taken over while its owner's lease is current;
//! once it lapses (released explicitly here, so nothing depends on timing), another daemon
//! takes the owner's pending and running runs (never its finished ones, never another live
//! owner's), the old owner cannot write them back, and its next renewal says it had lapsed.
//! Skipped (with a message) when GYM_TELEMETRY_TEST_PG is unset outside CI.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use telemetry_core::pb::{RunInfo, RunState};
use telemetry_store::{Backend, Renewal};
use telemetry_store_pg::testing;

const HOUR: Duration = Duration::from_secs(3600);

fn run(id: &str, state: RunState, owner: &str) -> RunInfo {
    RunInfo {
        run_id: id.into(),
        state: state as i32,
        owner: owner.into(),
        agent_id: "agent-0".into(),
        ..Default::default()
    }
}

fn stored(b: &telemetry_store_pg::PgBackend, id: &str) -> RunInfo {
    let rows = b.reader().unwrap().run_infos().unwrap();
    rows.into_iter()
        .find(|r| r.run_id == id)
        .unwrap_or_else(|| panic!("{id} not stored"))
}

#[test]
fn a_lapsed_owners_active_runs_are_taken_and_a_current_lease_is_never_passed_over() {
    let Some(b) = testing::fresh_backend("leases") else {
        return;
    };
    let mut w = b.open_writer().unwrap();
    let leases = b.leases().unwrap().expect("postgres has leases");
    assert_eq!(leases.renew("a", HOUR).unwrap(), Renewal::New);
    assert_eq!(leases.renew("a", HOUR).unwrap(), Renewal::Held);
    assert_eq!(leases.renew("b", HOUR).unwrap(), Renewal::New);
    assert_eq!(leases.renew("c", HOUR).unwrap(), Renewal::New);
    w.put_run_info(&run("a-running", RunState::Running, "a"))
        .unwrap();
    w.put_run_info(&run("a-pending", RunState::Pending, "a"))
        .unwrap();
    w.put_run_info(&run("a-done", RunState::Completed, "a"))
        .unwrap();
    w.put_run_info(&run("c-running", RunState::Running, "c"))
        .unwrap();
    // An owner-less row (a store one daemon owns) is nobody's to take.
    w.put_run_info(&run("nobody", RunState::Running, ""))
        .unwrap();

    // Every lease current: nothing is taken, however often asked.
    for _ in 0..5 {
        assert!(leases.take_over("b").unwrap().is_empty());
    }
    assert_eq!(stored(&b, "a-running").owner, "a");

    // A's lease lapses (released: as at a clean shutdown, or its TTL passing).
    leases.release("a").unwrap();
    let mut taken = leases.take_over("b").unwrap();
    taken.sort_by(|x, y| x.info.run_id.cmp(&y.info.run_id));
    let ids: Vec<(&str, &str, &str)> = taken
        .iter()
        .map(|t| {
            (
                t.info.run_id.as_str(),
                t.from.as_str(),
                t.info.owner.as_str(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![("a-pending", "a", "b"), ("a-running", "a", "b")],
        "A's active runs, not its finished one nor C's"
    );
    assert_eq!(taken[1].info.state, RunState::Running as i32);
    for id in ["a-pending", "a-running"] {
        assert_eq!(stored(&b, id).owner, "b", "{id} is B's in the store");
    }
    assert_eq!(stored(&b, "a-done").owner, "a");
    assert_eq!(stored(&b, "c-running").owner, "c");
    assert_eq!(stored(&b, "nobody").owner, "");
    // Taken once: a second taker finds nothing (B's lease is current).
    assert!(leases.take_over("c").unwrap().is_empty());

    // A comes back: it cannot write a taken run back, and its renewal says it had lapsed.
    w.put_run_info(&run("a-running", RunState::Completed, "a"))
        .unwrap();
    let row = stored(&b, "a-running");
    assert_eq!(
        (row.owner.as_str(), row.state),
        ("b", RunState::Running as i32)
    );
    assert_eq!(leases.renew("a", HOUR).unwrap(), Renewal::Lapsed);
    // The new owner writes its runs as before; A's own finished row stays A's to write.
    w.put_run_info(&run("a-running", RunState::Failed, "b"))
        .unwrap();
    assert_eq!(stored(&b, "a-running").state, RunState::Failed as i32);
    w.put_run_info(&run("a-done", RunState::Failed, "a"))
        .unwrap();
    assert_eq!(stored(&b, "a-done").state, RunState::Failed as i32);
}

#[test]
fn runs_of_an_owner_without_any_lease_row_are_taken() {
    // Rows written before leases existed (schema v2) name an owner that never held a lease.
    let Some(b) = testing::fresh_backend("leases_none") else {
        return;
    };
    let mut w = b.open_writer().unwrap();
    let leases = b.leases().unwrap().expect("postgres has leases");
    w.put_run_info(&run("old", RunState::Running, "old-daemon"))
        .unwrap();
    leases.renew("b", HOUR).unwrap();
    let taken = leases.take_over("b").unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].from, "old-daemon");
    assert_eq!(stored(&b, "old").owner, "b");
}

#[test]
fn a_renewal_racing_a_take_over_leaves_one_owner_and_tells_the_old_one() {
    // The race the lease row lock settles: A renews a lapsed lease while B takes over. Whatever
    // the interleaving, the run has exactly one owner afterwards (B if B took it, else A),
    // A is told its lease had lapsed, and once A's renewal is in, nothing more is taken.
    let Some(b) = testing::fresh_backend("leases_race") else {
        return;
    };
    let mut w = b.open_writer().unwrap();
    let leases = b.leases().unwrap().expect("postgres has leases");
    leases.renew("b", HOUR).unwrap();
    let mut took = 0;
    for i in 0..60 {
        let id = format!("r{i}");
        leases.renew("a", HOUR).unwrap();
        w.put_run_info(&run(&id, RunState::Running, "a")).unwrap();
        leases.release("a").unwrap();
        let (renewal, taken) = std::thread::scope(|s| {
            let renew = s.spawn(|| leases.renew("a", HOUR).unwrap());
            let take = s.spawn(|| leases.take_over("b").unwrap());
            (renew.join().unwrap(), take.join().unwrap())
        });
        let owner = stored(&b, &id).owner;
        assert_eq!(
            renewal,
            Renewal::Lapsed,
            "round {i}: A learns its lease had lapsed"
        );
        if taken.iter().any(|t| t.info.run_id == id) {
            took += 1;
            assert_eq!(owner, "b", "round {i}");
        } else {
            assert_eq!(owner, "a", "round {i}: not taken, so still A's");
        }
        // Whichever came first, A's lease is current now: nothing more is taken.
        assert!(leases.take_over("b").unwrap().is_empty(), "round {i}");
        assert_eq!(stored(&b, &id).owner, owner, "round {i}");
        // End the round with the run finished, so the next round's take-over sees only its own.
        let mut done = stored(&b, &id);
        done.state = RunState::Completed as i32;
        w.put_run_info(&done).unwrap();
    }
    eprintln!("taken in {took} of 60 rounds");
}

#[test]
fn heartbeats_are_stored_only_for_active_runs_and_aged_on_the_database_clock() {
    let Some(b) = testing::fresh_backend("beats") else {
        return;
    };
    let mut w = b.open_writer().unwrap();
    let leases = b.leases().unwrap().expect("postgres has leases");
    w.put_run_info(&run("running", RunState::Running, "a"))
        .unwrap();
    w.put_run_info(&run("pending", RunState::Pending, "a"))
        .unwrap();
    w.put_run_info(&run("done", RunState::Completed, "a"))
        .unwrap();
    assert!(leases.beat("running").unwrap());
    assert!(leases.beat("pending").unwrap());
    assert!(!leases.beat("done").unwrap(), "a finished run has no beats");
    assert!(!leases.beat("unknown").unwrap(), "no row, no beat");
    let ids = |v: Vec<(String, Duration)>| {
        let mut ids: Vec<String> = v.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        ids
    };
    let all = ["running", "pending", "done", "unknown"].map(String::from);
    assert_eq!(ids(leases.beat_ages(&all).unwrap()), ["pending", "running"]);
    assert!(leases.beat_ages(&[]).unwrap().is_empty());

    // Ages grow on the database's clock, and a new beat starts them again.
    let first = leases.beat_ages(&all[..1]).unwrap()[0].1;
    let later = loop {
        let age = leases.beat_ages(&all[..1]).unwrap()[0].1;
        if age > first + Duration::from_millis(300) {
            break age;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(later < HOUR, "{later:?}");
    assert!(leases.beat("running").unwrap());
    assert!(leases.beat_ages(&all[..1]).unwrap()[0].1 < later);
}
