//! Launching one VM in the background and watching it: the only place where
//! VMs are started, killed and reaped.
//!
//! A launch runs in its own thread, never in the lookup thread: killing a
//! hung VM can take seconds, and Apache holds its one global map mutex for
//! as long as a lookup takes. The thread takes the port's lock (so no other
//! launcher acts on the port meanwhile), looks at the pid record, kills the
//! recorded VM only if it is still ours and has outlived its start timeout,
//! starts the new VM, writes its record and lets the lock go. Then it watches
//! the VM until it listens; one that does not listen within its start
//! timeout is killed there and then (only if it is still ours), so it never
//! lingers until some later lookup. Then the thread waits for the VM to exit
//! and reaps it, so a launcher that lives for months leaves no zombies.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rewritemap::throttle::{Throttle, held_back_note};
use vmpool::safedir::Access;
use vmpool::{
    Found, Launch, Liveness, PidRecord, PortLock, Prober, Stopped, kill_if_ours, spawn_detached,
};

use crate::config::{Config, fill_port};
use crate::exits::{Exits, StopCause, vm_log_line};
use crate::health::Draining;
use crate::metrics::ExitCause;
use crate::ports::{Claim, PortTable};

/// How long a recorded VM gets to exit after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long a launch waits for another launcher to let go of the port.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often a starting VM's port is probed.
const WATCH_EVERY: Duration = Duration::from_millis(2);
/// How often a VM that listens is checked until `--min-uptime-ms`.
const UPTIME_CHECK_EVERY: Duration = Duration::from_millis(20);
/// A connect probe (where the kernel's table cannot be read) gives up after
/// this long.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// A failure that repeats (a missing command, a port that keeps failing) is
/// logged at most this often.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the launcher, its background threads and the live map's writer
/// share.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Per-port state of this launcher.
    pub table: PortTable,
    /// The VMs whose exits this launcher logs, and why it stops some.
    pub exits: Exits,
    /// The VMs that asked to drain (`--health-path`).
    pub draining: Draining,
    /// Launch failures already logged.
    failures: Mutex<Throttle<(u16, String)>>,
}

impl Shared {
    /// The shared state; `table`'s changes wake the writer.
    pub fn new(config: Config, table: PortTable) -> Shared {
        Shared {
            exits: Exits::new(
                config
                    .pid_dir
                    .try_clone()
                    .expect("a second handle on the pid directory"),
                config
                    .log_dir
                    .try_clone()
                    .expect("a second handle on the log directory"),
            ),
            config,
            table,
            draining: Draining::default(),
            failures: Mutex::new(Throttle::new(REPEAT_LOG_EVERY)),
        }
    }

    /// The probe every part of the launcher uses: the configured method,
    /// one timeout.
    pub fn prober(&self) -> Prober {
        Prober::new(self.config.probe, PROBE_TIMEOUT).owned_by(Some(self.config.vm_uid))
    }

    /// Logs a launch failure: the first time for this port and reason, then
    /// at most once a minute.
    fn log_failure(&self, port: u16, why: &str, pause: Duration) {
        let admitted = self
            .failures
            .lock()
            .map(|mut t| t.admit((port, why.to_owned())))
            .unwrap_or(Some(0));
        if let Some(held) = admitted {
            tracing::error!(
                "port {port}: launch failed: {why}; answering NULL for it, next try in {pause:?} at the earliest{}",
                held_back_note(held)
            );
        }
    }
}

/// The address of a port's VM.
pub fn vm_addr(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
}

/// Starts a background launch for `port` if [`PortTable::claim_launch`]
/// grants one (`limit`: at most this many of this launcher's starts at
/// once); returns the claim.
pub fn start_launch(shared: &Arc<Shared>, port: u16, limit: Option<usize>) -> Claim {
    let claim = shared
        .table
        .claim_launch(port, shared.config.start_timeout, limit);
    if claim == Claim::Granted {
        let job = Arc::clone(shared);
        let spawned = rewritemap::signals::spawn_background(format!("launch-{port}"), move || {
            launch_job(&job, port)
        });
        if let Err(e) = spawned {
            let pause = shared.table.launch_failed(port);
            shared.log_failure(port, &format!("cannot start a launch thread: {e}"), pause);
        }
    }
    claim
}

