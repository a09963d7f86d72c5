//! `image-launcher`: a `RewriteMap prg:` that answers a port with a live VM,
//! launching VMs on demand, without ever stalling the site; and the writer of
//! the live map, the file through which Apache routes sticky requests
//! without asking any `prg:` map.
//!
//! # Protocol
//! One key per line: `ALL` (with `--balance`: a random port of the active
//! set) or a port (`${SERVERS:ALL}` in the classic rules); the answer is a
//! port whose VM is up, or `NULL`. A port outside `--ports`, garbage and
//! empty keys get `NULL`; nothing is launched or killed for them.
//!
//! # Files
//! `PID_DIR/<port>.pid` (pid, start time, boot id), `PID_DIR/<port>.lock`,
//! `LOG_DIR/<port>.log` (the VM's stdout and stderr, appended); with
//! `--live-map FILE`, FILE (replaced by rename, mode 0644) and `FILE.lock`
//! (held by the one launcher that writes FILE); `FILE.drain`, the host's
//! drain flag, is read (`server-map drain-host` writes it).
//!
//! # Failure modes
//! A VM that exits before it listens, or does not listen within the start
//! timeout (it is then killed, if it is still ours), makes its port back
//! off: 1 s, then doubling up to 60 s, during which the port counts as
//! unavailable. A VM command that cannot be started is logged and every
//! launch fails until it is fixed; the launcher never exits for it. A pid
//! whose process is not the one launched (pid reused) is never signalled.
//! VMs outlive the launcher.
//!
//! # Parts
//! [`config`] validates the command line; `launcher` answers lookups;
//! `supervise` starts, watches, kills and reaps VMs; `ports` is this
//! launcher's memory of each port; [`livemap`] is the live map file, and
//! `writer` the thread that keeps it true, with its eyes on the pool in
//! `survey` (hung VMs: `hang`) and the VMs' drain requests in `health`;
//! `host` decides the host's health for a front (the live map's `HOST`).

pub mod config;
mod exits;
mod hang;
mod health;
mod host;
mod launcher;
pub mod livemap;
mod metrics;
mod ports;
mod preflight;
mod supervise;
mod survey;
mod writer;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rewritemap::MapProgram;

use crate::config::{Args, Config};
use crate::launcher::{Launcher, NULL};
use crate::ports::PortTable;
use crate::supervise::Shared;

const MAP: MapProgram = MapProgram {
    name: "image-launcher",
    no: NULL,
    example_key: "ALL",
};

/// The dropper in a VM's systemd scope (`image-launcher --exec-vm UID GID
/// GROUPS -- PROGRAM ARGS`, see `vmpool::systemd`): drops privileges and
/// execs the VM; returns only on failure, which goes to the VM's log.
pub fn exec_vm(args: &[std::ffi::OsString]) -> ExitCode {
    let error = vmpool::systemd::exec_dropped(args);
    // stderr is the VM's log here: one line for whoever reads it.
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!(
            "image-launcher {}: cannot start the VM: {error}\n",
            vmpool::systemd::EXEC_VM
        ),
    );
    ExitCode::from(126)
}

/// The program: validates `args`, starts the live map's writer (when this
/// launcher serves Apache and is not a successor), then answers keys until
/// end of input or SIGTERM.
pub fn run(args: Args) -> ExitCode {
    if args.check {
        return preflight::run(&args);
    }
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
        "ready: ports {}, start timeout {:?}, at most {} starting at once, {}{}",
        config.ports,
        config.start_timeout,
        config.max_starting,
        if config.wait {
            "always waiting for the key's VM"
        } else {
            "answering another VM that is up while one starts"
        },
        config
            .live_map
            .as_ref()
            .map(|p| format!(", live map {}", p.display()))
            .unwrap_or_default()
    );
    // Only a launcher that serves Apache writes the live map: not one asked
    // by hand, not a successor serving an old Apache generation.
    let writes =
        config.live_map.is_some() && keys.is_empty() && !rewritemap::successor::is_successor();
    let (table, wakeups) = match writes.then(writer::wakeup_pipe).transpose() {
        Ok(Some((waker, wakeups))) => {
            let waker = Arc::new(waker);
            let on_change = Arc::clone(&waker);
            (
                PortTable::new(Box::new(move || on_change.wake())),
                Some((waker, wakeups)),
            )
        }
        Ok(None) => (PortTable::default(), None),
        Err(e) => {
            tracing::error!("cannot make the live map writer's pipe: {e}");
            return ExitCode::from(2);
        }
    };
    let shared = Arc::new(Shared::new(config, table));
    if let Some((waker, wakeups)) = wakeups
        && let Err(e) = writer::spawn(Arc::clone(&shared), waker, wakeups)
    {
        tracing::error!("cannot start the live map's writer: {e}");
    }
    let mut launcher = Launcher::new(shared);
    let code = MAP.run(&keys, |key| launcher.answer(key));
    launcher.finish(Duration::from_secs(2));
    code
}
