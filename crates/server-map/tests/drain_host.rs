//! `server-map drain-host on|off|status`: the flag next to the live map,
//! the wait for the live map to say so, and what it says when no launcher
//! writes the live map. A stand-in writer (a thread that turns the flag into
//! the `HOST` line, as image-launcher's writer does) plays the launcher; the
//! launcher's side is tested in image-launcher's tests/host.rs and end to
//! end in tests/tests/hosts.rs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{run, s, stderr, stdout};

/// Writes `HOST drain` while the flag is there, else `HOST up`, every few
/// milliseconds, by rename, until dropped.
struct StandInWriter {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StandInWriter {
    fn start(live: &Path) -> StandInWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let (live, flag) = (
            live.to_path_buf(),
            PathBuf::from(format!("{}.drain", live.display())),
        );
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                let health = if flag.exists() { "drain" } else { "up" };
                let temp = live.with_extension("tmp");
                fs::write(&temp, format!("app3001 3001\nALL 3001\nHOST {health}\n"))
                    .expect("write");
                fs::rename(&temp, &live).expect("rename");
                thread::sleep(Duration::from_millis(5));
            }
        });
        StandInWriter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StandInWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn on_and_off_wait_until_the_live_map_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.map");
    let flag = dir.path().join("live.map.drain");
    let _writer = StandInWriter::start(&live);

    let out = run(&["drain-host", "on", "--live-map", s(&live)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(flag.is_file(), "the flag is next to the live map");
    assert!(
        stdout(&out).starts_with(&format!(
            "host drained: {} created; the live map says HOST drain: its sessions go on, no new one comes",
            s(&flag)
        )),
        "{}",
        stdout(&out)
    );
    assert!(
        fs::read_to_string(&flag)
            .expect("read")
            .starts_with("drained by server-map drain-host on"),
        "the flag says who"
    );

    let out = run(&["drain-host", "on", "--live-map", s(&live)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("host already drained"),
        "{}",
        stdout(&out)
    );

    let out = run(&["drain-host", "status", "--live-map", s(&live)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("host: drain: "), "{text}");
    assert!(text.contains("drained by the operator for "), "{text}");

    let out = run(&["drain-host", "off", "--live-map", s(&live)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!flag.exists());
    assert!(
        stdout(&out).starts_with(&format!(
            "host drain ended: {} removed; the live map says HOST up: it takes new sessions",
            s(&flag)
        )),
        "{}",
        stdout(&out)
    );
    let out = run(&["drain-host", "status", "--live-map", s(&live)]);
    assert!(stdout(&out).starts_with("host: up: "), "{}", stdout(&out));
    assert!(stdout(&out).contains("not drained by the operator"));
}

#[test]
fn without_a_launcher_the_flag_is_set_and_the_command_says_why_nothing_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.map");
    fs::write(&live, "# The live map: image-launcher rewrites it\n").expect("write");
    let out = run(&["drain-host", "on", "--live-map", s(&live), "--wait-s", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("the live map")
            && stderr(&out).contains("says no HOST: no image-launcher with --live-map"),
        "{}",
        stderr(&out)
    );
    assert!(
        dir.path().join("live.map.drain").is_file(),
        "the flag stays"
    );
    let out = run(&["drain-host", "status", "--live-map", s(&live)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("host: unknown: "), "{text}");
    assert!(text.contains("has no HOST line"), "{text}");
}

#[test]
fn a_live_map_in_a_directory_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("nowhere/live.map");
    let out = run(&["drain-host", "on", "--live-map", s(&live)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--live-map"), "{}", stderr(&out));
}
