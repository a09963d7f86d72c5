//! Property: whatever bytes arrive on image-launcher's stdin (NUL, invalid
//! UTF-8, CR, empty lines, lines far over 4 KiB, split at any byte), it
//! answers exactly one line per input line: `NULL` for every line that
//! cannot be a key, else `NULL` or a port of the pool; and it exits 0 at end
//! of input. The pool's VM is `/bin/false`, which never listens: the keys
//! that name a pool port launch it and get `NULL`, and nothing is left
//! running. The lines come from seeded generators (see
//! `rewritemap::client::hostile`); a failure names its seed.

mod common;

use std::time::Duration;

use common::{Pool, free_port};
use rewritemap::client::hostile::{Hostile, answers_per_line};

/// A failure bound, not the expected time (a second or so a seed).
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn any_bytes_on_stdin_get_one_answer_per_line() {
    let mut pool = Pool::new(2);
    pool.start_timeout_ms = 2_000;
    let outside = free_port().to_string();
    let inside: Vec<String> = pool.ports.iter().map(u16::to_string).collect();
    let keys = [
        inside[0].as_str(),
        inside[1].as_str(),
        outside.as_str(),
        "ALL",
        "0",
        "65536",
        "app3001",
    ];
    for seed in [1, 2, 3, Hostile::random_seed()] {
        let mut lines = Hostile::new(seed);
        let input = lines.stream(&keys, 300);
        let mut args = pool.args(&["--log-level", "error"]);
        args.extend(["--".into(), "/bin/false".into()]);
        let which = pool.launcher_with(args);
        let map = &mut pool.launchers[which];
        let output = map
            .answer_all(input.clone(), &lines.pieces(), BOUND)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\nstderr:\n{}", map.stderr()));
        let answers = answers_per_line(&input, &output, "NULL")
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (_, answer) in answers {
            assert!(
                answer == "NULL" || inside.contains(&answer),
                "seed {seed}: {answer:?}"
            );
        }
        let (status, stderr) = pool.launchers.remove(which).finish(BOUND).expect("finish");
        assert!(
            status.is_some_and(|s| s.success()),
            "seed {seed}: {status:?}\n{stderr}"
        );
    }
}
