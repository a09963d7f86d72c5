//! A VM in trouble, on demand: its health (OK, then DYING after N requests
//! or on SIGUSR1), a VM that hangs for real, and one that serves a single
//! connection at a time while the others wait in the kernel's queue.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Conn, DEADLINE, Vm};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmpool::listen_table::ListenTable;

#[test]
fn health_is_ok_then_dying_after_n_requests_without_a_session() {
    let vm = Vm::start(&["--dying-after", "3"]);
    let mut conn = vm.connect();
    let ok = conn.get("/app/health", "");
    assert_eq!((ok.status, ok.body.trim()), (200, "OK"));
    assert!(
        ok.set_cookies().is_empty(),
        "a health check opens no session"
    );
    for _ in 0..3 {
        assert_eq!(conn.get("/app/x", "").status, 200);
    }
    let dying = conn.get("/health", "");
    assert_eq!((dying.status, dying.body.trim()), (503, "DYING"));
    // Still serving its sessions.
    assert_eq!(conn.get("/app/y", "").status, 200);
    vm.wait_log("DYING after 3 requests");
}

#[test]
fn sigusr1_turns_a_vm_dying() {
    let vm = Vm::start(&[]);
    let mut conn = vm.connect();
    assert_eq!(conn.get("/health", "").status, 200);
    kill(Pid::from_raw(vm.pid() as i32), Signal::SIGUSR1).expect("signal");
    let deadline = Instant::now() + DEADLINE;
    while conn.get("/health", "").status != 503 {
        assert!(Instant::now() < deadline, "never DYING:\n{}", vm.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    vm.wait_log("DYING on SIGUSR1");
}

/// Waits until the kernel shows every connection from `waiting` (their
/// client ends) with work waiting for the VM, and those from `unaccepted`
/// not even accepted.
fn wait_queued(port: u16, waiting: &[SocketAddr], unaccepted: &[SocketAddr]) {
    let mut table = ListenTable::open().expect("sock_diag");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let conns = table.connections_on(&[port]).expect("dump");
        let find = |from: &SocketAddr| conns.iter().find(|c| c.remote == *from);
        let all_waiting = waiting
            .iter()
            .all(|from| find(from).is_some_and(|c| c.unread > 0 || !c.accepted()));
        let all_queued = unaccepted
            .iter()
            .all(|from| find(from).is_some_and(|c| !c.accepted()));
        if all_waiting && all_queued {
            return;
        }
        assert!(Instant::now() < deadline, "{conns:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_hung_vm_accepts_and_reads_nothing_more() {
    let vm = Vm::start(&[]);
    let mut hanging = vm.connect();
    hanging
        .send(b"GET /app/hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    vm.wait_log("hanging");
    // A request on another live connection, and new connections, wait.
    let mut before = vm.connect();
    before
        .send(b"GET /app/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut later: Vec<Conn> = (0..3).map(|_| Conn::open(vm.port)).collect();
    for conn in &mut later {
        conn.send(b"GET /app/b HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
    }
    // `before` may have been accepted just before the hang: waiting either way.
    let later_ends: Vec<SocketAddr> = later.iter().map(Conn::local_addr).collect();
    let mut all = later_ends.clone();
    all.push(before.local_addr());
    wait_queued(vm.port, &all, &later_ends);
    assert!(vm.is_listening(), "its socket still listens");
}

#[test]
fn a_serial_vm_serves_one_connection_while_the_others_wait_in_the_queue() {
    let vm = Vm::start(&["--serial"]);
    let mut long = vm.connect();
    long.send(b"GET /app/long?sleep_ms=1500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut queued: Vec<Conn> = (0..3).map(|_| Conn::open(vm.port)).collect();
    for conn in &mut queued {
        conn.send(b"GET /app/q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
    }
    let ends: Vec<SocketAddr> = queued.iter().map(Conn::local_addr).collect();
    wait_queued(vm.port, &ends, &ends);
    assert_eq!(long.read_response(false).expect("long").status, 200);
    for conn in &mut queued {
        assert_eq!(conn.read_response(false).expect("queued").status, 200);
    }
}
