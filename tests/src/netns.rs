//! Network namespaces for the tests of several hosts: each host and the
//! front get a namespace of their own (`ip netns add`), joined by veth pairs
//! with addresses from 198.18.0.0/15 (the range set aside for network
//! tests) and no default route, so that nothing leaves them.
//!
//! Every namespace is named `PREFIX<pid>-<name>`, `<pid>` being the test
//! process. Dropping a [`Netns`] kills every process still in it and deletes
//! it; [`clean_leftovers`] removes the namespaces of test processes that are
//! gone (a run that was killed before its guards ran), and never those of a
//! run still going on.
//!
//! A thread enters a namespace with `setns` ([`Netns::run`]: a scoped thread
//! of its own, so the caller's thread stays where it was); a process is
//! started in one with `ip netns exec` ([`Netns::command`]).

use std::fs::{self, File};
use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::Signal;

/// The prefix of every namespace these tests make.
pub const PREFIX: &str = "sptest";

/// A namespace of this test process, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Runs `ip ARGS`; the error says which command failed and why.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// True when the `ip` command (iproute2) is there.
pub fn have_ip() -> bool {
    Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// Creates `PREFIX<pid>-<name>` with its loopback up.
    pub fn add(name: &str) -> io::Result<Netns> {
        let full = format!("{PREFIX}{}-{name}", std::process::id());
        ip(&["netns", "add", &full])?;
        let netns = Netns { name: full };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Its full name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: a process in this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a thread that entered this namespace (its sockets are
    /// the namespace's), and returns what it returns; a panic in `f` is
    /// the caller's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.name, f)
    }

    /// Pids of the processes in this namespace.
    pub fn pids(&self) -> Vec<u32> {
        ip_output(&["netns", "pids", &self.name])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// [`Netns::run`] for a namespace known by its full name.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            let file = File::open(format!("/run/netns/{name}"))
                .unwrap_or_else(|e| panic!("open namespace {name}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("enter namespace {name}: {e}"));
            f()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A veth pair: `a_if` in `a` with `a_addr` (CIDR), `b_if` in `b` with
/// `b_addr`, both up.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> io::Result<()> {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ])?;
    for (ns, dev, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ip(&["-n", &ns.name, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", &ns.name, "link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Kills every process in the namespace `name` (and reaps those that are
/// ours), then deletes it; bounded.
fn remove(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<u32> = ip_output(&["netns", "pids", name])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            crate::stack::kill_and_reap(pid, Signal::SIGKILL);
        }
    }
    let _ = ip(&["netns", "del", name]);
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Removes the namespaces left by test processes that no longer run (a
/// run killed before it could clean up); those of a live run are left.
/// Returns their names.
pub fn clean_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    for line in ip_output(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || is_test_process(pid) {
            continue;
        }
        remove(name);
        removed.push(name.to_owned());
    }
    removed
}

/// True if `pid` runs a test binary of this crate (as the namespaces'
/// owner would), not some other process that got its pid since.
fn is_test_process(pid: u32) -> bool {
    fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.parent().and_then(|d| d.file_name()) == Some("deps".as_ref()))
}
