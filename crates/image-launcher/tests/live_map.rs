//! The live map, as Apache will read it: written by exactly one launcher,
//! true after every change (launches, exits, a cut-over), and never behind a
//! launcher's answer.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn servers(ports: &[u16]) -> Vec<(String, u16)> {
    ports.iter().map(|&p| (format!("app{p}"), p)).collect()
}

#[test]
fn a_cold_active_set_is_started_at_once_and_all_appears_when_it_is_whole() {
    let mut site = Site::new(3, 2);
    let (a, b, idle) = (site.pool.ports[0], site.pool.ports[1], site.pool.ports[2]);
    let l = site.launcher(&[], &[]);
    // No lookup at all: the writer finds no VM of the active set and starts
    // them (a boot).
    site.wait_map("both VMs of the active set and ALL", |map| {
        map.all == Some(vec![a, b])
    });
    let map = site.map();
    assert_eq!(map.servers, servers(&[a, b]), "{}", site.text());
    assert!(
        site.pool.record(idle).is_none(),
        "a port outside ALL was started"
    );
    assert_eq!(site.writer(), Some(site.pool.launchers[l].pid()));
    let mode = fs::metadata(&site.live).expect("stat").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o644
    );
}

#[test]
fn every_answer_is_in_the_map_before_the_answer_is_given() {
    let mut site = Site::new(4, 4);
    let l = site.launcher(&["--max-starting", "1"], &["--start-delay-ms", "50"]);
    for n in 0..40 {
        let (answer, _) = site.pool.ask(l, "ALL");
        let port: u16 = answer
            .parse()
            .unwrap_or_else(|_| panic!("lookup {n}: {answer}\n{}", site.pool.stderr(l)));
        let map = site.map();
        assert!(
            map.ports().contains(&port),
            "lookup {n} answered {port}, not in the map yet:\n{}",
            site.text()
        );
    }
}

#[test]
fn a_vm_killed_leaves_the_map_and_all_goes_until_it_is_back() {
    let mut site = Site::new(2, 2);
    let (a, b) = (site.pool.ports[0], site.pool.ports[1]);
    let l = site.launcher(&[], &[]);
    site.wait_map("ALL", |map| map.all.is_some());
    let vm = site.pool.record(a).expect("record");
    let killed = Instant::now();
    kill_and_reap(vm.pid);
    site.wait_map("the dead VM out of the map", |map| {
        !map.ports().contains(&a)
    });
    eprintln!("removed from the map {:?} after kill -9", killed.elapsed());
    let map = site.map();
    assert_eq!(map.all, None, "ALL while a VM of the active set is down");
    assert_eq!(map.servers, servers(&[b]));
    // The next new sessions go through the launcher, which covers with the
    // live VM and relaunches the dead one (after its backoff, if it died
    // young).
    let (answer, _) = site.pool.ask(l, &a.to_string());
    assert_eq!(answer, b.to_string(), "covered by the live VM");
    wait_until("the VM back, and ALL", BOUND, || {
        let _ = site.pool.ask(l, &a.to_string());
        site.map().all.is_some()
    });
}

#[test]
fn one_writer_among_launchers_and_another_takes_over_when_it_dies() {
    let mut site = Site::new(2, 2);
    let first = site.launcher(&[], &[]);
    site.wait_map("ALL", |map| map.all.is_some());
    let second = site.launcher(&[], &[]);
    let first_pid = site.pool.launchers[first].pid();
    let second_pid = site.pool.launchers[second].pid();
    // The second waits: the map stays the first's.
    let _ = site.pool.ask(second, "ALL");
    assert_eq!(site.writer(), Some(first_pid));
    assert!(!site.pool.stderr(second).contains("writes it now"));
    // Kill the writer: the other one writes at once, and the map is right.
    let vm = site.pool.record(site.pool.ports[0]).expect("record");
    kill(Pid::from_raw(first_pid as i32), Signal::SIGKILL).expect("kill");
    kill_and_reap(vm.pid);
    wait_until("the second launcher writes", BOUND, || {
        site.writer() == Some(second_pid)
    });
    site.wait_map("the map right again", |map| {
        !map.ports().contains(&site.pool.ports[0])
    });
    assert!(site.pool.stderr(second).contains("writes it now"));
}

