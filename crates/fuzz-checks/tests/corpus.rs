//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through its
//! target's check, on stable, as ordinary tests: what the fuzzer once found
//! interesting stays checked on every CI run, without nightly or libFuzzer.

use std::fs;
use std::path::PathBuf;

use fuzz_checks::TARGETS;

fn replay(target: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../fuzz/corpus/{target}"));
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for file in files {
        let data = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Name the file that fails: the check's own message says what.
        eprintln!("{target}: {}", file.display());
        check(&data);
    }
}

#[test]
fn key_reader_corpus() {
    replay("key_reader");
}

#[test]
fn map_file_corpus() {
    replay("map_file");
}

#[test]
fn pid_record_corpus() {
    replay("pid_record");
}

#[test]
fn listen_table_corpus() {
    replay("listen_table");
}

#[test]
fn live_map_corpus() {
    replay("live_map");
}

#[test]
fn every_target_has_a_corpus_test_here() {
    let source = include_str!("corpus.rs");
    for (name, _) in TARGETS {
        assert!(
            source.contains(&format!("fn {name}_corpus()")),
            "{name} has no replay test"
        );
    }
}
