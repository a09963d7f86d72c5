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

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rewritemap::{BadKey, MapProgram};
use verify_port::cli::Args;
use vmpool::{Identity, Prober};

use crate::target::Targets;

const MAP: MapProgram = MapProgram {
    name: "verify-port",
    no: "closed",
    example_key: "3001",
};

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
