//! A whole stack for one test: a private Apache configured from the shipped
//! `apache-conf/seaside-pool.conf` by `scripts/private-apache init` (the same
//! generator the demo uses), the three map programs, and `demo-vm` as the VM,
//! all on loopback ports of its own.
//!
//! Apache runs in the foreground as a child of the test. The test process is
//! a child subreaper, so VMs that outlive their launcher are re-parented
//! here; dropping the [`Stack`] stops Apache, kills every VM it launched and
//! reaps them, leaving no process behind.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use vmpool::PidRecord;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory holding freshly built verify-port, server-map,
/// image-launcher and demo-vm (built once per test run).
pub fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.current_dir(repo()).args([
            "build",
            "--quiet",
            "--message-format=json",
            "-p",
            "verify-port",
            "-p",
            "server-map",
            "-p",
            "image-launcher",
            "-p",
            "demo-vm",
        ]);
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        let out = cargo
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(out.status.success(), "cargo build of the binaries failed");
        let exe = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|m| m.get("executable")?.as_str().map(PathBuf::from))
            .expect("cargo reported an executable");
        exe.parent().expect("bin dir").to_path_buf()
    })
}

/// Options of a stack.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many VM ports (the first half is set A, the rest set B).
    pub ports: usize,
    /// Extra arguments for every demo-vm.
    pub vm_args: Vec<String>,
    /// The launcher's start timeout.
    pub start_timeout_ms: u64,
    /// The classic three-`prg:` rules of 2008 instead of the live map.
    pub classic: bool,
    /// More image-launcher flags (`SEASIDE_LAUNCHER_OPTIONS`).
    pub launcher_options: String,
    /// Apache sets the route cookie (`SEASIDE_SET_ROUTE_COOKIE`).
    pub route_cookie: bool,
    /// One host of several: the stack runs in this network namespace, its
    /// Apache on the address, port 80; its VMs on the namespace's own
    /// loopback, ports 3001 and up (the same on every host).
    pub host: Option<HostNet>,
}

/// Where a host of several runs (see [`Options::host`]).
#[derive(Debug, Clone)]
pub struct HostNet {
    /// The namespace's full name.
    pub netns: String,
    /// Its address on the link to the front.
    pub addr: std::net::Ipv4Addr,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ports: 6,
            vm_args: Vec::new(),
            start_timeout_ms: 10_000,
            classic: false,
            launcher_options: "--hang-timeout-s 60".into(),
            route_cookie: false,
            host: None,
        }
    }
}

/// A running private Apache with its maps and VMs.
#[derive(Debug)]
pub struct Stack {
    dir: tempfile::TempDir,
    /// The VM ports, in balance-file order.
    pub ports: Vec<u16>,
    /// Apache's address.
    pub addr: SocketAddr,
    apache: Child,
    /// The VM command, with `{port}`.
    vm_cmd: Vec<String>,
    /// How many map programs Apache runs.
    pub maps: usize,
    /// The network namespace it runs in (a host of several).
    netns: Option<String>,
}

