//! Detached spawn and kill-if-ours on real processes.
//!
//! The test process makes itself a child subreaper, so a grandchild orphaned
//! by a test is re-parented here and reaped by pid, never left as a zombie.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use vmpool::files::open_regular;
use vmpool::{Identity, Launch, Liveness, PidRecord, Stopped, kill_if_ours, spawn_detached};

const BOUND: Duration = Duration::from_secs(5);

fn subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
}

/// Reaps `pid` if it is (or became) our child; bounded.
fn reap(pid: u32) {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => return,
        }
    }
}

/// Kills and reaps a child whatever happened in the test.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn launch(dir: &Path, program: &str, args: &[&str], user: Option<&Identity>) -> Guard {
    let log = open_regular(
        &dir.join("vm.log"),
        OpenOptions::new().append(true).create(true),
    )
    .expect("log");
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    let env = [(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))];
    let child = spawn_detached(Launch {
        program: Path::new(program),
        args: &args,
        user,
        log,
        workdir: Path::new("/"),
        env: &env,
        scope: None,
    })
    .expect("spawn");
    Guard(child)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn status_line(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn a_vm_gets_its_own_session_dev_null_its_log_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A descriptor without close-on-exec, as Apache might leave one open.
    let leaky: OwnedFd = nix::fcntl::open(
        dir.path(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .expect("open");
    // Signals ignored by the launcher (as Apache may leave them) must not
    // stay ignored in the VM.
    // SAFETY: SIG_IGN runs no handler code.
    #[expect(unsafe_code, reason = "setting a signal disposition in a test")]
    unsafe {
        use nix::sys::signal::{SigHandler, Signal, signal};
        signal(Signal::SIGHUP, SigHandler::SigIgn).expect("ignore SIGHUP");
        signal(Signal::SIGUSR1, SigHandler::SigIgn).expect("ignore SIGUSR1");
    }
    let vm = launch(
        dir.path(),
        "/bin/sh",
        &["-c", "echo out; echo err >&2; exec sleep 30"],
        None,
    );
    let pid = vm.0.id();
    wait_for("the VM's output in its log", || {
        fs::read_to_string(dir.path().join("vm.log"))
            .is_ok_and(|l| l.contains("out") && l.contains("err"))
    });
    let stat = vmpool::pidrecord::proc_stat(pid)
        .expect("stat")
        .expect("running");
    assert_eq!(stat.session, pid as i32, "session leader");
    assert_eq!(stat.pgrp, pid as i32, "group leader");
    let mut fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"], "leaked fd {}", leaky.as_raw_fd());
    let target = |fd: u32| fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("link");
    assert_eq!(target(0), Path::new("/dev/null"));
    assert_eq!(target(1), dir.path().join("vm.log"));
    assert_eq!(target(2), dir.path().join("vm.log"));
    assert_eq!(status_line(pid, "SigBlk"), "0000000000000000");
    // Signals 32 and 33 are glibc's own and cannot be changed through it.
    let ignored = u64::from_str_radix(&status_line(pid, "SigIgn"), 16).expect("hex");
    assert_eq!(ignored & !0x1_8000_0000, 0, "ignored signals: {ignored:#x}");
}

#[test]
fn privileges_are_dropped_to_the_user_and_its_groups() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: dropping privileges needs root");
        return;
    }
    let nobody = Identity::lookup("nobody").expect("nobody exists");
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = launch(dir.path(), "/bin/sleep", &["30"], Some(&nobody));
    let pid = vm.0.id();
    let uid = nobody.uid.as_raw().to_string();
    let gid = nobody.gid.as_raw().to_string();
    assert_eq!(status_line(pid, "Uid"), [uid.as_str(); 4].join(" "));
    assert_eq!(status_line(pid, "Gid"), [gid.as_str(); 4].join(" "));
    let groups: Vec<String> = nobody
        .groups
        .iter()
        .map(|g| g.as_raw().to_string())
        .collect();
    assert_eq!(status_line(pid, "Groups"), groups.join(" "));
}

#[test]
fn kill_if_ours_stops_our_vm_and_its_helpers() {
    subreaper();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vm = launch(dir.path(), "/bin/sh", &["-c", "sleep 30 & wait"], None);
    let pid = vm.0.id();
    let helper_pid = {
        let mut found = None;
        wait_for("the helper process", || {
            found = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()
                .and_then(|c| {
                    c.split_whitespace()
                        .next()
                        .and_then(|p| p.parse::<u32>().ok())
                });
            found.is_some()
        });
        found.expect("helper")
    };
    let record = PidRecord::of_process(pid).expect("record");
    let helper = PidRecord::of_process(helper_pid).expect("helper record");
    assert_eq!(
        kill_if_ours(&record, BOUND).expect("kill"),
        Stopped::Terminated
    );
    let _ = vm.0.wait();
    reap(helper_pid);
    assert_eq!(
        helper.liveness().expect("liveness"),
        Liveness::Gone,
        "helper survived"
    );
    assert_eq!(record.liveness().expect("liveness"), Liveness::Gone);
}

#[test]
fn a_vm_that_ignores_sigterm_gets_sigkill_after_the_grace_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vm = launch(
        dir.path(),
        "/bin/sh",
        &["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
        None,
    );
    wait_for("the trap to be set", || {
        fs::read_to_string(dir.path().join("vm.log")).is_ok_and(|l| l.contains("ready"))
    });
    let record = PidRecord::of_process(vm.0.id()).expect("record");
    let started = Instant::now();
    assert_eq!(
        kill_if_ours(&record, Duration::from_millis(300)).expect("kill"),
        Stopped::Killed
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let status = vm.0.wait().expect("reap");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

#[test]
fn a_record_whose_pid_now_names_another_process_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = launch(dir.path(), "/bin/sleep", &["30"], None);
    let pid = vm.0.id();
    let real = PidRecord::of_process(pid).expect("record");
    let stale = PidRecord {
        start_ticks: real.start_ticks - 1,
        ..real.clone()
    };
    assert_eq!(kill_if_ours(&stale, BOUND).expect("kill"), Stopped::NotOurs);
    assert!(matches!(
        real.liveness().expect("liveness"),
        Liveness::Running { .. }
    ));
}

#[test]
fn a_record_of_a_dead_process_is_already_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vm = launch(dir.path(), "/bin/true", &[], None);
    let record = PidRecord::of_process(vm.0.id()).expect("record");
    vm.0.wait().expect("reap");
    assert_eq!(
        kill_if_ours(&record, BOUND).expect("kill"),
        Stopped::AlreadyGone
    );
}
