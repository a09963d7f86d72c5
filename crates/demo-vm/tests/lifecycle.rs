//! demo-vm's life as the launcher sees it: the log line, a slow start, the
//! idle exit, the simulated crash, a port already taken.

mod common;

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use common::{DEADLINE, Vm};

#[test]
fn the_log_says_where_it_listens() {
    let vm = Vm::start(&[]);
    let line = format!(
        "demo-vm: listening on 127.0.0.1:{} (pid {})",
        vm.port,
        vm.pid()
    );
    vm.wait_log(&line);
}

#[test]
fn a_start_delay_keeps_the_port_closed_until_it_ends() {
    let delay = Duration::from_millis(1500);
    let mut vm = Vm::spawn(&["--start-delay-ms", "1500"]);
    let listening_early = vm.is_listening();
    let probed_at = vm.started.elapsed();
    if probed_at < delay {
        assert!(!listening_early, "listening after {probed_at:?}");
    }
    let seen = vm.wait_listening();
    let after = seen - vm.started;
    assert!(after >= delay, "listening after {after:?}");
}

#[test]
fn a_huge_start_delay_never_listens() {
    let mut vm = Vm::spawn(&["--start-delay-ms", "100000000"]);
    thread::sleep(Duration::from_millis(500));
    assert!(!vm.is_listening());
    assert!(!vm.has_exited(), "{}", vm.log());
}

#[test]
fn an_idle_vm_exits_0() {
    let mut vm = Vm::start(&["--idle-exit-s", "1"]);
    let (status, seen) = vm.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", vm.log());
    let lived = seen - vm.started;
    assert!(lived >= Duration::from_secs(1), "exited after {lived:?}");
    assert!(vm.log().contains("exiting (status 0)"), "{}", vm.log());
}

#[test]
fn the_idle_exit_waits_for_sessions_to_expire() {
    let mut vm = Vm::start(&["--idle-exit-s", "1", "--session-ttl-s", "1"]);
    let mut conn = vm.connect();
    let first = conn.get("/app", "");
    let cookie = format!("session={}", first.field("session"));
    thread::sleep(Duration::from_millis(600));
    let last_request = std::time::Instant::now();
    let second = conn.get("/app", &cookie);
    assert_eq!(second.field("hits"), "2", "the session is still live");
    assert!(!vm.has_exited());
    let (status, seen) = vm.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", vm.log());
    // 1 s until the session expires, then 1 s without any.
    let after = seen - last_request;
    assert!(
        after >= Duration::from_secs(2),
        "exited {after:?} after the last request"
    );
}

#[test]
fn exit_after_simulates_a_crash() {
    let mut vm = Vm::start(&["--exit-after-s", "1"]);
    let (status, seen) = vm.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", vm.log());
    let lived = seen - vm.started;
    assert!(lived >= Duration::from_secs(1), "crashed after {lived:?}");
    assert!(vm.log().contains("simulated crash"), "{}", vm.log());
}

#[test]
fn exit_after_0_crashes_before_listening() {
    let mut vm = Vm::spawn(&["--exit-after-s", "0"]);
    let (status, _) = vm.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", vm.log());
    assert!(!vm.log().contains("listening on"), "{}", vm.log());
    assert!(!vm.is_listening());
}

#[test]
fn a_taken_port_exits_2_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut vm = Vm::spawn_on(port, &[]);
    let (status, _) = vm.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(2), "{}", vm.log());
    assert!(
        vm.log().contains("cannot listen on 127.0.0.1:"),
        "{}",
        vm.log()
    );
}
