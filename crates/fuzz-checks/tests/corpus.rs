//! Replays every committed fuzz input through its target's check, on stable,
//! as ordinary tests, without nightly or libFuzzer: the hand-written seeds
//! (`fuzz/seeds/<target>/`: realistic inputs and past crashes, kept as
//! they are) and the minimized corpus (`fuzz/corpus/<target>/`: one input
//! per code edge the fuzzer reached).

use std::fs;
use std::path::{Path, PathBuf};

use fuzz_checks::TARGETS;

fn replay(target: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    for kind in ["seeds", "corpus"] {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../fuzz/{kind}/{target}"));
        replay_dir(target, &dir, *check);
    }
}

fn replay_dir(target: &str, dir: &Path, check: fuzz_checks::Check) {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty", dir.display());
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
fn every_fuzz_target_is_a_check_here() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    let mut fuzzed: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.expect("fuzz target").path();
            Some(path.file_stem()?.to_str()?.to_owned())
        })
        .collect();
    fuzzed.sort();
    let mut checked: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    checked.sort();
    assert_eq!(fuzzed, checked);
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
