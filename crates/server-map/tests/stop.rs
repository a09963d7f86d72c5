//! `server-map stop` stops the pool's VMs and only ours: real `demo-vm`
//! processes with pid records, one that ignores SIGTERM, and a foreign
//! process whose pid a stale record names.
// See: issue 14, point 8.

mod common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{demo_vm, run, s, stderr, stdout, wait_until};
use vmpool::{PidRecord, connect_probe};

const BOUND: Duration = Duration::from_secs(20);

/// Processes started by a test: killed and reaped when it ends, however it
/// ends.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    /// Starts `cmd` in a process group of its own, as the launcher starts
    /// a VM.
    fn start(&mut self, cmd: &mut Command) -> u32 {
        let child = cmd.process_group(0).spawn().expect("spawn");
        let pid = child.id();
        self.0.push(child);
        pid
    }

    /// The exit status of `pid`, once it has exited.
    fn exit_status(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let child = self.0.iter_mut().find(|c| c.id() == pid).expect("ours");
        child.try_wait().expect("try_wait")
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

fn listening(port: u16) -> bool {
    connect_probe(([127, 0, 0, 1], port).into(), Duration::from_millis(200))
}

struct Pool {
    dir: tempfile::TempDir,
    children: Children,
}

impl Pool {
    fn new() -> Pool {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("pid")).expect("mkdir");
        Pool {
            dir,
            children: Children::default(),
        }
    }

    fn pid_dir(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    /// A demo VM on `port`, recorded as the launcher records it.
    fn vm(&mut self, port: u16) -> u32 {
        let pid = self.children.start(
            Command::new(demo_vm())
                .args(["--port", &port.to_string()])
                .stderr(std::process::Stdio::null()),
        );
        self.record(pid, port);
        wait_until(&format!("a VM on {port}"), BOUND, || listening(port));
        pid
    }

    fn record(&self, pid: u32, port: u16) {
        PidRecord::of_process(pid)
            .and_then(|record| record.write(&self.pid_dir(), port))
            .expect("pid record");
    }

    /// A balance.conf naming `ports`.
    fn map(&self, ports: &[u16]) -> PathBuf {
        let file = self.dir.path().join("balance.conf");
        let names: String = ports.iter().map(|p| format!("app{p} {p}\n")).collect();
        fs::write(&file, format!("{names}ALL {}\n", ports[0])).expect("write");
        file
    }
}

fn line_for(out: &str, port: u16) -> &str {
    let prefix = format!("port {port}: ");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for {port}:\n{out}"))
}

#[test]
fn stop_stops_every_vm_of_ours_and_leaves_a_foreign_process_alone() {
    let mut pool = Pool::new();
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let vms = [pool.vm(ports[0]), pool.vm(ports[1])];
    // A VM that ignores SIGTERM: it takes SIGKILL after the grace period.
    let stubborn = pool
        .children
        .start(Command::new("sh").args(["-c", "trap '' TERM; exec sleep 60"]));
    // A foreign process whose pid a stale record names: the VM recorded
    // there is long gone and the kernel gave its pid to this one (same pid,
    // another start time).
    let foreign = pool.children.start(Command::new("sleep").arg("60"));
    let stale = PidRecord::of_process(foreign).expect("record");
    let stale = PidRecord {
        start_ticks: stale.start_ticks - 1,
        ..stale
    };
    stale
        .write(&pool.pid_dir(), ports[3])
        .expect("stale record");
    // A record of a VM that exited long ago.
    let mut exited = Command::new("true").spawn().expect("true");
    let record = PidRecord::of_process(exited.id()).expect("record");
    exited.wait().expect("reap");
    record.write(&pool.pid_dir(), ports[4]).expect("record");
    // The stubborn one's record once its trap is set (sh has exec'd sleep).
    wait_until("sh to exec sleep", BOUND, || {
        fs::read_to_string(format!("/proc/{stubborn}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    pool.record(stubborn, ports[2]);

    let out = run(&["stop", "--pid-dir", s(&pool.pid_dir()), "--grace-s", "1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for (port, pid) in [(ports[0], vms[0]), (ports[1], vms[1])] {
        assert!(
            line_for(&text, port)
                .starts_with(&format!("port {port}: pid {pid} stopped by SIGTERM in ")),
            "{text}"
        );
    }
    assert_eq!(
        line_for(&text, ports[2]),
        format!(
            "port {}: pid {stubborn} killed: still running 1s after SIGTERM, SIGKILL",
            ports[2]
        )
    );
    assert_eq!(
        line_for(&text, ports[3]),
        format!(
            "port {}: left alone: the record names pid {foreign}, which is another process now",
            ports[3]
        )
    );
    assert!(!text.contains(&format!("port {}:", ports[4])), "{text}");
    assert!(
        text.ends_with(&format!(
            "stopped 3 VMs (1 needed SIGKILL) in {}; 1 left alone (not ours); 1 had already exited\n",
            s(&fs::canonicalize(pool.pid_dir()).expect("canonical"))
        )),
        "{text}"
    );

    // The VMs are gone, by the signals said; the foreign process lives.
    for pid in vms {
        let status = pool.children.exit_status(pid).expect("exited");
        assert_eq!(status.signal(), Some(15), "{pid}: {status:?}");
    }
    let status = pool.children.exit_status(stubborn).expect("exited");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert_eq!(
        pool.children.exit_status(foreign),
        None,
        "the foreign process runs on"
    );
    for &port in &ports[..2] {
        assert!(!listening(port), "{port} still listens");
    }

    // And status shows no VM.
    let out = run(&[
        "status",
        s(&pool.map(&ports)),
        "--pid-dir",
        s(&pool.pid_dir()),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for row in json["servers"].as_array().expect("servers") {
        assert!(row["pid"].is_null(), "{row}");
        assert_eq!(row["listening"], false, "{row}");
    }

    // Again: nothing left to stop.
    let out = run(&["stop", "--pid-dir", s(&pool.pid_dir())]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("stopped 0 VMs (0 needed SIGKILL) in ")
            && stdout(&out).contains("; 1 left alone (not ours); 4 had already exited\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn stop_with_ports_stops_only_those() {
    let mut pool = Pool::new();
    let (a, b) = (free_port(), free_port());
    let (vm_a, vm_b) = (pool.vm(a), pool.vm(b));
    let out = run(&[
        "stop",
        "--pid-dir",
        s(&pool.pid_dir()),
        "--ports",
        &a.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("port {a}: pid {vm_a} stopped")),
        "{}",
        stdout(&out)
    );
    assert!(
        !stdout(&out).contains(&format!("port {b}")),
        "{}",
        stdout(&out)
    );
    wait_until("the VM to be reaped", BOUND, || {
        pool.children.exit_status(vm_a).is_some()
    });
    assert!(listening(b), "the other VM runs on");
    assert_eq!(pool.children.exit_status(vm_b), None);
}

#[test]
fn stop_refuses_a_pid_dir_others_can_write_in() {
    let pool = Pool::new();
    let dir: &Path = &pool.pid_dir();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = run(&["stop", "--pid-dir", s(dir)]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("server-map: --pid-dir {}: ", s(dir)))
            && err.contains("world-writable"),
        "{err}"
    );
}
