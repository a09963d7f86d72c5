//! A VM in trouble, on demand: its health (OK, then DYING after N requests
//! or on SIGUSR1), a VM that hangs for real, and one that serves a single
//! connection at a time while the others wait in the kernel's queue.

mod common;

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
    assert!(ok.set_cookies().is_empty(), "a health check opens no session");
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

/// Waits until the kernel shows `n` connections to the VM's port that wait
/// with `unaccepted` of them never accepted.
fn wait_queued(port: u16, n: usize, unaccepted: usize) {
    let mut table = ListenTable::open().expect("sock_diag");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let conns = table.connections_on(&[port]).expect("dump");
        let waiting = conns
            .iter()
            .filter(|c| c.unread > 0 || !c.accepted())
            .count();
        let queued = conns.iter().filter(|c| !c.accepted()).count();
        if waiting == n && queued == unaccepted {
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
    hanging.send(b"GET /app/hang HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    vm.wait_log("hanging");
    // A request on another live connection, and new connections, wait.
    let mut before = vm.connect();
    before.send(b"GET /app/a HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut later: Vec<Conn> = (0..3).map(|_| Conn::open(vm.port)).collect();
    for conn in &mut later {
        conn.send(b"GET /app/b HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    }
    // `before` may have been accepted just before the hang: waiting either way.
    wait_queued(vm.port, 4, 3);
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
    wait_queued(vm.port, 3, 3);
    assert_eq!(long.read_response(false).expect("long").status, 200);
    for conn in &mut queued {
        assert_eq!(conn.read_response(false).expect("queued").status, 200);
    }
}
