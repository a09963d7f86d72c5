//! What the launcher's tests share: the real binary driven as Apache drives
//! it, a pool directory with a copy of `demo-vm` that `nobody` can run, and
//! cleanup of every VM a test started.
//!
//! The test process is a child subreaper: a VM that outlives its launcher is
//! re-parented here, and every VM a test started is killed and reaped by pid
//! when the test's [`Pool`] is dropped, so no test leaves a process (or a
//! zombie) behind.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use image_launcher::livemap::LiveMap;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use rewritemap::client::MapProcess;
use vmpool::{PidRecord, connect_probe};

pub use rewritemap::client::free_loopback_ports as free_ports;

pub const LAUNCHER: &str = env!("CARGO_BIN_EXE_image-launcher");
pub const BOUND: Duration = Duration::from_secs(20);

/// The freshly built `demo-vm` (built here if this test runs alone).
pub fn built_demo_vm() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let built = Path::new(LAUNCHER).with_file_name("demo-vm");
        if !built.exists() {
            let profile_dir = built
                .parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str());
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args(["build", "--quiet", "-p", "demo-vm"]);
            if profile_dir == Some("release") {
                cargo.arg("--release");
            }
            assert!(
                cargo.status().expect("cargo build").success(),
                "cannot build demo-vm"
            );
        }
        built
    })
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

