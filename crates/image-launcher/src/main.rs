//! `image-launcher`: a `RewriteMap prg:` that answers a port with a live VM,
//! launching VMs on demand, without ever stalling the site.
//!
//! # Protocol
//! One port per line (Apache sends `${SERVERS:ALL}`, a random port of the
//! active set); the answer is a port whose VM listens, or `NULL`. A port
//! outside `--ports`, garbage and empty keys get `NULL`; nothing is launched
//! or killed for them.
//!
//! # Files
//! `PID_DIR/<port>.pid` (pid, start time, boot id), `PID_DIR/<port>.lock`,
//! `LOG_DIR/<port>.log` (the VM's stdout and stderr, appended).
//!
//! # Failure modes
//! A VM that exits before it listens, or does not listen within the start
//! timeout, makes its port back off: 1 s, then doubling up to 60 s, during
//! which the port counts as unavailable. A pid whose process is not the one
//! launched (pid reused) is never signalled. VMs outlive the launcher.

mod config;
mod launcher;
mod ports;
mod supervise;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rewritemap::MapProgram;

use crate::config::{Args, Config};
use crate::launcher::{Launcher, NULL};

const MAP: MapProgram = MapProgram {
    name: "image-launcher",
    no: NULL,
    example_key: "3001",
};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = MAP.start(&args.common) {
        tracing::error!("cannot start: {e}");
        return ExitCode::from(2);
    }
    let keys = args.keys.clone();
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        "ready: ports {}, start timeout {:?}, {}",
        config.ports,
        config.start_timeout,
        if config.wait {
            "always waiting for the key's VM"
        } else {
            "answering another listening VM while one starts"
        }
    );
    let mut launcher = Launcher::new(config);
    let code = MAP.run(&keys, |key| launcher.answer(key));
    launcher.finish(Duration::from_secs(2));
    code
}
