//! Property: whatever bytes arrive on verify-port's stdin (NUL, invalid
//! UTF-8, CR, empty lines, lines far over 4 KiB, split at any byte), it
//! answers exactly one line per input line, `closed` for every line that
//! cannot be a key, `open<key>` only for the port that listens, and exits 0
//! at end of input. The lines come from seeded generators (see
//! `rewritemap::client::hostile`); a failure names its seed.

use std::net::TcpListener;
use std::time::Duration;

use rewritemap::check_key;
use rewritemap::client::MapProcess;
use rewritemap::client::hostile::{Hostile, answers_per_line};

const BIN: &str = env!("CARGO_BIN_EXE_verify-port");
/// A failure bound, not the expected time (well under a second a seed).
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn any_bytes_on_stdin_get_one_answer_per_line() {
    let vm = TcpListener::bind("127.0.0.1:0").expect("bind");
    let open = vm.local_addr().expect("addr").port().to_string();
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port nothing listens on")
        .port()
        .to_string();
    let keys = [
        open.clone(),
        closed.clone(),
        format!("127.0.0.1:{open}"),
        format!("localhost:{closed}"),
        "[::1]:1".to_owned(),
        "192.0.2.1:80".to_owned(),
        "0".to_owned(),
        "65536".to_owned(),
        "-1".to_owned(),
    ];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    for seed in [1, 2, 3, Hostile::random_seed()] {
        let mut lines = Hostile::new(seed);
        let input = lines.stream(&keys, 1500);
        let mut map = MapProcess::spawn(BIN, ["--log-level", "error"]).expect("start verify-port");
        let output = map
            .answer_all(input.clone(), &lines.pieces(), BOUND)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\nstderr:\n{}", map.stderr()));
        let answers = answers_per_line(&input, &output, "closed")
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (line, answer) in answers {
            if let Some(key) = answer.strip_prefix("open") {
                assert_eq!(Ok(key), check_key(line), "seed {seed}");
                assert!(
                    key.ends_with(&format!(":{open}")) || key == open,
                    "seed {seed}: {key}"
                );
            } else {
                assert_eq!(answer, "closed", "seed {seed}");
            }
        }
        let (status, stderr) = map.finish(BOUND).expect("finish");
        assert!(
            status.is_some_and(|s| s.success()),
            "seed {seed}: {status:?}\n{stderr}"
        );
    }
}
