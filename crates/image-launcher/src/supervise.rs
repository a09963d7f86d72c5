//! Launching one VM in the background and watching it: the only place where
//! VMs are started, killed and reaped.
//!
//! A launch runs in its own thread, never in the lookup thread: killing a
//! hung VM can take seconds, and Apache holds its one global map mutex for
//! as long as a lookup takes. The thread takes the port's lock (so no other
//! launcher acts on the port meanwhile), looks at the pid record, kills the
//! recorded VM only if it is still ours and has outlived its start timeout,
//! starts the new VM, writes its record and lets the lock go. Then it watches
//! the VM until it listens (or dies, or outlives its start timeout), and
//! waits for it to exit, so a launcher that lives for months leaves no
//! zombies behind.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Child;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmpool::files::open_regular;
use vmpool::listen_table::ListenTable;
use vmpool::{
    Launch, Liveness, PidRecord, PortLock, Prober, Stopped, kill_if_ours, spawn_detached,
};

use crate::config::{Config, fill_port};
use crate::ports::PortTable;

/// How long a recorded VM gets to exit after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long a launch waits for another launcher to let go of the port.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often a starting VM's port is probed.
const WATCH_EVERY: Duration = Duration::from_millis(2);
/// How often a VM that listens is checked until `--min-uptime-ms`.
const UPTIME_CHECK_EVERY: Duration = Duration::from_millis(20);

/// What the launcher and its background threads share.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Per-port state of this launcher.
    pub table: PortTable,
}

/// The address of a port's VM.
pub fn vm_addr(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
}

/// Starts a background launch for `port`. The caller has set
/// `launching` in the port's state; the thread clears it.
pub fn launch_in_background(shared: &Arc<Shared>, port: u16) -> io::Result<()> {
    let shared = Arc::clone(shared);
    rewritemap::signals::spawn_background(format!("launch-{port}"), move || {
        let outcome = launch(&shared, port);
        let child = match outcome {
            Outcome::Launched(child) => Some(child),
            Outcome::Failed(why) => {
                let pause = shared.table.update(port, |s| s.fail(Instant::now()));
                tracing::error!(
                    "port {port}: launch failed: {why}; next try in {pause:?} at the earliest"
                );
                None
            }
            Outcome::NotNeeded(why) => {
                tracing::debug!("port {port}: no launch: {why}");
                None
            }
            Outcome::StartingElsewhere(record, left) => {
                tracing::debug!(
                    "port {port}: no launch: pid {} of another launcher is starting",
                    record.pid
                );
                let until = Instant::now() + left;
                shared
                    .table
                    .update(port, |s| s.starting_elsewhere = Some((record, until)));
                None
            }
        };
        let launched = Instant::now();
        shared.table.update(port, |s| {
            s.launching = false;
            s.starting = child.as_ref().map(|c| (c.id(), launched));
        });
        if let Some(child) = child {
            watch(&shared, port, child, launched);
        }
    })
    .map(drop)
}

enum Outcome {
    Launched(Child),
    NotNeeded(String),
    /// Another launcher's VM is alive and within its start timeout (for
    /// this much longer): remembered, so that lookups do not try again.
    StartingElsewhere(PidRecord, Duration),
    Failed(String),
}

/// Under the port's lock: decide, maybe kill, spawn, record.
fn launch(shared: &Shared, port: u16) -> Outcome {
    let config = &shared.config;
    let lock = match PortLock::acquire(&config.pid_dir, port, LOCK_WAIT) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Outcome::NotNeeded(format!("another launcher held the lock for {LOCK_WAIT:?}"));
        }
        Err(e) => return Outcome::Failed(format!("cannot lock: {e}")),
    };
    let mut prober = Prober::new(config.probe, Duration::from_millis(200));
    if prober.is_listening(vm_addr(port)) {
        return Outcome::NotNeeded("already listening".into());
    }
    match PidRecord::read(&config.pid_dir, port) {
        Ok(Some(record)) => {
            if let Some(not_needed) = retire(config, port, &record) {
                return not_needed;
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("port {port}: ignoring the pid record: {e}"),
    }
    let mut child = match spawn_vm(config, port) {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Failed(format!("cannot start {}: {e}", config.program.display()));
        }
    };
    let recorded = PidRecord::of_process(child.id()).and_then(|r| r.write(&config.pid_dir, port));
    if let Err(e) = recorded {
        // A VM without a record could never be told from a stranger later.
        let _ = child.kill();
        let _ = child.wait();
        return Outcome::Failed(format!("cannot write the pid record, VM stopped: {e}"));
    }
    drop(lock);
    tracing::info!(
        "port {port}: launched pid {} as {}: {}",
        child.id(),
        config
            .user
            .as_ref()
            .map_or("the launcher's user", |u| u.name.as_str()),
        command_line(config, port)
    );
    Outcome::Launched(child)
}

