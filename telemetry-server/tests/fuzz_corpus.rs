//! Replays the `legacy_transcode` fuzz corpus (`fuzz/corpus/legacy_transcode/`) through the same
//! checks the fuzz target runs (`telemetry_server::fuzzing`), on the stable toolchain.
//!
//! Fuzzing needs nightly and is not run by CI; this test is, so every input that once found a
//! bug, and every one the fuzzer kept for its coverage, is checked on each `cargo test`.

use std::path::PathBuf;

#[test]
fn the_legacy_transcode_corpus_passes_the_fuzz_checks() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/legacy_transcode");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    for path in files {
        eprintln!("{}", path.display());
        let data = std::fs::read(&path).expect("a corpus file");
        telemetry_server::fuzzing::legacy_messages(&data);
    }
}
