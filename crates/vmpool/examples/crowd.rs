//! `crowd`: a crowd of listening TCP sockets on loopback, the shape of the
//! attack in issue 13.4: an unprivileged user fills the host's listen table
//! so that every probe that walks it slows the site down.
//!
//! ```text
//! crowd --listeners 40000 --shape reuseport --ports 20000-20039 --ready-file F
//! ```
//!
//! Shapes:
//! - `reuseport`: the sockets are spread over `--ports` on 127.0.0.1, many
//!   per port with `SO_REUSEPORT` (as reported: 38,000 of them).
//! - `addresses`: the sockets listen on the `--ports` numbers (give the
//!   pool's) at other loopback addresses (127.1.0.0 and up), one socket per
//!   address and port: the ones a dump filtered by port would have to skip.
//!
//! The sockets are held by child processes (this program run again) of at most the soft descriptor
//! limit each (raised to the hard one first), so that no special limit is
//! needed; to run them as another user, start the crowd through `setpriv`
//! (and raise `ulimit -n` before, as root, for fewer processes). When all
//! listen, the total is written to `--ready-file` (through a rename). On
//! SIGTERM or SIGINT the children are killed and reaped; they also die with
//! the parent (`PR_SET_PDEATHSIG`).

// Printing progress and the children's report are this tool's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};

use clap::{Parser, ValueEnum};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
    sockopt,
};

/// Hold many listening sockets on loopback until told to stop.
#[derive(Debug, Parser)]
struct Args {
    /// How many listening sockets in all.
    #[arg(long, value_name = "N")]
    listeners: usize,
    /// How the sockets are laid out (see the module doc).
    #[arg(long, value_enum, default_value_t = Shape::Reuseport)]
    shape: Shape,
    /// Ports to use: FIRST-LAST or a comma-separated list.
    #[arg(long, value_name = "PORTS")]
    ports: String,
    /// Written with the number of sockets once all listen.
    #[arg(long, value_name = "FILE", required_unless_present = "child")]
    ready_file: Option<PathBuf>,
    /// (Internal) be the child that holds sockets FIRST.. of --listeners.
    #[arg(long, value_name = "FIRST", hide = true)]
    child: Option<usize>,
    /// (Internal) how many sockets the child holds.
    #[arg(long, value_name = "N", hide = true, default_value_t = 0)]
    count: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    Reuseport,
    Addresses,
}

/// Descriptors kept free in each child besides its sockets.
const SPARE_FDS: u64 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.child {
        Some(first) => child(&args, first),
        None => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("crowd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let ports = parse_ports(&args.ports)?;
    if ports.is_empty() || args.listeners == 0 {
        return Err("nothing to do: give --ports and --listeners".to_owned());
    }
    let ready_file = args.ready_file.as_ref().ok_or("--ready-file is required")?;
    // SIGTERM and SIGINT are waited for, not delivered: blocked before any
    // child exists, so none is missed (children unblock them).
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;

    let per_child =
        usize::try_from(raise_fd_limit()?.saturating_sub(SPARE_FDS).max(1)).unwrap_or(usize::MAX);
    let mut children = Vec::new();
    let result = spawn_all(args, per_child, &mut children);
    if result.is_ok() {
        let mut tmp = ready_file.as_os_str().to_owned();
        tmp.push(".tmp");
        fs::write(&tmp, format!("{}\n", args.listeners))
            .and_then(|()| fs::rename(&tmp, ready_file))
            .map_err(|e| format!("writing {}: {e}", ready_file.display()))?;
        eprintln!(
            "crowd: {} listening sockets in {} processes",
            args.listeners,
            children.len()
        );
        let _ = stop.wait();
    }
    for child in &mut children {
        let _ = child.kill();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    result
}

/// Raises the soft descriptor limit to the hard one; returns it.
fn raise_fd_limit() -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| e.to_string())?;
    }
    Ok(hard)
}

/// Starts the children, each with its share of the sockets, and waits until
/// each says they all listen.
fn spawn_all(args: &Args, per_child: usize, children: &mut Vec<Child>) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mut first = 0;
    while first < args.listeners {
        let count = per_child.min(args.listeners - first);
        let mut child = Command::new(&me)
            .arg("--listeners")
            .arg(args.listeners.to_string())
            .arg("--shape")
            .arg(match args.shape {
                Shape::Reuseport => "reuseport",
                Shape::Addresses => "addresses",
            })
            .arg("--ports")
            .arg(&args.ports)
            .arg("--child")
            .arg(first.to_string())
            .arg("--count")
            .arg(count.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting a child: {e}"))?;
        let mut said = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut said);
        }
        children.push(child);
        if said.trim_end() != "ok" {
            return Err(format!(
                "sockets {first}..{}: {}",
                first + count,
                if said.is_empty() {
                    "the child died"
                } else {
                    said.trim_end()
                }
            ));
        }
        first += count;
    }
    Ok(())
}

/// One child: opens its sockets, says "ok" on stdout, and waits to be
/// killed (or for its parent to die).
fn child(args: &Args, first: usize) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    let mut all = SigSet::empty();
    all.add(Signal::SIGTERM);
    all.add(Signal::SIGINT);
    all.thread_unblock().map_err(|e| e.to_string())?;
    raise_fd_limit()?;
    let ports = parse_ports(&args.ports)?;
    let mut held = Vec::with_capacity(args.count);
    for i in first..first + args.count {
        let (addr, port) = place(args.shape, &ports, i);
        let fd = open_listener(addr, port).map_err(|e| format!("{addr}:{port}: {e}"))?;
        held.push(fd);
    }
    let mut out = std::io::stdout();
    out.write_all(b"ok\n")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    loop {
        nix::unistd::pause();
    }
}

/// Where socket `i` listens.
fn place(shape: Shape, ports: &[u16], i: usize) -> (Ipv4Addr, u16) {
    let port = ports[i % ports.len()];
    match shape {
        Shape::Reuseport => (Ipv4Addr::LOCALHOST, port),
        Shape::Addresses => {
            // 127.1.0.0 + the socket's rank among those on its port.
            let rank = u32::try_from(i / ports.len()).unwrap_or(u32::MAX);
            (
                Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + rank),
                port,
            )
        }
    }
}

fn open_listener(addr: Ipv4Addr, port: u16) -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(addr, port)),
    )?;
    listen(&fd, Backlog::new(1)?)?;
    Ok(fd)
}

/// `FIRST-LAST` or `P1,P2,...`.
fn parse_ports(spec: &str) -> Result<Vec<u16>, String> {
    let bad = || format!("--ports {spec:?}: give FIRST-LAST or a comma-separated list");
    if let Some((a, b)) = spec.split_once('-') {
        let (a, b) = (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        );
        return if a <= b && a > 0 {
            Ok((a..=b).collect())
        } else {
            Err(bad())
        };
    }
    spec.split(',')
        .map(|p| p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad))
        .collect()
}
