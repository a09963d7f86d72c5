//! What the integration tests share: the binary, the fixtures, a map
//! process driven as Apache drives it, and bounded waits.

#![allow(dead_code, reason = "each test crate uses a part of it")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rewritemap::client::MapProcess;

pub const BIN: &str = env!("CARGO_BIN_EXE_server-map");
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A temp dir holding `balance.conf` = a copy of fixture `from`.
pub fn live_copy(from: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("balance.conf");
    std::fs::copy(fixture(from), &live).expect("copy fixture");
    (dir, live)
}

/// The map on `file`, started as Apache starts it (empty environment).
pub fn start(file: &Path) -> MapProcess {
    start_with(file, &[])
}

pub fn start_with(file: &Path, extra: &[&str]) -> MapProcess {
    let mut args: Vec<&std::ffi::OsStr> = extra.iter().map(|a| a.as_ref()).collect();
    args.push(file.as_os_str());
    MapProcess::spawn(BIN, args).expect("start server-map")
}

pub fn ask(map: &mut MapProcess, key: &str) -> String {
    match map.ask(key, ANSWER_WITHIN) {
        Ok((answer, _)) => answer,
        Err(e) => panic!("no answer to {key:?}: {e}\nstderr:\n{}", map.stderr()),
    }
}

/// Asks `key` until `ok(answer)` holds; panics after `within`.
pub fn ask_until(
    map: &mut MapProcess,
    key: &str,
    within: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = ask(map, key);
        if ok(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{key} still answers {answer:?} after {within:?}\nstderr:\n{}",
            map.stderr()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The ports of fixture balance.confA's and balance.confB's ALL.
pub const ALL_A: [&str; 5] = ["3001", "3002", "3003", "3004", "3005"];
pub const ALL_B: [&str; 5] = ["3006", "3007", "3008", "3009", "3010"];

/// Runs `server-map ARGS` to the end with an empty environment.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .output()
        .expect("run server-map")
}

/// A path as a `&str` (the test paths are UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How many times stderr holds `needle`, once it holds it at least `n`
/// times or [`ANSWER_WITHIN`] has passed. The map keeps being asked
/// meanwhile: it writes some lines only at a lookup (a file that stays bad
/// is logged at the first lookup after it has had time to settle), and
/// stderr is collected by a thread, so a line may arrive late.
pub fn stderr_count(map: &mut MapProcess, needle: &str, n: usize) -> usize {
    let deadline = Instant::now() + ANSWER_WITHIN;
    loop {
        let count = map.stderr().matches(needle).count();
        if count >= n || Instant::now() >= deadline {
            return count;
        }
        ask(map, "ALL");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The freshly built `demo-vm`, the VM of the demo and the tests (built
/// here when this crate's tests run alone: it is not a dependency).
pub fn demo_vm() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let built = Path::new(BIN).with_file_name("demo-vm");
        if !built.exists() {
            let release = built
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|dir| dir == "release");
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args(["build", "--quiet", "-p", "demo-vm"]);
            if release {
                cargo.arg("--release");
            }
            assert!(
                cargo.status().expect("cargo build").success(),
                "cannot build demo-vm"
            );
        }
        built
    })
}

/// Waits until `done` holds; panics after `within`, saying what it waited for.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