/// Deals with the process a record names before a new launch: returns
/// `Some` when no launch is needed (the VM is still starting, or cannot be
/// stopped).
fn retire(config: &Config, port: u16, record: &PidRecord) -> Option<Outcome> {
    match record.liveness() {
        Ok(Liveness::Running { age }) if age < config.start_timeout => Some(
            Outcome::StartingElsewhere(record.clone(), config.start_timeout - age),
        ),
        Ok(Liveness::Running { .. }) if port_in_listen_table(port) => {
            // A connect probe fails for a VM whose accept queue is full; the
            // kernel's table still lists its socket. Busy is not dead.
            tracing::warn!(
                "port {port}: pid {} accepts no connection but its socket listens (busy, or hung): left alone",
                record.pid
            );
            Some(Outcome::NotNeeded("busy VM".into()))
        }
        Ok(Liveness::Running { age }) => {
            tracing::warn!(
                "port {port}: killing pid {}: up {:.1} s and not listening",
                record.pid,
                age.as_secs_f64()
            );
            match kill_if_ours(record, KILL_GRACE) {
                Ok(Stopped::Killed) => {
                    tracing::warn!("port {port}: pid {} needed SIGKILL", record.pid)
                }
                Ok(_) => {}
                Err(e) => {
                    return Some(Outcome::Failed(format!(
                        "cannot stop pid {}: {e}",
                        record.pid
                    )));
                }
            }
            None
        }
        Ok(Liveness::NotOurs) => {
            tracing::warn!(
                "port {port}: the pid record names pid {}, which is another process now; leaving it alone",
                record.pid
            );
            None
        }
        Ok(Liveness::Gone | Liveness::Zombie) => None,
        Err(e) => Some(Outcome::Failed(format!(
            "cannot check pid {}: {e}",
            record.pid
        ))),
    }
}

/// True if the kernel lists a listening socket for the port (false where
/// the table cannot be read: then the connect probe's word stands).
fn port_in_listen_table(port: u16) -> bool {
    ListenTable::open()
        .and_then(|mut table| table.is_listening(vm_addr(port)))
        .unwrap_or(false)
}

fn spawn_vm(config: &Config, port: u16) -> io::Result<Child> {
    let path = config.log_dir.join(format!("{port}.log"));
    let mut log = open_regular(&path, OpenOptions::new().append(true).create(true))?;
    // A separator between runs, for a person reading the log; not fatal.
    let _ = writeln!(
        log,
        "=== image-launcher: starting {}",
        command_line(config, port)
    );
    let args: Vec<OsString> = config.args.iter().map(|a| fill_port(a, port)).collect();
    let env: Vec<(OsString, OsString)> = config
        .env
        .iter()
        .map(|(k, v)| (k.clone(), fill_port(v, port)))
        .collect();
    spawn_detached(Launch {
        program: &config.program,
        args: &args,
        user: config.user.as_ref(),
        log,
        workdir: &config.workdir,
        env: &env,
    })
}

fn command_line(config: &Config, port: u16) -> String {
    std::iter::once(config.program.as_os_str().to_owned())
        .chain(config.args.iter().map(|a| fill_port(a, port)))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Watches a VM we launched: until it listens, exits or outlives its start
/// timeout; then, if it listened, until it has run `--min-uptime-ms` (an
/// exit before that is a failed start too: a VM that crashes on its first
/// request must not be relaunched in a loop); then it waits for the VM to
/// exit and reaps it.
fn watch(shared: &Shared, port: u16, mut child: Child, launched: Instant) {
    let pid = child.id();
    let config = &shared.config;
    let mut prober = Prober::new(config.probe, Duration::from_millis(200));
    let failed = |why: String| {
        let pause = shared.table.update(port, |s| {
            s.starting = None;
            s.fail(Instant::now())
        });
        tracing::error!("port {port}: pid {pid} {why}; next launch in {pause:?} at the earliest");
    };
    let listened = loop {
        if prober.is_listening(vm_addr(port)) {
            tracing::info!(
                "port {port}: pid {pid} listening after {} ms",
                launched.elapsed().as_millis()
            );
            shared.table.update(port, |s| s.starting = None);
            break true;
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let ms = launched.elapsed().as_millis();
                return failed(format!("exited ({status}) after {ms} ms, before listening"));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("port {port}: cannot check pid {pid}: {e}"),
        }
        if launched.elapsed() >= config.start_timeout {
            failed(format!(
                "did not listen within {:?}; it is killed at the first lookup after the pause",
                config.start_timeout
            ));
            break false;
        }
        thread::sleep(WATCH_EVERY);
    };
    if listened {
        while launched.elapsed() < config.min_uptime {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let ms = launched.elapsed().as_millis();
                    return failed(format!(
                        "exited ({status}) {ms} ms after launch, sooner than --min-uptime-ms {}",
                        config.min_uptime.as_millis()
                    ));
                }
                Ok(None) => thread::sleep(UPTIME_CHECK_EVERY),
                Err(e) => {
                    tracing::warn!("port {port}: cannot check pid {pid}: {e}");
                    break;
                }
            }
        }
        shared.table.update(port, |s| s.succeed());
    }
    match child.wait() {
        Ok(status) => tracing::info!(
            "port {port}: pid {pid} exited ({status}) after {:.1} s{}",
            launched.elapsed().as_secs_f64(),
            if listened {
                ""
            } else {
                ", never having listened"
            }
        ),
        Err(e) => tracing::warn!("port {port}: cannot wait for pid {pid}: {e}"),
    }
}
