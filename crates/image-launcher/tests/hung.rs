//! Hung VMs, noticed from the kernel's queues alone: out of the live map,
//! stopped if ours, relaunched; never a busy or a quiet VM; never a process
//! that is not ours. And a VM that asks to drain.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmpool::{Liveness, PidRecord};

/// How long a test lets a VM be watched to show that nothing happens: three
/// hang timeouts.
const WATCH: Duration = Duration::from_secs(6);

/// Sends `signal`; for SIGSTOP, waits until the process is stopped (a
/// stop is delivered asynchronously).
fn stop(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).expect("signal");
    if signal == Signal::SIGSTOP {
        wait_until("the process stopped", BOUND, || {
            vmpool::pidrecord::proc_stat(pid)
                .ok()
                .flatten()
                .is_some_and(|stat| stat.state == 'T')
        });
    }
}

/// A request sent straight to a VM, left waiting.
fn waiting_request(port: u16, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    stream
}

fn hang_site(timeout_s: &str, extra: &[&str], vm_args: &[&str]) -> (Site, usize) {
    let mut site = Site::new(2, 2);
    let mut args = vec!["--hang-timeout-s", timeout_s, "--min-uptime-ms", "0"];
    args.extend_from_slice(extra);
    let l = site.launcher(&args, vm_args);
    site.wait_map("both VMs up", |map| map.all.is_some());
    (site, l)
}

#[test]
fn a_stopped_vm_with_a_request_waiting_leaves_the_map_is_stopped_and_relaunched() {
    let (mut site, l) = hang_site("2", &[], &[]);
    let port = site.pool.ports[0];
    let vm = site.pool.record(port).expect("record");
    stop(vm.pid, Signal::SIGSTOP);
    let _waiting = waiting_request(port, "/app/x");
    let sent = Instant::now();
    site.wait_map("the hung VM out of the map", |map| {
        !map.ports().contains(&port)
    });
    let out = sent.elapsed();
    // The promise: the hang timeout plus one sample of the queues. 2 s
    // more leaves a loaded machine its margin.
    assert!(out < Duration::from_secs(4), "out of the map after {out:?}");
    assert!(
        site.pool.launchers[l].wait_stderr("hung: ", BOUND),
        "{}",
        site.pool.stderr(l)
    );
    let log = site.pool.stderr(l);
    assert!(log.contains("1 connection(s) in its accept queue"), "{log}");
    wait_until("the hung VM stopped", BOUND, || {
        !matches!(vm.liveness(), Ok(Liveness::Running { .. }))
    });
    // Relaunched on demand (after the port's backoff), and back in the map.
    wait_until("a new VM on the port", BOUND, || {
        let _ = site.pool.ask(l, &port.to_string());
        site.map().ports().contains(&port)
            && site.pool.record(port).is_some_and(|r| r.pid != vm.pid)
    });
    eprintln!("out of the map {out:?} after the request; the hang timeout is 2 s");
}

#[test]
fn a_stopped_vm_with_nothing_waiting_is_left_alone() {
    let (site, l) = hang_site("2", &[], &[]);
    let port = site.pool.ports[0];
    let vm = site.pool.record(port).expect("record");
    stop(vm.pid, Signal::SIGSTOP);
    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        assert!(
            site.map().ports().contains(&port),
            "a quiet VM left the map"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(vm.liveness(), Ok(Liveness::Running { .. })));
    assert!(
        !site.pool.stderr(l).contains("hung"),
        "{}",
        site.pool.stderr(l)
    );
    stop(vm.pid, Signal::SIGCONT);
}

