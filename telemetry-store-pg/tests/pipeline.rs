//! An append's statements are pipelined (sent before their replies are read). A statement that
//! fails late in the pipeline, after the step rows' `COPY` and the counter and watermark moves
//! have been sent, must still roll the whole batch back: no row, no seq, no watermark, no run
//! summary of it survives, the error is the failing statement's own, and the writer's next
//! append goes on from where the last committed one left off.
//!
//! The fault is injected in the database: a trigger on `run_agents` (written near the end of
//! the pipeline) raises for one run id.

use telemetry_core::pb::{self, Record};
use telemetry_store::{conformance::stored_seqs, Backend, Filter, StoreError};
use telemetry_store_pg::testing;

fn step(run: &str, pseq: u64) -> Record {
    pb::RunStep {
        run_id: run.into(),
        agent_id: "a".into(),
        step_index: pseq,
        action_json: "0".into(),
        observation_json: "{}".into(),
        control_mode: "agent".into(),
        producer_id: "p".into(),
        producer_seq: pseq,
        ..Default::default()
    }
    .into()
}

/// Installs the fault: inserting a `run_agents` row of run `poison` raises.
fn poison_run_agents(url: &str, schema: &str) {
    let sql = format!(
        "CREATE FUNCTION {schema}.poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.run_id = 'poison' THEN RAISE EXCEPTION 'injected fault'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER poison BEFORE INSERT ON {schema}.run_agents \
         FOR EACH ROW EXECUTE FUNCTION {schema}.poison();"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = url
            .parse::<tokio_postgres::Config>()
            .expect("url")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(conn);
        client.batch_execute(&sql).await.expect("install the fault");
        drop(client);
        let _ = driver.await;
    });
}

#[test]
fn a_statement_failing_late_in_the_pipeline_rolls_the_whole_batch_back() {
    let Some(url) = testing::test_url("pipeline") else {
        return;
    };
    let backend =
        telemetry_store_pg::PgBackend::new(testing::fresh_config(&url, "pipe")).expect("backend");
    let mut w = backend.open_writer().expect("open writer");
    let first = w
        .append(&mut (1..=3).map(|i| step("ok", i)).collect::<Vec<_>>(), &[])
        .expect("append");
    assert_eq!(stored_seqs(&first.outcomes), vec![1, 2, 3]);
    poison_run_agents(&url, backend.config().schema());

    let mut bad: Vec<Record> = (4..=6).map(|i| step("ok", i)).collect();
    bad.push(step("poison", 7));
    bad.push(
        pb::Scalar {
            run_id: "ok".into(),
            tag: "loss".into(),
            step: 7,
            value: 0.5,
            producer_id: "p".into(),
            producer_seq: 8,
            ..Default::default()
        }
        .into(),
    );
    let before = bad.clone();
    let err = w
        .append(&mut bad, &[])
        .expect_err("the injected fault fails the append");
    match &err {
        StoreError::Server { code, detail, .. } => {
            assert_eq!(
                code.as_deref(),
                Some("P0001"),
                "the failing statement's error: {err}"
            );
            assert!(detail.contains("injected fault"), "{err}");
        }
        other => panic!("expected the server's error, got {other}"),
    }
    assert_eq!(bad, before, "records untouched (no seq written back)");

    assert_eq!(
        w.watermark("p").expect("watermark"),
        3,
        "watermark not moved"
    );
    let reader = backend.reader().expect("reader");
    let steps = reader
        .steps_page(0, &Filter::default(), 100)
        .expect("steps");
    assert_eq!(
        steps.iter().map(|s| s.producer_seq).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "none of the failed batch's rows (COPY'd before the fault) survive"
    );
    let runs = reader.list_runs().expect("runs");
    assert_eq!(runs.len(), 1, "no summary of the poisoned run: {runs:?}");
    assert_eq!(runs[0].step_count, 3, "the run summary did not move");

    // The same records again, minus the poisoned one: stored with the next seqs (the counters
    // did not move either), on the same writer and connection.
    let mut retry: Vec<Record> = (4..=6).map(|i| step("ok", i)).collect();
    let again = w.append(&mut retry, &[]).expect("the writer goes on");
    assert_eq!(stored_seqs(&again.outcomes), vec![4, 5, 6]);
    assert_eq!(w.watermark("p").expect("watermark"), 6);
}
