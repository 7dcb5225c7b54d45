//! The importer against a real in-process daemon: fixture files written by tensorboardX and
//! tensorboard (tests/fixtures/make_fixtures.py) go in, the store is read back.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use prost::Message;
use telemetry_core::pb::Scalar;
use telemetry_server::{AuthConfig, ServerConfig, ServerHandle};
use telemetry_store::{Filter, StoreConfig, StoreReader};
use telemetry_tensorboard::{
    import::import_tag,
    import_once,
    tfevents::{encode_frame, Event, FrameReader, Next, Summary, SummaryValue},
    ImportConfig, ImportReport, Importer,
};

const WAIT: Duration = Duration::from_secs(30);
const FILE: &str = "events.out.tfevents.1700000000.fixture";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

async fn start(var: &Path) -> ServerHandle {
    let mut cfg = ServerConfig::ephemeral(var);
    cfg.auth = AuthConfig::InsecureNoAuth;
    telemetry_server::start(cfg).await.expect("server starts")
}

fn config(d: &ServerHandle, run: &str, dir: &Path) -> ImportConfig {
    let mut cfg = ImportConfig::new(run, dir);
    cfg.endpoint = d.endpoint();
    cfg.poll_interval = Duration::from_millis(10);
    cfg
}

fn stored(var: &Path, run: &str) -> Vec<Scalar> {
    let reader = StoreReader::open(&StoreConfig::in_var_dir(var).path).unwrap();
    reader
        .read_scalars_page(0, &Filter::run(run), 10_000)
        .unwrap()
}