#[test]
fn a_vm_busy_with_a_long_request_and_ten_queued_is_not_hung_before_the_timeout() {
    let (site, l) = hang_site("5", &[], &["--serial"]);
    let port = site.pool.ports[0];
    let vm = site.pool.record(port).expect("record");
    let _long = waiting_request(port, "/app/long?sleep_ms=3000");
    std::thread::sleep(Duration::from_millis(100));
    let _queued: Vec<TcpStream> = (0..10).map(|_| waiting_request(port, "/app/q")).collect();
    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        assert!(
            site.map().ports().contains(&port),
            "a busy VM left the map:\n{}",
            site.pool.stderr(l)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(site.pool.record(port).map(|r| r.pid), Some(vm.pid));
    assert!(
        !site.pool.stderr(l).contains("hung"),
        "{}",
        site.pool.stderr(l)
    );
}

#[test]
fn a_hung_listener_that_its_pid_record_does_not_prove_ours_is_never_signalled() {
    let mut site = Site::new(1, 1);
    let port = site.pool.ports[0];
    // A VM that no launcher started, and a record naming an unrelated live
    // process under a start time that is not its own (as after a pid reuse).
    let mut vm = Command::new(site.pool.demo_vm());
    vm.args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    vm_user(&mut vm);
    let mut vm = vm.spawn().expect("demo-vm");
    let mut bystander = Command::new("sleep").arg("60").spawn().expect("sleep");
    let real = PidRecord::of_process(bystander.id()).expect("record");
    PidRecord {
        start_ticks: real.start_ticks + 1,
        ..real
    }
    .write(&site.pool.pid_dir(), port)
    .expect("write record");
    wait_until("the VM listening", BOUND, || listening(port));
    let l = site.launcher(&["--hang-timeout-s", "2"], &[]);
    site.wait_map("the VM in the map", |map| map.ports().contains(&port));
    stop(vm.id(), Signal::SIGSTOP);
    let _waiting = waiting_request(port, "/app/x");
    site.wait_map("the hung VM out of the map", |map| {
        !map.ports().contains(&port)
    });
    assert!(
        site.pool.launchers[l].wait_stderr("not ours to stop", BOUND),
        "{}",
        site.pool.stderr(l)
    );
    // The state file beside the map says why it is out.
    let hung = || {
        vmpool::state::PoolState::read(&site.live)
            .ok()
            .flatten()
            .and_then(|state| state.ports[0].hung.clone())
    };
    wait_until("the hang in the state file", BOUND, || hung().is_some());
    let hung = hung().expect("hung");
    assert!(hung.accept_queue as u64 + hung.unread_bytes > 0, "{hung:?}");
    assert!(
        matches!(bystander.try_wait(), Ok(None)),
        "the bystander was signalled"
    );
    assert!(
        matches!(vm.try_wait(), Ok(None)),
        "a VM not proved ours was signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    let _ = vm.kill();
    let _ = vm.wait();
}

#[test]
fn a_vm_answering_dying_takes_no_new_session_keeps_its_line_and_leaves_when_it_exits() {
    let (mut site, l) = hang_site(
        "2",
        &["--health-path", "/app/health", "--health-every-s", "1"],
        &[],
    );
    let (dying, other) = (site.pool.ports[0], site.pool.ports[1]);
    let vm = site.pool.record(dying).expect("record");
    stop(vm.pid, Signal::SIGUSR1);
    site.wait_map("the VM draining", |map| map.draining == vec![dying]);
    let map = site.map();
    assert!(
        map.ports().contains(&dying),
        "its sessions lost their route"
    );
    assert_eq!(map.all, Some(vec![other]), "ALL still offers it");
    for _ in 0..20 {
        assert_eq!(site.pool.ask(l, "ALL").0, other.to_string());
        assert_eq!(site.pool.ask(l, &dying.to_string()).0, other.to_string());
    }
    assert!(site.pool.stderr(l).contains("answered DYING"));
    wait_until("the drain in the state file", BOUND, || {
        vmpool::state::PoolState::read(&site.live)
            .ok()
            .flatten()
            .is_some_and(|state| state.ports.iter().any(|p| p.port == dying && p.draining))
    });
    // It exits by itself (here: killed): out of the map; the next VM on the
    // port starts healthy.
    kill_and_reap(vm.pid);
    site.wait_map("the drained VM gone", |map| {
        !map.ports().contains(&dying) && map.draining.is_empty()
    });
    wait_until("a fresh VM on the port", BOUND, || {
        let _ = site.pool.ask(l, &dying.to_string());
        site.map()
            .all
            .as_ref()
            .is_some_and(|all| all.contains(&dying))
    });
}