fn launch_job(shared: &Shared, port: u16) {
    match launch(shared, port) {
        Outcome::Launched(child) => {
            shared.exits.adopt_child(child.id());
            shared.table.launched(port);
            watch(shared, port, child);
        }
        Outcome::Failed(why) => {
            let pause = shared.table.launch_failed(port);
            shared.log_failure(port, &why, pause);
        }
        Outcome::NotNeeded(why) => {
            tracing::debug!("port {port}: no launch: {why}");
            shared.table.not_launched(port, None);
        }
        Outcome::StartingElsewhere(record, left) => {
            tracing::debug!(
                "port {port}: no launch: pid {} of another launcher is starting",
                record.pid
            );
            shared.table.not_launched(port, Some((record, left)));
        }
    }
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
    let mut prober = shared.prober();
    match prober.find(vm_addr(port)) {
        Found::Up => return Outcome::NotNeeded("already listening".into()),
        // Never launched over: the VM could not bind, and the stranger
        // would keep the port.
        Found::Stranger { uid } => {
            return Outcome::Failed(format!(
                "a socket of uid {uid}, not the VM user, listens on the port: nothing launched"
            ));
        }
        Found::Down => {}
    }
    match PidRecord::read_in(&config.pid_dir, port) {
        Ok(Some(record)) => {
            if let Err(not_now) = retire(config, &mut prober, port, &record) {
                return not_now;
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("port {port}: ignoring the pid record: {e}"),
    }
    if let Some(problem) = command_problem(&config.program) {
        return Outcome::Failed(problem);
    }
    let mut child = match spawn_vm(config, port) {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Failed(format!("cannot start {}: {e}", config.program.display()));
        }
    };
    let recorded =
        PidRecord::of_process(child.id()).and_then(|r| r.write_in(&config.pid_dir, port));
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

/// What keeps `program` from being started, if anything: it must be an
/// absolute path (Apache starts map programs without PATH) to an executable
/// regular file. Checked before every launch, so that a fixed command is
/// picked up without restarting anything.
pub fn command_problem(program: &Path) -> Option<String> {
    if !program.is_absolute() {
        return Some(format!(
            "the VM command {} is not an absolute path (Apache starts map programs with an empty environment: there is no PATH)",
            program.display()
        ));
    }
    match fs::metadata(program) {
        Err(e) => Some(format!("the VM command {}: {e}", program.display())),
        Ok(meta) if !meta.is_file() => Some(format!(
            "the VM command {} is not a regular file",
            program.display()
        )),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => Some(format!(
            "the VM command {} is not executable",
            program.display()
        )),
        Ok(_) => None,
    }
}

/// Deals with the process a record names before a new launch: `Err` when no
/// launch must happen now (the VM is still starting, busy, or cannot be
/// stopped).
fn retire(
    config: &Config,
    prober: &mut Prober,
    port: u16,
    record: &PidRecord,
) -> Result<(), Outcome> {
    match record.liveness() {
        Ok(Liveness::Running { age }) if age < config.start_timeout => Err(
            Outcome::StartingElsewhere(record.clone(), config.start_timeout - age),
        ),
        Ok(Liveness::Running { .. }) if prober.listener(vm_addr(port)).is_some() => {
            // A connect probe fails for a VM whose accept queue is full; the
            // kernel's table still lists its socket. Busy is not dead.
            tracing::warn!(
                "port {port}: pid {} accepts no connection but its socket listens (busy, or hung): left alone",
                record.pid
            );
            Err(Outcome::NotNeeded("busy VM".into()))
        }
        Ok(Liveness::Running { age }) => {
            tracing::warn!(
                "port {port}: killing pid {}: up {:.1} s and not listening",
                record.pid,
                age.as_secs_f64()
            );
            match kill_if_ours(record, KILL_GRACE) {
                Ok(Stopped::Killed) => {
                    tracing::warn!("port {port}: pid {} needed SIGKILL", record.pid);
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(Outcome::Failed(format!(
                    "cannot stop pid {}: {e}",
                    record.pid
                ))),
            }
        }
        Ok(Liveness::NotOurs) => {
            tracing::warn!(
                "port {port}: the pid record names pid {}, which is another process now; leaving it alone",
                record.pid
            );
            Ok(())
        }
        Ok(Liveness::Gone | Liveness::Zombie) => Ok(()),
        Err(e) => Err(Outcome::Failed(format!(
            "cannot check pid {}: {e}",
            record.pid
        ))),
    }
}

fn spawn_vm(config: &Config, port: u16) -> io::Result<Child> {
    let log = config
        .log_dir
        .open_file(&format!("{port}.log"), Access::Append)?;
    // A separator between runs, for a person reading the log.
    vm_log_line(
        &config.log_dir,
        port,
        &format!("starting {}", command_line(config, port)),
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
        scope: config.scope.as_ref().map(|scope| (scope, port)),
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
/// timeout (then it is killed); then, if it listened, until it has run
/// `--min-uptime-ms` (an exit before that is a failed start too: a VM that
/// crashes on its first request must not be relaunched in a loop); then it
/// waits for the VM to exit and reaps it.
fn watch(shared: &Shared, port: u16, mut child: Child) {
    let pid = child.id();
    let launched = Instant::now();
    let config = &shared.config;
    let mut prober = shared.prober();
    let failed = |why: String| {
        shared.exits.count(port, ExitCause::FailedStart);
        let pause = shared.table.start_failed(port);
        tracing::error!("port {port}: pid {pid} {why}; next launch in {pause:?} at the earliest");
    };
    // An early exit on purpose (stopped by us, or by server-map stop) is no
    // failed start: logged as what it was, and no backoff.
    let exited_early = |status: ExitStatus, listened: bool| {
        if shared.exits.intended(port, pid) {
            shared
                .exits
                .child_exited(port, pid, status, launched.elapsed(), false);
            if listened {
                shared.table.exited(port);
            } else {
                shared.table.not_launched(port, None);
            }
            return;
        }
        let ms = launched.elapsed().as_millis();
        failed(if listened {
            format!(
                "exited ({status}) {ms} ms after launch, sooner than --min-uptime-ms {}",
                config.min_uptime.as_millis()
            )
        } else {
            format!("exited ({status}) after {ms} ms, before listening")
        });
    };
    let listened = loop {
        if prober.is_listening(vm_addr(port)) {
            tracing::info!(
                "port {port}: pid {pid} listening after {} ms",
                launched.elapsed().as_millis()
            );
            shared.table.listened(port);
            break true;
        }
        match child.try_wait() {
            Ok(Some(status)) => return exited_early(status, false),
            Ok(None) => {}
            Err(e) => tracing::warn!("port {port}: cannot check pid {pid}: {e}"),
        }
        if launched.elapsed() >= config.start_timeout {
            shared.exits.stopping(pid, StopCause::StartTimeout);
            stop_late_vm(config, port, pid);
            failed(format!(
                "did not listen within its start timeout {:?}: stopped",
                config.start_timeout
            ));
            break false;
        }
        thread::sleep(WATCH_EVERY);
    };
    if listened {
        while launched.elapsed() < config.min_uptime {
            match child.try_wait() {
                Ok(Some(status)) => return exited_early(status, true),
                Ok(None) => thread::sleep(UPTIME_CHECK_EVERY),
                Err(e) => {
                    tracing::warn!("port {port}: cannot check pid {pid}: {e}");
                    break;
                }
            }
        }
        shared.table.proved(port);
    }
    match child.wait() {
        Ok(status) => {
            let drained = shared.draining.contains(port, pid);
            shared
                .exits
                .child_exited(port, pid, status, launched.elapsed(), drained);
        }
        Err(e) => tracing::warn!("port {port}: cannot wait for pid {pid}: {e}"),
    }
    if listened {
        shared.table.exited(port);
    }
}

/// Stops our VM that did not listen in time: under the port's lock, only
/// while its pid and start time still match (it is our unreaped child, so
/// they do), SIGTERM to its group, then SIGKILL.
fn stop_late_vm(config: &Config, port: u16, pid: u32) {
    let _lock = PortLock::acquire(&config.pid_dir, port, LOCK_WAIT);
    match PidRecord::of_process(pid).and_then(|record| kill_if_ours(&record, KILL_GRACE)) {
        Ok(Stopped::Killed) => tracing::warn!("port {port}: pid {pid} needed SIGKILL"),
        Ok(_) => {}
        Err(e) => tracing::error!("port {port}: cannot stop pid {pid}: {e}"),
    }
}

/// Stops the hung VM of `port` in the background, if and only if its pid
/// record proves it is ours (pid and start time): SIGTERM and SIGCONT (a
/// stopped VM handles it at once), a grace period, SIGKILL. The port backs
/// off like after a failed start.
pub fn stop_hung(shared: &Arc<Shared>, port: u16) {
    let shared = Arc::clone(shared);
    let spawned = rewritemap::signals::spawn_background(format!("stop-{port}"), move || {
        let config = &shared.config;
        let _lock = PortLock::acquire(&config.pid_dir, port, LOCK_WAIT);
        let record = match PidRecord::read_in(&config.pid_dir, port) {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::warn!(
                    "port {port}: the hung VM has no pid record: not ours to stop; it stays out of the live map"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "port {port}: cannot read the hung VM's pid record ({e}): left alone"
                );
                return;
            }
        };
        shared.exits.stopping(record.pid, StopCause::Hung);
        match kill_if_ours(&record, KILL_GRACE) {
            Ok(Stopped::NotOurs) => tracing::warn!(
                "port {port}: the pid record names pid {}, which is another process now: the hung listener is not ours to stop",
                record.pid
            ),
            Ok(stopped) => {
                let pause = shared.table.stopped_hung(port);
                let how = match stopped {
                    Stopped::Killed => "needed SIGKILL",
                    Stopped::AlreadyGone => "was gone already",
                    _ => "stopped by SIGTERM",
                };
                tracing::warn!(
                    "port {port}: hung pid {} {how}; relaunched on demand, not before {pause:?}",
                    record.pid
                );
            }
            Err(e) => tracing::error!("port {port}: cannot stop hung pid {}: {e}", record.pid),
        }
    });
    if let Err(e) = spawned {
        tracing::error!("port {port}: cannot start a thread to stop the hung VM: {e}");
    }
}
