//! Property: whatever bytes arrive on server-map's stdin (NUL, invalid
//! UTF-8, CR, empty lines, lines far over 4 KiB, split at any byte), it
//! answers exactly one line per input line: `NULL` for every line that
//! cannot be a key and for unknown keys, else one of the key's values in
//! balance.conf; and it exits 0 at end of input. The lines come from seeded
//! generators (see `rewritemap::client::hostile`); a failure names its seed.

mod common;

use std::time::Duration;

use rewritemap::check_key;
use rewritemap::client::MapProcess;
use rewritemap::client::hostile::{Hostile, answers_per_line};
use server_map::MapFile;

/// A failure bound, not the expected time (well under a second a seed).
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn any_bytes_on_stdin_get_one_answer_per_line() {
    let file = common::fixture("balance.confA");
    let map_file = MapFile::parse(&common::fixture_bytes("balance.confA")).expect("fixture");
    let keys = [
        "app3001",
        "app3010",
        "ALL",
        "app9",
        "all",
        "3001",
        "app3001|app3002",
    ];
    for seed in [1, 2, 3, Hostile::random_seed()] {
        let mut lines = Hostile::new(seed);
        let input = lines.stream(&keys, 1500);
        let mut map = MapProcess::spawn(common::BIN, [file.as_os_str()]).expect("start server-map");
        let output = map
            .answer_all(input.clone(), &lines.pieces(), BOUND)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\nstderr:\n{}", map.stderr()));
        let answers = answers_per_line(&input, &output, "NULL")
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (line, answer) in answers {
            let Ok(key) = check_key(line) else { continue };
            match map_file.get(key) {
                Some(value) => assert!(
                    value.alternatives().contains(&answer),
                    "seed {seed}: {key:?} -> {answer:?}"
                ),
                None => assert_eq!(answer, "NULL", "seed {seed}: {key:?}"),
            }
        }
        let (status, stderr) = map.finish(BOUND).expect("finish");
        assert!(
            status.is_some_and(|s| s.success()),
            "seed {seed}: {status:?}\n{stderr}"
        );
    }
}
