//! Every VM exit is logged once, with its cause, at a level that fits.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// "Once" has no event to wait for: a second line about the same exit
/// (from the watch thread and the writer both) would come within
/// milliseconds of the first, so the test watches this long for it.
const SECOND_LINE_WINDOW: Duration = Duration::from_millis(500);

/// The launcher's lines about `pid`.
fn lines_about(stderr: &str, pid: u32) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(&format!("pid {pid} ")))
        .map(str::to_owned)
        .collect()
}

fn exit_lines(stderr: &str, pid: u32) -> Vec<String> {
    lines_about(stderr, pid)
        .into_iter()
        .filter(|l| {
            ["exited", "killed", "stopped by"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect()
}

#[test]
fn a_kill_9_is_a_warning_and_an_idle_exit_is_information() {
    let mut site = Site::new(2, 2);
    let l = site.launcher(&["--min-uptime-ms", "0"], &["--idle-exit-s", "2"]);
    site.wait_map("both VMs up", |map| map.all.is_some());
    let (killed, idle) = (site.pool.ports[0], site.pool.ports[1]);
    let killed_pid = site.pool.record(killed).expect("record").pid;
    let idle_pid = site.pool.record(idle).expect("record").pid;
    kill(Pid::from_raw(killed_pid as i32), Signal::SIGKILL).expect("kill");
    wait_until("both exits logged", BOUND, || {
        !exit_lines(&site.pool.stderr(l), killed_pid).is_empty()
            && !exit_lines(&site.pool.stderr(l), idle_pid).is_empty()
    });
    // A second line would follow within milliseconds: watch a while.
    std::thread::sleep(SECOND_LINE_WINDOW);
    let stderr = site.pool.stderr(l);
    let killed_lines = exit_lines(&stderr, killed_pid);
    assert_eq!(killed_lines.len(), 1, "{stderr}");
    assert!(
        killed_lines[0].contains(" WARN ")
            && killed_lines[0].contains("killed by signal 9")
            && killed_lines[0].contains(&format!("port {killed}:")),
        "{killed_lines:?}"
    );
    let idle_lines = exit_lines(&stderr, idle_pid);
    assert_eq!(idle_lines.len(), 1, "{stderr}");
    assert!(
        idle_lines[0].contains(" INFO ") && idle_lines[0].contains("exited by itself (status 0"),
        "{idle_lines:?}"
    );
    // The VM's own log says it too, with a time.
    let log = site.pool.log(idle);
    assert!(
        log.lines().any(|l| l.starts_with("=== image-launcher 20")
            && l.contains(&format!("pid {idle_pid} exited by itself"))),
        "{log}"
    );
}

#[test]
fn a_vm_of_an_earlier_launcher_killed_is_one_warning_saying_its_status_is_unknown() {
    let mut site = Site::new(1, 1);
    let first = site.launcher(&[], &[]);
    site.wait_map("the VM up", |map| map.all.is_some());
    let gone = site.pool.launchers.remove(first);
    let _ = gone.finish(Duration::from_secs(5));
    let vm = site.pool.record(site.pool.ports[0]).expect("record");
    let second = site.launcher(&[], &[]);
    let second_pid = site.pool.launchers[second].pid();
    wait_until("the second launcher writes", BOUND, || {
        site.writer() == Some(second_pid)
    });
    kill(Pid::from_raw(vm.pid as i32), Signal::SIGKILL).expect("kill");
    wait_until("the exit logged", BOUND, || {
        !exit_lines(&site.pool.stderr(second), vm.pid).is_empty()
    });
    std::thread::sleep(SECOND_LINE_WINDOW);
    let lines = exit_lines(&site.pool.stderr(second), vm.pid);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(" WARN ") && lines[0].contains("cannot be known"),
        "{lines:?}"
    );
}

#[test]
fn a_vm_stopped_by_the_launcher_or_by_server_map_stop_is_information_with_why() {
    let mut site = Site::new(2, 1);
    site.pool.start_timeout_ms = 300;
    // The first port's VM never listens: stopped at its start timeout.
    let script = format!(
        "if [ \"$1\" = {} ]; then exec sleep 600; fi; exec {} --port \"$1\"",
        site.pool.ports[0],
        site.pool.demo_vm().display()
    );
    let mut args = site.pool.args(&[
        "--balance",
        &site.balance.display().to_string(),
        "--live-map",
        &site.live.display().to_string(),
    ]);
    args.extend(["--", "/bin/sh", "-c", &script, "vm", "{port}"].map(std::ffi::OsString::from));
    let l = site.pool.launcher_with(args);
    wait_until("the start timeout's stop", BOUND, || {
        site.pool
            .stderr(l)
            .contains("stopped by this launcher (it did not listen")
    });
    let line = site
        .pool
        .stderr(l)
        .lines()
        .find(|l| l.contains("stopped by this launcher"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(line.contains(" INFO "), "{line}");

    // The other port's VM, stopped by an operator with server-map stop.
    let other = site.pool.ports[1];
    wait_until("the other VM up", BOUND, || {
        let _ = site.pool.ask(l, &other.to_string());
        listening(other)
    });
    let vm = site.pool.record(other).expect("record");
    let server_map = std::path::Path::new(LAUNCHER).with_file_name("server-map");
    if !server_map.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "server-map"])
            .status()
            .expect("cargo build");
        assert!(built.success());
    }
    let out = Command::new(&server_map)
        .arg("stop")
        .arg("--pid-dir")
        .arg(site.pool.pid_dir())
        .args(["--ports", &other.to_string(), "--grace-s", "5"])
        .output()
        .expect("server-map stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until("the stop logged", BOUND, || {
        !exit_lines(&site.pool.stderr(l), vm.pid).is_empty()
    });
    let lines = exit_lines(&site.pool.stderr(l), vm.pid);
    assert!(
        lines.len() == 1
            && lines[0].contains(" INFO ")
            && lines[0].contains("stopped by server-map stop"),
        "{lines:?}"
    );
}
