//! server-map driven exactly as Apache drives it: the real binary, an empty
//! environment, one key written on its stdin, one line read back with a
//! deadline.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{ALL_A, ANSWER_WITHIN, ask, fixture, run, s, start, stderr, stdout};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn plain_keys_answer_their_value_and_unknown_keys_null() {
    let mut map = start(&fixture("balance.confA"));
    assert_eq!(ask(&mut map, "app3001"), "3001");
    assert_eq!(ask(&mut map, "app3010"), "3010");
    for unknown in [
        "app3011",
        "app",
        "all",
        "APP3001",
        "3001",
        "app3001 3001",
        "NULL",
    ] {
        assert_eq!(ask(&mut map, unknown), "NULL", "{unknown:?}");
    }
    // Keys are trimmed like every map of the workspace, as Apache sends them.
    assert_eq!(ask(&mut map, " app3002\t\r"), "3002");
}

#[test]
fn all_answers_each_alternative_about_equally_over_3000_lookups() {
    let mut map = start(&fixture("balance.confA"));
    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..3000 {
        *seen.entry(ask(&mut map, "ALL")).or_default() += 1;
    }
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), ALL_A);
    // 600 expected each; +-25% is more than 6 standard deviations.
    for (port, n) in &seen {
        assert!((450..=750).contains(n), "{port}: {n} of 3000: {seen:?}");
    }
}

#[test]
fn lookups_are_fast_and_the_file_is_not_read_when_unchanged() {
    let mut map = start(&fixture("balance.confA"));
    let started = Instant::now();
    for _ in 0..2000 {
        ask(&mut map, "app3001");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "2000 lookups took {took:?}");
    let (_, stderr) = map.finish(ANSWER_WITHIN).expect("finish");
    assert_eq!(stderr.matches("loaded").count(), 1, "{stderr}");
    assert!(!stderr.contains("reloaded"), "{stderr}");
}

#[test]
fn every_malformed_input_is_null_and_the_map_keeps_working() {
    let mut map = start(&fixture("balance.confA"));
    let huge = vec![b'a'; 1 << 20];
    let cases: [(&str, &[u8]); 7] = [
        ("over-long line", &huge),
        ("invalid UTF-8", b"app\xff3001"),
        ("truncated UTF-8", b"app3001\xc3"),
        ("NUL", b"app3001\x00"),
        ("only NUL", b"\x00"),
        ("empty key", b""),
        ("control character", b"app\x073001"),
    ];
    for (what, line) in cases {
        let (answer, _) = map.ask_bytes(line, ANSWER_WITHIN).expect(what);
        assert_eq!(answer, "NULL", "{what}");
        assert_eq!(ask(&mut map, "app3001"), "3001", "after {what}");
    }
    let blanks = map.ask_bytes(b"  \t ", ANSWER_WITHIN).expect("blanks");
    assert_eq!(blanks.0, "NULL");
    assert!(map.wait_stderr("longer than 4096", ANSWER_WITHIN));
    let (status, stderr) = map.finish(ANSWER_WITHIN).expect("finish");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn random_garbage_lines_each_get_one_answer() {
    let mut map = start(&fixture("balance.confA"));
    let mut rng = fastrand::Rng::with_seed(0x5e_4e_4a_9e);
    for i in 0..3000 {
        let len = rng.usize(0..80);
        let line: Vec<u8> = std::iter::repeat_with(|| rng.u8(..))
            .filter(|&b| b != b'\n')
            .take(len)
            .collect();
        let (answer, _) = map
            .ask_bytes(&line, ANSWER_WITHIN)
            .unwrap_or_else(|e| panic!("line {i} {line:?}: {e}\n{}", map.stderr()));
        assert_eq!(answer, "NULL", "line {i}: {line:?}");
    }
    assert_eq!(ask(&mut map, "app3005"), "3005");
    let (status, stderr) = map.finish(ANSWER_WITHIN).expect("finish");
    assert!(status.expect("exited").success(), "{stderr}");
    assert!(
        stderr.lines().count() < 100,
        "{} log lines",
        stderr.lines().count()
    );
}

#[test]
fn end_of_input_exits_zero_and_sigterm_ends_it_promptly() {
    let map = start(&fixture("balance.confA"));
    let (status, stderr) = map.finish(ANSWER_WITHIN).expect("finish");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");

    let mut map = start(&fixture("balance.confA"));
    assert_eq!(ask(&mut map, "app3001"), "3001");
    let pid = i32::try_from(map.pid()).expect("pid");
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("kill");
    let status = map.wait_exit(Duration::from_secs(1)).expect("wait");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "still running 1 s after SIGTERM"
    );
}

#[test]
fn nothing_but_answers_on_stdout() {
    let mut map = start(&fixture("duplicate-keys.conf"));
    // Errors in the file are logged on stderr, never on stdout: the first
    // line read back is the answer to the first key.
    assert_eq!(ask(&mut map, "app3001"), "3001");
    assert_eq!(ask(&mut map, "nope"), "NULL");
    assert!(
        map.wait_stderr("a duplicate key", ANSWER_WITHIN),
        "{}",
        map.stderr()
    );
}

#[test]
fn keys_as_arguments_answer_each_and_exit_zero_only_when_all_are_found() {
    let file = fixture("balance.confA");
    let out = run(&[s(&file), "app3001", "app3010"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "3001\n3010\n");

    let out = run(&[s(&file), "ALL"]);
    assert_eq!(out.status.code(), Some(0));
    let all = stdout(&out);
    assert!(ALL_A.contains(&all.trim_end()), "{all:?}");

    let out = run(&[s(&file), "app3001", "app9", ""]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "3001\nNULL\nNULL\n");
}

#[test]
fn a_map_file_named_like_a_subcommand_is_given_as_a_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = dir.path().join("check");
    std::fs::copy(fixture("balance.confA"), &check).expect("copy");
    let out = std::process::Command::new(common::BIN)
        .current_dir(dir.path())
        .args(["./check", "app3003"])
        .env_clear()
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "3003\n");
}

#[test]
fn help_explains_the_protocol_with_an_apache_example() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for needle in [
        "RewriteMap SERVERS \"prg:",
        "ALL",
        "NULL",
        "server-map switch",
        "./check",
        "check",
        "status",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    for sub in ["check", "switch", "status"] {
        let out = run(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub} --help");
        assert!(stdout(&out).contains("FILE"), "{sub} --help");
    }
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "no FILE is a usage error");
}
