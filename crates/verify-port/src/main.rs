//! `verify-port`: a `RewriteMap prg:` answering "is the VM behind this port
//! alive?": `3001` -> `open3001` or `closed`, exactly like the original bash
//! `nc -z` loop, so existing rules keep working.
//!
//! # Protocol
//! One key per line (`3001`, `HOST:PORT`, `[V6]:PORT`), one answer per line.
//! A loopback port is open when the kernel lists a listening socket for it
//! (netlink sock_diag: the VM sees nothing, and a VM too busy to accept is
//! still open); other hosts, or `--probe connect`, are open when a TCP
//! connect succeeds within `--timeout-ms`.
//! Hosts other than localhost, 127.0.0.1 and ::1 need `--allow-host`; with
//! `--ports`, other ports are refused. A refused or malformed key is answered
//! `closed` without any connection attempt.
//!
//! # Failure modes
//! Nothing ends the program but end of input, a closed stdout or SIGTERM.
//! Every answer comes within `--timeout-ms` per address of the key.

mod target;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rewritemap::{BadKey, CommonArgs, MapProgram};
use vmpool::{Identity, PortSpec, ProbeMethod, Prober};

use crate::target::Targets;

const MAP: MapProgram = MapProgram {
    name: "verify-port",
    no: "closed",
    example_key: "3001",
};

/// Apache RewriteMap program: answers openKEY when a VM listens on the port
/// of KEY, else closed.
#[derive(Debug, Parser)]
#[command(version, after_long_help = HELP_APACHE)]
struct Args {
    /// Give up on a connect (other hosts, or --probe connect) after this long.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=5000))]
    timeout_ms: u64,

    /// Also allow probing this host (IP literal or name, resolved at start).
    /// localhost, 127.0.0.1 and ::1 are always allowed.
    #[arg(long, value_name = "HOST")]
    allow_host: Vec<String>,

    /// Only these ports may be probed (e.g. 3001-3010); others are closed.
    #[arg(long, value_name = "SPEC")]
    ports: Option<PortSpec>,

    /// A loopback port is open only when its listener belongs to this user
    /// (the VMs' user): a socket another local user bound on a pool port is
    /// closed, so it never gets a session. Checked in the kernel's table
    /// (a connect cannot tell who listens).
    #[arg(long, value_name = "USER")]
    owner: Option<String>,

    /// How to learn that a loopback port listens: listen-table (the kernel's
    /// table of listening sockets: the VM sees nothing, and a VM too busy to
    /// accept still counts as up) or connect (a TCP connect per lookup: a
    /// connection each VM must accept, and a VM whose accept queue is full
    /// reads as closed). Other hosts are always probed by connecting.
    #[arg(long, value_name = "HOW", default_value_t = ProbeMethod::ListenTable)]
    probe: ProbeMethod,

    #[command(flatten)]
    common: CommonArgs,

    /// Answer these keys and exit (0 when all are open), instead of reading
    /// keys from stdin.
    #[arg(value_name = "KEY")]
    keys: Vec<OsString>,
}

const HELP_APACHE: &str = "\
Apache writes one key per line on stdin and reads one answer line:
  3001 -> open3001 | closed      [::1]:3002 -> open[::1]:3002 | closed

Apache 2.4:
  RewriteMap PORTS \"prg:/usr/local/bin/verify-port --ports 3001-3010\"
  RewriteCond %{HTTP_COOKIE} \"server=(app[0-9]+)\"
  RewriteCond ${PORTS:${SERVERS:%1}} ^open([0-9]+)$
  RewriteRule ^/app(.*)$ http://127.0.0.1:%1/app$1 [P,L]

By hand: verify-port 3001 3002   (exit status 0 when every port is open)";

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = MAP.start(&args.common) {
        tracing::error!("cannot start: {e}");
        return ExitCode::from(2);
    }
    let owner = match args.owner.as_deref().map(Identity::lookup).transpose() {
        Ok(owner) => owner.map(|user| user.uid.as_raw()),
        Err(e) => {
            tracing::error!("--owner: {e}");
            return ExitCode::from(2);
        }
    };
    let targets = Targets::new(&args.allow_host, args.ports);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut prober = Prober::new(args.probe, timeout).owned_by(owner);
    tracing::info!("ready: probe {}, timeout {timeout:?}", args.probe);
    MAP.run(&args.keys, |key| answer(&targets, &mut prober, key))
}

/// `open<key>` if any address of `key` listens, within one timeout in all.
fn answer(targets: &Targets, prober: &mut Prober, key: &str) -> Result<String, BadKey> {
    let deadline = Instant::now() + prober.timeout();
    for addr in targets.resolve(key)? {
        if Instant::now() >= deadline {
            break;
        }
        if prober.is_listening_until(addr, deadline) {
            return Ok(format!("open{key}"));
        }
    }
    Ok(MAP.no.to_owned())
}
