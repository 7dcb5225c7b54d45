//! Replays the `segment_scan` fuzz corpus (`fuzz/corpus/segment_scan/`) through the same checks
//! the fuzz target runs (`telemetry_shim::disk_queue::fuzzing`), on the stable toolchain.
//!
//! Fuzzing needs nightly and is not run by CI; this test is, so every segment file that once
//! found a bug, and every one the fuzzer kept for its coverage, is scanned on each `cargo test`:
//! as it is and with valid CRCs, and both through a real `DiskQueue::open`.

use std::path::PathBuf;
use telemetry_shim::disk_queue::fuzzing::{
    recover_segment_file, scan_segment_bytes, with_valid_crcs,
};

#[test]
fn the_segment_scan_corpus_passes_the_fuzz_checks() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/segment_scan");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, path) in files.iter().enumerate() {
        eprintln!("{}", path.display());
        let data = std::fs::read(path).expect("a corpus file");
        let fixed = with_valid_crcs(&data);
        scan_segment_bytes(&data);
        scan_segment_bytes(&fixed);
        for (j, bytes) in [&data, &fixed].into_iter().enumerate() {
            recover_segment_file(&tmp.path().join(format!("{i}-{j}")), bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
