//! Replays the `jsonl_line` and `ingest_batch` fuzz corpora (`fuzz/corpus/<target>/`) through
//! the same checks the fuzz targets run (`telemetry_core::fuzzing`), on the stable toolchain.
//!
//! Fuzzing needs nightly and is not run by CI; this test is, so every input that once found a
//! bug, and every input the fuzzer kept for its coverage, is checked on each `cargo test`.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    files
}

#[test]
fn the_jsonl_line_corpus_passes_the_fuzz_checks() {
    for (path, data) in corpus("jsonl_line") {
        eprintln!("{}", path.display());
        telemetry_core::fuzzing::jsonl_line(&data);
    }
}

#[test]
fn the_ingest_batch_corpus_passes_the_fuzz_checks() {
    for (path, data) in corpus("ingest_batch") {
        eprintln!("{}", path.display());
        telemetry_core::fuzzing::ingest_batch(&data);
    }
}
