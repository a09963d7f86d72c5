//! The live map's `HOST` line, the host's health for a front: `up` while a
//! new session can get a VM, `drain` when the operator drained the host or
//! only draining VMs are left, `down` when nothing is up and nothing can be
//! started; and a host that was down comes back by itself once its VM
//! command works again.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use image_launcher::livemap::LiveMap;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmpool::HostHealth;
use vmpool::host::set_drained;

/// A site whose VM command is `DIR/bin/vm`, a copy of demo-vm that the test
/// can swap for a command that fails.
fn site_with_own_command(ports: usize, extra: &[&str], vm_args: &[&str]) -> (Site, usize) {
    let mut site = Site::new(ports, ports);
    let command = site.pool.dir.path().join("bin/vm");
    fs::create_dir(command.parent().expect("dir")).expect("mkdir");
    fs::set_permissions(
        command.parent().expect("dir"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    fs::copy(site.pool.demo_vm(), &command).expect("copy demo-vm");
    let (balance, live) = (
        site.balance.display().to_string(),
        site.live.display().to_string(),
    );
    let mut options = vec!["--balance", &balance, "--live-map", &live];
    options.extend_from_slice(extra);
    let mut args = site.pool.args(&options);
    args.push("--".into());
    args.push(command.into());
    args.extend(["--port".into(), "{port}".into()]);
    args.extend(vm_args.iter().map(Into::into));
    let l = site.pool.launcher_with(args);
    (site, l)
}

/// Replaces `path` (atomically) with a file holding `text`, mode 755.
fn install(path: &Path, text: &[u8]) {
    let temp = path.with_extension("new");
    fs::write(&temp, text).expect("write");
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::rename(&temp, path).expect("rename");
}

fn host(map: &LiveMap) -> Option<HostHealth> {
    map.host
}

#[test]
fn the_host_is_up_drained_by_its_flag_down_when_nothing_can_start_and_back_by_itself() {
    // --min-uptime-ms 0: a VM that listened has proved itself, so killing
    // it below is an exit, not a failed start.
    let (mut site, l) = site_with_own_command(2, &["--min-uptime-ms", "0"], &[]);
    let (a, b) = (site.pool.ports[0], site.pool.ports[1]);
    site.wait_map("the active set up and HOST up", |map| {
        map.all.is_some() && host(map) == Some(HostHealth::Up)
    });
    assert!(site.text().ends_with("HOST up\n"), "{}", site.text());

    // The operator's drain, and its end.
    set_drained(&site.live, true, "test\n").expect("drain");
    site.wait_map("HOST drain", |map| host(map) == Some(HostHealth::Drain));
    assert!(site.map().all.is_some(), "a drained host keeps its VMs");
    set_drained(&site.live, false, "").expect("undrain");
    site.wait_map("HOST up again", |map| host(map) == Some(HostHealth::Up));

    // The VM command now fails at once, and every VM dies. A cold pool
    // whose command has not failed yet can still start a VM: up.
    let command = site.pool.dir.path().join("bin/vm");
    let good = fs::read(&command).expect("read the command");
    install(&command, b"#!/bin/sh\nexit 1\n");
    for port in [a, b] {
        kill_and_reap(site.pool.record(port).expect("record").pid);
    }
    site.wait_map("both VMs out of the map", |map| map.servers.is_empty());
    assert_eq!(site.map().host, Some(HostHealth::Up), "{}", site.text());
    // A new session tries both ports (its own and a substitute): both fail.
    let (answer, _) = site.pool.ask(l, "ALL");
    assert_eq!(answer, "NULL", "{}", site.pool.stderr(l));
    site.wait_map("HOST down", |map| host(map) == Some(HostHealth::Down));
    assert!(
        site.pool.stderr(l).contains("host: up -> down"),
        "{}",
        site.pool.stderr(l)
    );

    // Fixed: no lookup at all, the writer retries as the backoff ends.
    install(&command, &good);
    site.wait_map("HOST up again, with no lookup", |map| {
        host(map) == Some(HostHealth::Up) && !map.servers.is_empty()
    });
    assert!(
        site.pool.stderr(l).contains("host: down -> up"),
        "{}",
        site.pool.stderr(l)
    );
}

#[test]
fn a_command_that_cannot_run_makes_a_cold_host_down_at_once() {
    let (site, _) = site_with_own_command(1, &["--min-uptime-ms", "0"], &[]);
    let port = site.pool.ports[0];
    site.wait_map("HOST up", |map| {
        map.all.is_some() && host(map) == Some(HostHealth::Up)
    });
    let command = site.pool.dir.path().join("bin/vm");
    fs::set_permissions(&command, fs::Permissions::from_mode(0o644)).expect("chmod -x");
    kill_and_reap(site.pool.record(port).expect("record").pid);
    site.wait_map("HOST down, with no lookup", |map| {
        host(map) == Some(HostHealth::Down)
    });
    fs::set_permissions(&command, fs::Permissions::from_mode(0o755)).expect("chmod +x");
    site.wait_map("HOST up: nothing failed, the command runs", |map| {
        host(map) == Some(HostHealth::Up)
    });
}

#[test]
fn a_host_whose_every_vm_drains_keeps_its_sessions_and_takes_no_new_one() {
    let (site, _) = site_with_own_command(
        2,
        &["--health-path", "/app/health", "--health-every-s", "1"],
        &[],
    );
    site.wait_map("HOST up", |map| {
        map.all.is_some() && host(map) == Some(HostHealth::Up)
    });
    for &port in &site.pool.ports.clone() {
        let pid = site.pool.record(port).expect("record").pid;
        kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).expect("ask it to drain");
    }
    site.wait_map("every VM draining, HOST drain", |map| {
        map.draining.len() == 2 && host(map) == Some(HostHealth::Drain)
    });
    assert_eq!(site.map().servers.len(), 2, "their sessions stay routed");
}