#[test]
fn a_vm_started_by_an_earlier_launcher_leaves_the_map_when_it_dies() {
    let mut site = Site::new(1, 1);
    let port = site.pool.ports[0];
    let first = site.launcher(&[], &[]);
    site.wait_map("ALL", |map| map.all.is_some());
    // The first launcher goes, as after an Apache restart; its VM stays.
    let gone = site.pool.launchers.remove(first);
    let _ = gone.finish(Duration::from_secs(5));
    let vm = site.pool.record(port).expect("record");
    assert!(listening(port), "the VM outlived its launcher");
    let second = site.launcher(&[], &[]);
    let second_pid = site.pool.launchers[second].pid();
    wait_until("the second launcher writes", BOUND, || {
        site.writer() == Some(second_pid)
    });
    // Give it no help: no lookup. Its pidfd of the VM tells it of the exit.
    let killed = Instant::now();
    kill_and_reap(vm.pid);
    site.wait_map("the dead VM out of the map", |map| map.servers.is_empty());
    eprintln!(
        "an earlier launcher's VM removed {:?} after kill -9",
        killed.elapsed()
    );
}

#[test]
fn a_cut_over_starts_the_new_set_and_moves_all_to_it_once_it_is_up() {
    let mut site = Site::new(4, 2);
    let (a1, a2, b1, b2) = (
        site.pool.ports[0],
        site.pool.ports[1],
        site.pool.ports[2],
        site.pool.ports[3],
    );
    let l = site.launcher(&["--max-starting", "1"], &["--start-delay-ms", "200"]);
    site.wait_map("set A up", |map| map.all == Some(vec![a1, a2]));
    site.set_active(&[b1, b2]);
    // While B starts, new sessions go to A rather than to a 503.
    let (answer, _) = site.pool.ask(l, "ALL");
    assert!(
        [a1, a2, b1, b2].map(|p| p.to_string()).contains(&answer),
        "answered {answer}\n{}",
        site.pool.stderr(l)
    );
    site.wait_map("set B up, and ALL on it", |map| {
        map.all == Some(vec![b1, b2])
    });
    // The old set's VMs keep serving their sessions: still in the map.
    assert_eq!(site.map().servers, servers(&[a1, a2, b1, b2]));
    assert!(
        site.pool.stderr(l).contains("the active set changed"),
        "{}",
        site.pool.stderr(l)
    );
}

#[test]
fn a_missing_vm_command_keeps_the_launcher_answering_and_is_picked_up_once_it_exists() {
    let mut site = Site::new(1, 1);
    let port = site.pool.ports[0];
    let later = site.pool.dir.path().join("bin/vm");
    let mut args = site.pool.args(&[
        "--balance",
        &site.balance.display().to_string(),
        "--live-map",
        &site.live.display().to_string(),
    ]);
    args.push("--".into());
    args.push(later.clone().into());
    args.extend(["--port".into(), "{port}".into()]);
    let l = site.pool.launcher_with(args);
    assert_eq!(site.pool.ask(l, "ALL").0, "NULL");
    assert!(
        site.pool.launchers[l].wait_stderr("every launch fails", BOUND),
        "{}",
        site.pool.stderr(l)
    );
    // Still answering; the operator installs the command; no restart.
    fs::create_dir_all(later.parent().expect("dir")).expect("mkdir");
    fs::copy(site.pool.demo_vm(), &later).expect("install the VM command");
    wait_until("a VM from the new command", BOUND, || {
        site.pool.ask(l, "ALL").0 == port.to_string()
    });
    let launch_errors = site.pool.stderr(l).matches("launch failed").count();
    assert!(
        launch_errors <= 3,
        "{launch_errors} launch errors logged\n{}",
        site.pool.stderr(l)
    );
}

#[test]
fn a_listener_that_is_not_the_recorded_vms_own_is_a_stranger_even_of_the_vm_user() {
    let mut site = Site::new(1, 1);
    let port = site.pool.ports[0];
    // The record names a live process of the VM user (as if it were the
    // port's VM); another process of the same user holds the port.
    let mut recorded = std::process::Command::new("sleep");
    recorded.arg("60");
    vm_user(&mut recorded);
    let mut recorded = recorded.spawn().expect("sleep");
    vmpool::PidRecord::of_process(recorded.id())
        .and_then(|r| r.write(&site.pool.pid_dir(), port))
        .expect("record");
    let _other = site.pool.stand_in(port);
    let l = site.launcher(&[], &[]);
    assert!(
        site.pool.launchers[l].wait_stderr("not its recorded VM's", BOUND),
        "{}",
        site.pool.stderr(l)
    );
    assert!(site.map().servers.is_empty(), "{}", site.text());
    let _ = recorded.kill();
    let _ = recorded.wait();
    // The recorded VM gone: the listener is the VM user's and nobody's VM
    // in particular (started by hand): it is the port's VM.
    site.wait_map("the hand-started VM in the map", |map| {
        map.ports().contains(&port)
    });
}