pub fn listening(port: u16) -> bool {
    connect_probe(([127, 0, 0, 1], port).into(), Duration::from_millis(200))
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Pid and log directories, the pool's ports, a copy of demo-vm that the
/// `nobody` user can execute (the build directory may sit under /root,
/// which nobody cannot enter), and cleanup of every VM.
pub struct Pool {
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    pub launchers: Vec<MapProcess>,
    /// `--start-timeout-ms` of the launchers started from now on.
    pub start_timeout_ms: u64,
}

impl Pool {
    pub fn new(n: usize) -> Pool {
        nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir(dir.path().join("pid")).expect("mkdir");
        fs::create_dir(dir.path().join("log")).expect("mkdir");
        let vm = dir.path().join("demo-vm");
        if fs::hard_link(built_demo_vm(), &vm).is_err() {
            fs::copy(built_demo_vm(), &vm).expect("copy demo-vm");
        }
        Pool {
            dir,
            ports: free_ports(n),
            launchers: Vec::new(),
            start_timeout_ms: 10_000,
        }
    }

    pub fn demo_vm(&self) -> PathBuf {
        self.dir.path().join("demo-vm")
    }

    pub fn pid_dir(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    pub fn log(&self, port: u16) -> String {
        fs::read_to_string(self.dir.path().join("log").join(format!("{port}.log")))
            .unwrap_or_default()
    }

    /// A VM nobody launched (no pid record), listening on `port` as the VM
    /// user (`nobody` when the tests run as root), until dropped.
    pub fn stand_in(&self, port: u16) -> StandIn {
        let mut command = Command::new(self.demo_vm());
        command
            .args(["--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        vm_user(&mut command);
        let child = command.spawn().expect("start a stand-in VM");
        wait_until("the stand-in VM listening", BOUND, || listening(port));
        StandIn(child)
    }

    /// How many launches the port's VM log records (the launcher's
    /// `=== image-launcher TIME: starting CMD` lines).
    pub fn starts_logged(&self, port: u16) -> usize {
        self.log(port)
            .lines()
            .filter(|l| l.starts_with("=== image-launcher ") && l.contains(": starting "))
            .count()
    }

    pub fn spec(&self) -> String {
        self.ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn record(&self, port: u16) -> Option<PidRecord> {
        PidRecord::read(&self.pid_dir(), port).expect("readable record")
    }

    /// The launcher's arguments up to `--`, for `extra` options.
    pub fn args(&self, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--ports".into(),
            self.spec().into(),
            "--pid-dir".into(),
            self.pid_dir().into(),
            "--log-dir".into(),
            self.dir.path().join("log").into(),
            "--start-timeout-ms".into(),
            self.start_timeout_ms.to_string().into(),
        ];
        if is_root() {
            args.extend(["--user".into(), "nobody".into()]);
        }
        args.extend(extra.iter().map(OsString::from));
        args
    }

    /// Starts a launcher whose VM is `demo-vm --port {port} VM_ARGS`.
    pub fn launcher(&mut self, extra: &[&str], vm_args: &[&str]) -> usize {
        let mut args = self.args(extra);
        args.push("--".into());
        args.push(self.demo_vm().into());
        args.extend(["--port".into(), "{port}".into()]);
        args.extend(vm_args.iter().map(OsString::from));
        self.launcher_with(args)
    }

    pub fn launcher_with(&mut self, args: Vec<OsString>) -> usize {
        self.launchers
            .push(MapProcess::spawn(LAUNCHER, args).expect("start image-launcher"));
        self.launchers.len() - 1
    }

    pub fn ask(&mut self, which: usize, key: &str) -> (String, Duration) {
        let map = &mut self.launchers[which];
        match map.ask(key, BOUND) {
            Ok(answer) => answer,
            Err(e) => panic!("no answer to {key:?}: {e}\nstderr:\n{}", map.stderr()),
        }
    }

    pub fn stderr(&self, which: usize) -> String {
        self.launchers[which].stderr()
    }

    /// Pids of demo-vm processes serving `port`, from /proc.
    pub fn vms_on(port: u16) -> Vec<u32> {
        let wanted = format!("--port\0{port}\0");
        fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("demo-vm") && cmdline.contains(&wanted)
            })
            .filter(|&pid| {
                vmpool::pidrecord::proc_stat(pid)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.state != 'Z')
            })
            .collect()
    }
}

/// Makes `command` run as the VMs' user of the tests (`nobody` as root).
pub fn vm_user(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    if is_root() {
        let nobody = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("a nobody user");
        command.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    }
}

/// A stand-in VM process, killed and reaped on drop.
pub struct StandIn(pub std::process::Child);

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills `pid` and reaps it if it became our child (bounded).
pub fn kill_and_reap(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
            Ok(_) => return,
            // Not our child (its launcher still runs and reaps it).
            Err(_) => {
                if vmpool::pidrecord::proc_stat(pid)
                    .ok()
                    .flatten()
                    .is_none_or(|s| s.state == 'Z')
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Launchers first (a launch under way ends before its launcher
        // exits), so that none starts a VM after the scan below.
        for launcher in self.launchers.drain(..) {
            let _ = launcher.finish(Duration::from_secs(2));
        }
        // Then every process running a program of this pool's directory (its
        // copy of demo-vm, or a test's own VM command, replaced or not),
        // until none has been seen for a while.
        let dir = self.dir.path().to_path_buf();
        let mut quiet_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(5);
        while quiet_since.elapsed() < Duration::from_millis(200) && Instant::now() < deadline {
            let running = fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.starts_with(&dir))
                });
            for pid in running.collect::<Vec<_>>() {
                kill_and_reap(pid);
                quiet_since = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A pool with a balance file (every port named, ALL = `active`) and a live
/// map path.
pub struct Site {
    pub pool: Pool,
    pub balance: PathBuf,
    pub live: PathBuf,
}

impl Site {
    pub fn new(ports: usize, active: usize) -> Site {
        let pool = Pool::new(ports);
        let balance = pool.dir.path().join("balance.conf");
        let live = pool.dir.path().join("live.map");
        let site = Site {
            pool,
            balance,
            live,
        };
        site.set_active(&site.pool.ports[..active]);
        site
    }

    /// Writes balance.conf as `server-map switch` does (temp file, rename).
    pub fn set_active(&self, active: &[u16]) {
        let names: String = self
            .pool
            .ports
            .iter()
            .map(|p| format!("app{p} {p}\n"))
            .collect();
        let all: Vec<String> = active.iter().map(u16::to_string).collect();
        let temp = self.balance.with_extension("tmp");
        fs::write(&temp, format!("{names}ALL {}\n", all.join("|"))).expect("write");
        fs::rename(&temp, &self.balance).expect("rename");
    }

    pub fn launcher(&mut self, extra: &[&str], vm_args: &[&str]) -> usize {
        let balance = self.balance.display().to_string();
        let live = self.live.display().to_string();
        let mut args = vec!["--balance", &balance, "--live-map", &live];
        args.extend_from_slice(extra);
        self.pool.launcher(&args, vm_args)
    }

    pub fn map(&self) -> LiveMap {
        LiveMap::parse(&fs::read(&self.live).unwrap_or_default())
    }

    pub fn text(&self) -> String {
        fs::read_to_string(&self.live).unwrap_or_default()
    }

    /// The pid in the header: who wrote the map.
    pub fn writer(&self) -> Option<u32> {
        let text = self.text();
        let after = text.split("(pid ").nth(1)?;
        after.split(')').next()?.parse().ok()
    }

    pub fn wait_map(&self, what: &str, mut done: impl FnMut(&LiveMap) -> bool) {
        let deadline = Instant::now() + BOUND;
        while !done(&self.map()) {
            assert!(
                Instant::now() < deadline,
                "timed out after {BOUND:?} waiting for {what}; the map:\n{}\nthe launchers:\n{}",
                self.text(),
                (0..self.pool.launchers.len())
                    .map(|l| self.pool.stderr(l))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