/// (tag, step) of every stored scalar, sorted, with no pair twice.
fn series(var: &Path, run: &str) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = stored(var, run)
        .into_iter()
        .map(|s| (s.tag, s.step))
        .collect();
    v.sort();
    let n = v.len();
    v.dedup();
    assert_eq!(v.len(), n, "a scalar was stored twice");
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Offsets of the frames of a file.
fn frame_offsets(data: &[u8]) -> Vec<u64> {
    let mut r = FrameReader::new(data, 0);
    let mut out = Vec::new();
    while let Ok(Next::Frame(f)) = r.next_frame() {
        out.push(f.offset);
    }
    out
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Polls `cond` (every 10 ms) until it holds; panics after [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn scalar_event(step: i64, values: &[(&str, f32)]) -> Vec<u8> {
    let e = Event {
        wall_time: 1_700_000_000.0 + step as f64,
        step,
        summary: Some(Summary {
            value: values
                .iter()
                .map(|(tag, v)| SummaryValue {
                    tag: (*tag).into(),
                    simple_value: Some(*v),
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    };
    encode_frame(&e.encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_once_then_a_rerun_stores_nothing_twice() {
    let var = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tbx"), logs.path());
    let d = start(var.path()).await;

    let report = import_once(config(&d, "tb-run", logs.path()))
        .await
        .unwrap();
    assert_eq!(report.files, 3, "{report}");
    assert_eq!(report.scalars_read, 18, "{report}");
    assert_eq!(report.stored, 18, "{report}");
    assert_eq!(report.not_scalars, 1, "the text summary: {report}");
    assert_eq!((report.rejected, report.failed_files), (0, 0), "{report}");

    let all = stored(var.path(), "tb-run");
    assert_eq!(all.len(), 18);
    let loss: Vec<&Scalar> = all.iter().filter(|s| s.tag == "loss").collect();
    assert_eq!(loss.len(), 10);
    let at = |step: i64| loss.iter().find(|s| s.step == step).unwrap();
    assert_eq!(at(0).value, 0.5);
    assert!(at(2).value.is_nan());
    assert_eq!(at(3).value, f64::INFINITY);
    assert_eq!(at(4).value, f64::NEG_INFINITY);
    assert_eq!(at(9).value, 1.125);
    assert_eq!(at(9).timestamp.unwrap().seconds, 1_700_000_009);
    assert!(at(0).producer_id.starts_with("tb."));

    let reader = StoreReader::open(&StoreConfig::in_var_dir(var.path()).path).unwrap();
    let tags: Vec<(String, u64, i64)> = reader
        .list_tags("tb-run", 100)
        .unwrap()
        .into_iter()
        .map(|t| (t.tag, t.points, t.last_step))
        .collect();
    assert_eq!(
        tags,
        vec![
            ("charts/lr".to_string(), 2, 5),
            ("loss".to_string(), 10, 9),
            ("reward/eval".to_string(), 3, 2),
            ("reward/train".to_string(), 3, 2),
        ]
    );
    let eval = all.iter().find(|s| s.tag == "reward/eval" && s.step == 2);
    assert_eq!(eval.unwrap().value, -2.0);

    // A rerun: one probe per file comes back a duplicate, the rest is skipped locally.
    let again = import_once(config(&d, "tb-run", logs.path()))
        .await
        .unwrap();
    assert_eq!(again.stored, 0, "{again}");
    assert_eq!(again.duplicates, 3, "{again}");
    assert_eq!(again.already_stored, 15, "{again}");
    assert_eq!(stored(var.path(), "tb-run").len(), 18);
    // Another run of the same files is other producers: stored again, there.
    let other = import_once(config(&d, "tb-run-2", logs.path()))
        .await
        .unwrap();
    assert_eq!(other.stored, 18, "{other}");
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_import_stores_only_what_was_appended() {
    let var = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let d = start(var.path()).await;
    let whole = std::fs::read(fixtures().join("new_style").join(FILE)).unwrap();
    let offs = frame_offsets(&whole);
    assert_eq!(offs.len(), 5, "file_version + 4 scalars");
    // Part one: the header event, two scalars, and half of the third (a torn tail).
    let cut = offs[3] as usize + 7;
    let path = logs.path().join(FILE);
    std::fs::write(&path, &whole[..cut]).unwrap();

    let first = import_once(config(&d, "grow", logs.path())).await.unwrap();
    assert_eq!(first.stored, 2, "{first}");
    assert_eq!(first.torn_tails, 1, "{first}");
    assert_eq!(
        series(var.path(), "grow"),
        vec![("accuracy".into(), 0), ("accuracy".into(), 1)]
    );

    append(&path, &whole[cut..]);
    let second = import_once(config(&d, "grow", logs.path())).await.unwrap();
    assert_eq!(second.stored, 2, "{second}");
    assert_eq!(second.duplicates, 1, "only the probe: {second}");
    assert_eq!(second.already_stored, 1, "{second}");
    assert_eq!(second.torn_tails, 0, "{second}");
    let all = stored(var.path(), "grow");
    assert_eq!(
        series(var.path(), "grow"),
        (0..4).map(|s| ("accuracy".into(), s)).collect::<Vec<_>>()
    );
    assert_eq!(all.iter().find(|s| s.step == 3).unwrap().value, 0.75);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_and_corrupt_files_are_counted_not_fatal() {
    let var = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let d = start(var.path()).await;
    // A handmade file: one event with a valid and an over-long tag, one with a negative step.
    let long = "t".repeat(300);
    let mut data = Vec::new();
    data.extend(scalar_event(1, &[("ok", 1.0), (long.as_str(), 2.0)]));
    data.extend(scalar_event(-5, &[("ok", 3.0)]));
    data.extend(scalar_event(2, &[("ok", 4.0)]));
    data.extend(encode_frame(b"\xff\xff not an event"));
    data.extend(scalar_event(3, &[("ok", 5.0)]));
    std::fs::write(logs.path().join("events.out.tfevents.1.hand"), &data).unwrap();
    // The corrupt fixture: its first three frames are good (header, loss@0, lr@0).
    std::fs::create_dir(logs.path().join("bad")).unwrap();
    std::fs::copy(
        fixtures().join("corrupt").join(FILE),
        logs.path().join("bad").join(FILE),
    )
    .unwrap();

    let report = import_once(config(&d, "mixed", logs.path())).await.unwrap();
    assert_eq!(report.rejected, 2, "{report}");
    assert_eq!(report.undecodable_events, 1, "{report}");
    assert_eq!(report.failed_files, 1, "{report}");
    assert_eq!(report.stored, 3 + 2, "{report}");
    assert!(report.to_string().contains("rejected 1:"), "{report}");
    assert_eq!(
        series(var.path(), "mixed"),
        vec![
            ("bad/charts/lr".into(), 0),
            ("bad/loss".into(), 0),
            ("ok".into(), 1),
            ("ok".into(), 2),
            ("ok".into(), 3),
        ]
    );
    // The rerun neither stores nor re-rejects anything (rejected seqs advanced the watermark).
    let again = import_once(config(&d, "mixed", logs.path())).await.unwrap();
    assert_eq!((again.stored, again.rejected), (0, 0), "{again}");
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_tails_growing_and_new_files_until_stopped() {
    let var = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let d = start(var.path()).await;
    let path = logs.path().join("events.out.tfevents.1.live");
    std::fs::write(&path, scalar_event(0, &[("loss", 1.0)])).unwrap();

    let mut importer = Importer::new(config(&d, "live", logs.path())).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let r = importer
            .follow(async {
                let _ = stop_rx.await;
            })
            .await;
        (r, importer.report().clone())
    });
    let vp = var.path().to_owned();
    let count = |n| {
        let vp = vp.clone();
        move || stored(&vp, "live").len() == n
    };
    until("the first scalar", count(1)).await;

    // The writer appends a record in two writes: the torn half is left for the next pass.
    let next = scalar_event(1, &[("loss", 0.5)]);
    append(&path, &next[..5]);
    append(&path, &next[5..]);
    until("the appended scalar", count(2)).await;

    // A file that appears later, in a subdirectory (an add_scalars writer).
    std::fs::create_dir_all(logs.path().join("ret/eval")).unwrap();
    std::fs::write(
        logs.path().join("ret/eval/events.out.tfevents.2.live"),
        scalar_event(1, &[("ret", 7.0)]),
    )
    .unwrap();
    until("the new file's scalar", count(3)).await;

    stop_tx.send(()).unwrap();
    let (result, report) = bounded("follow to stop", task).await.unwrap();
    result.unwrap();
    assert_eq!(report.stored, 3, "{report}");
    assert_eq!(report.files, 2, "{report}");
    assert_eq!(
        series(var.path(), "live"),
        vec![
            ("loss".into(), 0),
            ("loss".into(), 1),
            ("ret/eval".into(), 1)
        ]
    );
    assert_eq!(
        import_tag(&["ret".into(), "eval".into()], "ret"),
        "ret/eval"
    );

    // With an idle bound, follow ends on its own once nothing new comes.
    let mut cfg = config(&d, "live", logs.path());
    cfg.idle_exit = Some(Duration::from_millis(200));
    let mut idle = Importer::new(cfg).unwrap();
    bounded("the idle exit", idle.follow(std::future::pending()))
        .await
        .unwrap();
    let r: &ImportReport = idle.report();
    assert_eq!((r.stored, r.duplicates), (0, 2), "{r}");
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_is_down_is_an_error_once_and_retried_in_follow() {
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(
        logs.path().join("events.out.tfevents.1.x"),
        scalar_event(0, &[("loss", 1.0)]),
    )
    .unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = ImportConfig::new("down", logs.path());
    cfg.endpoint = format!("http://127.0.0.1:{port}");
    let err = bounded("the error", import_once(cfg.clone()))
        .await
        .expect_err("nothing listens");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    cfg.idle_exit = Some(Duration::from_millis(100));
    cfg.poll_interval = Duration::from_millis(10);
    let mut importer = Importer::new(cfg).unwrap();
    bounded(
        "follow to give up idling",
        importer.follow(std::future::pending()),
    )
    .await
    .unwrap();
    assert_eq!(importer.report().stored, 0);
}
