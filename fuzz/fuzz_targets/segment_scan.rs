//! Fuzzes the shim's disk-queue recovery: arbitrary bytes as a segment file, as they are and with
//! their frames' CRCs made valid (so the fuzzer reaches good frames too). The scan must never
//! panic or allocate more than the file holds, and its recovery must add up: kept + cut = the
//! file, the kept part rescans clean, replay finds what was counted. One input in 16 also goes
//! through `DiskQueue::open` on a real directory (under `FUZZ_TMPDIR`, default /dev/shm).
//! Checks: `telemetry_shim::disk_queue::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telemetry_shim::disk_queue::fuzzing::{
    recover_segment_file, scan_segment_bytes, with_valid_crcs,
};

fn tmp_root() -> std::path::PathBuf {
    std::env::var_os("FUZZ_TMPDIR")
        .map(Into::into)
        .unwrap_or_else(|| "/dev/shm".into())
}

fuzz_target!(|data: &[u8]| {
    let fixed = with_valid_crcs(data);
    scan_segment_bytes(data);
    scan_segment_bytes(&fixed);
    // The file path is slower (files, fsync): a sample of inputs, chosen by their content so a
    // crash reproduces.
    if data.first().is_some_and(|b| b % 16 == 0) {
        let dir = tempfile::Builder::new()
            .prefix("segment-scan-")
            .tempdir_in(tmp_root())
            .expect("a temporary directory");
        recover_segment_file(&dir.path().join("q"), &fixed)
            .expect("queue I/O on a fresh directory");
    }
});