/// Polls `done` every 5 ms for at most `timeout`; false on timeout.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Stack {
    /// Writes the configuration and starts Apache; returns once it answers.
    pub fn start(options: Options) -> Stack {
        nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
        let dir = tempfile::tempdir().expect("tempdir");
        // A host in a namespace of its own has all its ports free.
        let (ports, http_port) = match &options.host {
            Some(_) => ((3001..).take(options.ports).collect(), 80),
            None => {
                let mut all = crate::free_ports(options.ports + 1);
                let http_port = all.pop().expect("a port for Apache");
                (all, http_port)
            }
        };
        let state = dir.path().to_path_buf();
        let mut vm_cmd = vec![
            state.join("bin/demo-vm").display().to_string(),
            "--port".into(),
            "{port}".into(),
        ];
        vm_cmd.extend(options.vm_args.iter().cloned());
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut init = Command::new(repo().join("scripts/private-apache"));
        init.arg("init")
            .arg(&state)
            .args(["--http-port", &http_port.to_string()])
            .args(["--ports", &list.join(",")])
            .arg("--bin")
            .arg(binaries())
            .args(["--vm-cmd", &vm_cmd.join(" ")])
            .args(["--start-timeout-ms", &options.start_timeout_ms.to_string()])
            .args(["--launcher-options", &options.launcher_options]);
        if options.classic {
            init.arg("--classic");
        }
        if options.route_cookie {
            init.arg("--set-route-cookie");
        }
        if let Some(host) = &options.host {
            init.args(["--listen", &host.addr.to_string()]);
        }
        let init = init.output().expect("run scripts/private-apache init");
        assert!(
            init.status.success(),
            "private-apache init failed:\n{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut apache = match &options.host {
            Some(host) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &host.netns, apache_bin()]);
                command
            }
            None => Command::new(apache_bin()),
        };
        let apache = apache
            .arg("-f")
            .arg(state.join("conf/httpd.conf"))
            .arg("-DFOREGROUND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apache2");
        let ip = options
            .host
            .as_ref()
            .map_or([127, 0, 0, 1].into(), |h| h.addr);
        let addr: SocketAddr = (ip, http_port).into();
        let mut stack = Stack {
            dir,
            ports,
            addr,
            apache,
            vm_cmd,
            maps: if options.classic { 3 } else { 1 },
            netns: options.host.as_ref().map(|h| h.netns.clone()),
        };
        let answers = || {
            wait_until(Duration::from_secs(15), || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
            })
        };
        let up = match &stack.netns {
            Some(netns) => crate::netns::run_in(netns, answers),
            None => answers(),
        };
        assert!(up, "Apache did not start:\n{}", stack.error_log());
        // Wait for the map programs too (and the live map's first version),
        // so tests start from a steady state.
        let maps = wait_until(Duration::from_secs(10), || {
            stack.map_programs().len() == stack.maps
                && (options.classic || stack.live_map().contains("image-launcher (pid"))
        });
        assert!(
            maps,
            "map programs: {:?}\n{}",
            stack.map_programs(),
            stack.error_log()
        );
        let _ = stack.apache.try_wait();
        stack
    }

    /// The state directory.
    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Set A: the first half of the ports.
    pub fn set_a(&self) -> &[u16] {
        &self.ports[..self.ports.len().div_ceil(2)]
    }

    /// Set B: the second half.
    pub fn set_b(&self) -> &[u16] {
        &self.ports[self.ports.len().div_ceil(2)..]
    }

    /// The live map as published now.
    pub fn live_map(&self) -> String {
        fs::read_to_string(self.state().join("lib/live.map")).unwrap_or_default()
    }

    /// Apache's error log (where the map programs' stderr goes).
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.state().join("logs/error.log")).unwrap_or_default()
    }

    /// `cp balance.confX balance.conf`, as an operator does it.
    pub fn copy_balance(&self, set: char) {
        let etc = self.state().join("etc");
        fs::copy(
            etc.join(format!("balance.conf{set}")),
            etc.join("balance.conf"),
        )
        .expect("cp");
    }

    /// Starts the VMs of `ports` and waits until they listen, as an operator
    /// does before a cut-over (docs/operations.md): the launcher run by hand
    /// with the site's flags, `--wait` and one `--key` per port.
    pub fn prestart(&self, ports: &[u16]) {
        let state = self.state();
        let spec: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut launcher = Command::new(state.join("bin/image-launcher"));
        launcher
            .env_clear()
            .args(["--ports", &spec.join(",")])
            .arg("--pid-dir")
            .arg(state.join("run/pids"))
            .arg("--log-dir")
            .arg(state.join("logs/vms"))
            .arg("--wait");
        if nix::unistd::geteuid().is_root() {
            launcher.args(["--user", "www-data"]);
        }
        for port in ports {
            launcher.args(["--key", &port.to_string()]);
        }
        let out = launcher
            .arg("--")
            .args(&self.vm_cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run image-launcher by hand");
        assert!(
            out.status.success(),
            "pre-start failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The pid record of a port's VM.
    pub fn record(&self, port: u16) -> Option<PidRecord> {
        PidRecord::read(&self.state().join("run/pids"), port)
            .ok()
            .flatten()
    }

    /// Apache's parent pid.
    pub fn apache_pid(&self) -> u32 {
        self.apache.id()
    }

    /// A graceful restart, as `apache2ctl graceful` does it.
    pub fn graceful(&self) {
        let status = Command::new(apache_bin())
            .arg("-f")
            .arg(self.state().join("conf/httpd.conf"))
            .args(["-k", "graceful"])
            .status()
            .expect("apache2 -k graceful");
        assert!(status.success());
    }

    /// Running map programs of this stack: (pid, parent pid, name).
    pub fn map_programs(&self) -> Vec<(u32, u32, String)> {
        let bin = self.state().join("bin");
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
                continue;
            };
            let Some(name) = exe.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let is_map = exe.parent() == Some(bin.as_path())
                && ["server-map", "verify-port", "image-launcher"].contains(&name);
            let Ok(Some(stat)) = vmpool::pidrecord::proc_stat(pid) else {
                continue;
            };
            if is_map && stat.state != 'Z' {
                found.push((pid, stat.ppid as u32, name.to_owned()));
            }
        }
        // A launcher's child between fork and exec still runs the launcher's
        // binary: it is a VM being born, not a map.
        let pids: Vec<u32> = found.iter().map(|&(pid, _, _)| pid).collect();
        found.retain(|(_, ppid, _)| !pids.contains(ppid));
        found.sort();
        found
    }

    /// True when no VM is on its way: every recorded VM that runs listens,
    /// and with the live map, the whole active set is in it.
    pub fn settled(&self) -> bool {
        let all_listen = self.vms().iter().all(|&(port, _)| {
            vmpool::connect_probe(([127, 0, 0, 1], port).into(), Duration::from_millis(100))
        });
        all_listen && (self.maps == 3 || self.live_map().contains("\nALL "))
    }

    /// Live VMs of this stack: (port, pid) from the pid records.
    pub fn vms(&self) -> Vec<(u16, u32)> {
        self.ports
            .iter()
            .filter_map(|&port| {
                let record = self.record(port)?;
                matches!(record.liveness(), Ok(vmpool::Liveness::Running { .. }))
                    .then_some((port, record.pid))
            })
            .collect()
    }
}

