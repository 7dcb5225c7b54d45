//! The headless demo end to end: a server, the two-agent worker through real shims, and the
//! summary read back from the store.
#![allow(clippy::unwrap_used)]

use gym_telemetry_demo::{run, DemoArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headless_demo_stores_everything_it_produces() {
    let var = tempfile::tempdir().unwrap();
    let summary = run(DemoArgs {
        headless: true,
        var_dir: Some(var.path().to_path_buf()),
        episodes: 5,
        step_delay_ms: Some(0),
    })
    .await
    .unwrap();
    assert_eq!(summary.episodes, 10, "{summary}");
    assert_eq!(
        summary.steps + summary.episodes,
        summary.produced,
        "{summary}"
    );
    assert_eq!((summary.shim_dropped, summary.rejected), (0, 0));
}