/// The Apache binary (Debian's, or httpd).
pub fn apache_bin() -> &'static str {
    if Path::new("/usr/sbin/apache2").exists() {
        "/usr/sbin/apache2"
    } else {
        "/usr/sbin/httpd"
    }
}

/// Kills `pid` and reaps it if it is (or became) our child; bounded.
pub fn kill_and_reap(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), signal);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return,
            Err(_) => {
                let gone = vmpool::pidrecord::proc_stat(pid)
                    .ok()
                    .flatten()
                    .is_none_or(|s| s.state == 'Z');
                if gone {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Apache first: it stops its children and its map programs (whose
        // successors, if any, see end of input and exit).
        let _ = kill(Pid::from_raw(self.apache.id() as i32), Signal::SIGTERM);
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.apache.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.apache.kill();
            let _ = self.apache.wait();
        }
        let maps_gone = wait_until(Duration::from_secs(5), || self.map_programs().is_empty());
        if !maps_gone {
            for (pid, _, _) in self.map_programs() {
                kill_and_reap(pid, Signal::SIGKILL);
            }
        }
        reap_adopted_maps();
        // Then the VMs, which outlive Apache by design: every process running
        // this stack's own copy of demo-vm.
        // Until none is seen for a while: a launch that was under way when
        // its launcher stopped may exec its VM just after a scan.
        let mut quiet_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(5);
        while quiet_since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
            for pid in self.processes_of("demo-vm") {
                kill_and_reap(pid, Signal::SIGKILL);
                quiet_since = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Stack {
    /// Live processes running the stack's copy of `binary`.
    fn processes_of(&self, binary: &str) -> Vec<u32> {
        let exe = self.state().join("bin").join(binary);
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
            .collect()
    }
}

/// Reaps map programs re-parented to this process (successors that served
/// an old Apache generation after a graceful restart) once they exited.
fn reap_adopted_maps() {
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(Some(stat)) = vmpool::pidrecord::proc_stat(pid) else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let ours = stat.ppid == me
            && ["server-map", "verify-port", "image-launcher"].contains(&comm.trim());
        if ours && stat.state == 'Z' {
            let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
        }
    }
}
