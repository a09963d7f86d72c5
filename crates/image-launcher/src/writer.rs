//! The live map's writer: one thread of one launcher at a time keeps the live
//! map equal to the truth about the pool, and starts the active set's VMs
//! when it is cold.
//!
//! # One writer
//! Several launchers can be alive at once (Apache starts its map programs
//! twice at start-up, and old ones serve on after a graceful restart), so
//! the writer is whoever holds `LIVE_MAP.lock` (`flock`). Every launcher
//! serving Apache runs this thread; all but one wait in `flock`, and when
//! the holder dies the kernel hands the lock to a waiting one at once, which
//! publishes the truth as its first act. Successors (which only answer an
//! old Apache generation) never write.
//!
//! # What wakes it
//! It sleeps in `poll` on: a pipe that this launcher's own transitions poke
//! (a launch, a VM that listens or exits: see [`crate::ports`]); inotify on
//! balance.conf's directory (a cut-over, by `cp` or rename) and on the pid
//! directory (a VM launched by another launcher); a pidfd for each recorded
//! VM, which becomes readable when that VM exits, whoever launched it. Plus
//! a periodic check of the pool in the kernel's table (`--check-every-ms`,
//! 100 ms by default; 5 ms while a VM is starting) for anything else: a VM
//! whose socket closed while it lives on, a listener started by hand.
//!
//! # What it writes
//! `name port` for each server of balance.conf (within `--ports`) whose VM
//! is up: it listens and is not hung (`survey`, `hang`); `ALL p1|p2|…` only
//! when every port of the active set is up, so that while one is down new
//! sessions still reach the launcher, which launches it on demand; the VMs
//! that asked to drain (`health`) are left out of `ALL` and named on a
//! `DRAINING` line; `HOST up|drain|down` says whether the host as a whole
//! can take new sessions, for a front (see `host`). See [`crate::livemap`]
//! for the file itself. Beside it,
//! `LIVE_MAP.json` (see `vmpool::state`) says what the map cannot: which
//! VMs are hung and since when, which drain, launches and stops per port.
//!
//! # Hung VMs
//! A VM found hung leaves the map at once (its sessions' next requests go
//! to a live VM instead of waiting on it); the line in the log gives the
//! evidence; then it is stopped if its pid record proves it is ours, and
//! relaunched on demand like a crashed VM, after the port's backoff.
//!
//! # Prestart
//! When it becomes the writer and no VM of the active set listens (a boot),
//! and whenever the active set changes (a cut-over), it launches the active
//! set's VMs that are down in the background, at most `--max-starting` at a
//! time, so that the first visitors are not held for a whole image boot.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use server_map::{OrphanWatch, ReloadingMap};
use vmpool::files::open_regular;
use vmpool::state::{self, PoolState};
use vmpool::{Liveness, PidRecord, pidfd};

use crate::health::{self, Targets};
use crate::host::HostWatch;
use crate::livemap::{LiveMap, Publisher, is_reserved};
use crate::metrics::{Metrics, MetricsFile, PortMetrics};
use crate::ports::Claim;
use crate::supervise::{Shared, start_launch, stop_hung};
use crate::survey::{Survey, Surveyor};

/// How often the pool is checked while a VM is starting.
const CHECK_WHILE_STARTING: Duration = Duration::from_millis(5);
/// How often every pid record is read again, whatever inotify said.
const RECORDS_EVERY: Duration = Duration::from_secs(5);
/// After a failed publish, the next try.
const RETRY_PUBLISH: Duration = Duration::from_millis(200);

/// The write end of the pipe that wakes the writer.
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    /// Wakes the writer (never blocks: a full pipe has woken it already).
    pub fn wake(&self) {
        let _ = nix::unistd::write(&self.0, &[1]);
    }
}

/// The read end.
#[derive(Debug)]
pub struct Wakeups(OwnedFd);

/// A pipe to wake the writer with.
pub fn wakeup_pipe() -> io::Result<(Waker, Wakeups)> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    Ok((Waker(write), Wakeups(read)))
}

/// Starts the writer thread: it waits to become the writer, then keeps the
/// map. Never returns an error once started: a failure is logged and tried
/// again.
pub fn spawn(shared: Arc<Shared>, waker: Arc<Waker>, wakeups: Wakeups) -> io::Result<()> {
    rewritemap::signals::spawn_background("live-map".into(), move || {
        let Some(path) = shared.config.live_map.clone() else {
            return;
        };
        let _lock = match wait_for_writer_lock(&path) {
            Ok(lock) => lock,
            Err(e) => {
                tracing::error!("live map {}: cannot take the writer's lock: {e}; this launcher will not write it", path.display());
                return;
            }
        };
        tracing::info!("live map {}: this launcher writes it now", path.display());
        let mut writer = Writer::new(shared, path, wakeups);
        if let Some(health_path) = writer.shared.config.health_path.clone() {
            let started = health::spawn(
                health_path,
                writer.shared.config.health_every,
                writer.targets.clone(),
                writer.shared.draining.clone(),
                waker,
            );
            if let Err(e) = started {
                tracing::error!("cannot start the health checks: {e}");
            }
        }
        loop {
            let next = writer.check();
            writer.wait(next);
        }
    })
    .map(drop)
}

/// Blocks until this process holds `PATH.lock`; the lock lasts as long as
/// the returned file (the process).
fn wait_for_writer_lock(path: &Path) -> io::Result<File> {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(".lock");
    let file = open_regular(
        Path::new(&name),
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )?;
    loop {
        match file.lock() {
            Ok(()) => return Ok(file),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The writer's memory between checks.
struct Writer {
    shared: Arc<Shared>,
    path: PathBuf,
    publisher: Publisher,
    balance: ReloadingMap,
    /// Warns once when a new balance.conf drops a server whose VM listens.
    orphans: OrphanWatch,
    surveyor: Surveyor,
    /// The VMs the health checks ask.
    targets: Targets,
    /// What `LIVE_MAP.json` says now.
    state: Option<PoolState>,
    /// `--metrics-file`.
    metrics: Option<MetricsFile>,
    /// The host's health, for a front.
    host: HostWatch,
    wakeups: Wakeups,
    watch: Option<DirWatch>,
    /// A pidfd per recorded VM that runs, and the record it was opened for.
    exits: HashMap<u16, (PidRecord, OwnedFd)>,
    /// Recorded VMs still within their start timeout: check often.
    starting_until: HashMap<u16, Instant>,
    records_read_at: Option<Instant>,
    /// The active set at the last check (`None` before the first).
    last_active: Option<Vec<u16>>,
    /// Ports to launch in the background, at most `--max-starting` at once.
    prestart: VecDeque<u16>,
    up: BTreeSet<u16>,
    /// Hung VMs being stopped, until their port no longer listens.
    stopping: BTreeSet<u16>,
    publish_failed: bool,
}

/// inotify on balance.conf's directory and the pid directory.
struct DirWatch {
    inotify: Inotify,
    balance_dir: WatchDescriptor,
    balance_name: OsString,
    pid_dir: WatchDescriptor,
}

impl DirWatch {
    fn new(balance: &Path, pid_dir: &Path) -> io::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        let dir = balance
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let changes = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB;
        let balance_dir = inotify.add_watch(dir, changes)?;
        let pid_dir = inotify.add_watch(
            pid_dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_DELETE,
        )?;
        Ok(DirWatch {
            inotify,
            balance_dir,
            balance_name: balance
                .file_name()
                .map(ToOwned::to_owned)
                .unwrap_or_default(),
            pid_dir,
        })
    }

    /// Reads every pending event; true if a pid record changed.
    fn drain(&self) -> bool {
        let mut records_changed = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in events {
                if event.wd == self.pid_dir {
                    records_changed |= event
                        .name
                        .as_ref()
                        .is_some_and(|n| n.to_string_lossy().ends_with(".pid"));
                } else if event.wd == self.balance_dir
                    && event.name.as_deref() == Some(self.balance_name.as_os_str())
                {
                    tracing::debug!("live map: {:?} changed", self.balance_name);
                }
            }
        }
        records_changed
    }
}

impl Writer {
    fn new(shared: Arc<Shared>, path: PathBuf, wakeups: Wakeups) -> Writer {
        let config = &shared.config;
        let balance_path = config.balance.clone().unwrap_or_default();
        let balance = ReloadingMap::new(balance_path.clone());
        let watch = DirWatch::new(&balance_path, config.pid_dir.path())
            .inspect_err(|e| {
                tracing::warn!(
                    "live map: cannot watch {} and {} ({e}); changes are seen by the periodic check alone",
                    balance_path.display(),
                    config.pid_dir.path().display()
                )
            })
            .ok();
        Writer {
            publisher: Publisher::new(path.clone()),
            host: HostWatch::new(path.clone()),
            path,
            orphans: OrphanWatch::new(&balance),
            balance,
            surveyor: Surveyor::new(shared.prober(), config.hang_timeout, config.check_every),
            targets: Targets::default(),
            state: None,
            metrics: config.metrics_file.clone().map(MetricsFile::new),
            wakeups,
            watch,
            exits: HashMap::new(),
            starting_until: HashMap::new(),
            records_read_at: None,
            last_active: None,
            prestart: VecDeque::new(),
            up: BTreeSet::new(),
            stopping: BTreeSet::new(),
            publish_failed: false,
            shared,
        }
    }

    /// Surveys the pool, publishes what changed, stops hung VMs, launches
    /// what must be prestarted; returns when to check again at the latest.
    fn check(&mut self) -> Duration {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let started = Instant::now();
        // The recorded VMs first: every VM this writer publishes is one
        // whose exit it will see (and log).
        self.refresh_records(false);
        let recorded: HashMap<u16, u32> = self
            .exits
            .iter()
            .map(|(&port, (record, _))| (port, record.pid))
            .collect();
        let survey = self
            .surveyor
            .survey(config.ports.ports(), &recorded, started);
        // A VM of ours is published once its pid record is written (it can
        // listen a moment before): what the map shows, a record backs.
        // A hung VM being stopped stays out until it is gone, even if it
        // wakes up meanwhile (SIGCONT comes with its SIGTERM).
        self.stopping.retain(|port| survey.listening.contains(port));
        self.stopping.extend(survey.newly_hung.iter().copied());
        self.up = survey
            .up()
            .into_iter()
            .filter(|&port| !shared.table.is_launching(port) && !self.stopping.contains(&port))
            .collect();
        for &port in &survey.newly_hung {
            let hung = survey.hung[&port];
            tracing::warn!(
                "port {port}: hung: {} and nothing taken for {:.1} s: out of the live map; stopping it if it is ours",
                hung.evidence,
                started.duration_since(hung.since).as_secs_f64()
            );
            stop_hung(&shared, port);
        }
        // The VMs that run now (their pid records), for the drain requests.
        let alive = recorded;
        self.targets.set(
            alive
                .iter()
                .filter(|(port, _)| self.up.contains(port))
                .map(|(&port, &pid)| (port, pid))
                .collect(),
        );
        let draining: Vec<u16> = self
            .shared
            .draining
            .ports(&alive)
            .into_iter()
            .filter(|p| self.up.contains(p))
            .collect();
        let map = self.orphans.current(&mut self.balance);
        let active: Vec<u16> = map
            .active_ports()
            .into_iter()
            .filter(|&p| config.ports.contains(p))
            .collect();
        let taking: Vec<u16> = active
            .iter()
            .copied()
            .filter(|p| !draining.contains(p))
            .collect();
        let mut live = LiveMap {
            servers: map
                .servers()
                .filter(|(name, port)| !is_reserved(name) && self.up.contains(port))
                .map(|(name, port)| (name.to_owned(), port))
                .collect(),
            all: (!taking.is_empty() && active.iter().all(|p| self.up.contains(p)))
                .then_some(taking),
            draining: draining.clone(),
            host: None,
        };
        live.host = Some(
            self.host
                .assess(&shared, &active, &live.ports(), &live.draining),
        );
        self.publish(&live, started);
        self.publish_state(&survey, &live);
        self.write_metrics(&survey, &live, &active);
        self.plan_prestart(active, &survey.strangers);
        self.prestart_next();
        let now = Instant::now();
        self.starting_until
            .retain(|port, until| *until > now && !self.up.contains(port));
        if self.publish_failed {
            RETRY_PUBLISH
        } else if !self.starting_until.is_empty() || self.shared.table.starting_here() > 0 {
            CHECK_WHILE_STARTING
        } else {
            config.check_every
        }
    }

    fn publish(&mut self, live: &LiveMap, started: Instant) {
        match self.publisher.publish(live) {
            Ok(true) => {
                self.publish_failed = false;
                tracing::debug!(
                    "live map: published {} servers{} in {:?}",
                    live.servers.len(),
                    if live.all.is_some() { " and ALL" } else { "" },
                    started.elapsed()
                );
            }
            Ok(false) => self.publish_failed = false,
            Err(e) => {
                if !self.publish_failed {
                    tracing::error!("live map: cannot publish: {e}; trying again");
                }
                self.publish_failed = true;
            }
        }
    }

    /// Updates `--metrics-file`, if asked.
    fn write_metrics(&mut self, survey: &Survey, live: &LiveMap, active: &[u16]) {
        let Some(file) = self.metrics.as_mut() else {
            return;
        };
        let in_map = live.ports();
        let table = &self.shared.table;
        let uptime = |record: &PidRecord| match record.liveness() {
            Ok(Liveness::Running { age }) => Some(age.as_secs()),
            _ => None,
        };
        let ports = self.shared.config.ports.ports().iter().map(|&port| {
            let metrics = PortMetrics {
                listening: survey.listening.contains(&port),
                up: self.up.contains(&port),
                in_live_map: in_map.contains(&port),
                in_active_set: active.contains(&port),
                hung: survey.hung.contains_key(&port),
                draining: live.draining.contains(&port),
                accept_queue: survey.accept_queues.get(&port).copied().unwrap_or(0),
                launches: table.counts(port).0,
                exits: self.shared.exits.counted(port),
                backoff_s: table.backoff_left(port).map_or(0.0, |d| d.as_secs_f64()),
                uptime_s: self.exits.get(&port).and_then(|(record, _)| uptime(record)),
            };
            (port, metrics)
        });
        file.update(&Metrics {
            ports: ports.collect(),
        });
    }

    /// Rewrites `LIVE_MAP.json` when what it says changed.
    fn publish_state(&mut self, survey: &Survey, live: &LiveMap) {
        let in_map = live.ports();
        let now = std::time::SystemTime::now();
        let state = PoolState {
            writer_pid: std::process::id(),
            ports: self
                .shared
                .config
                .ports
                .ports()
                .iter()
                .map(|&port| {
                    let (launches, hung_kills) = self.shared.table.counts(port);
                    state::PortState {
                        port,
                        listening: survey.listening.contains(&port),
                        in_map: in_map.contains(&port),
                        hung: survey.hung.get(&port).map(|h| state::Hung {
                            since_unix_s: (now - h.since.elapsed())
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                            accept_queue: h.evidence.accept_queue,
                            unread_bytes: h.evidence.unread_bytes,
                        }),
                        draining: live.draining.contains(&port),
                        launches,
                        hung_kills,
                        taken_by_uid: survey.strangers.get(&port).copied(),
                    }
                })
                .collect(),
        };
        if self.state.as_ref() == Some(&state) {
            return;
        }
        match state.write(&self.path) {
            Ok(()) => self.state = Some(state),
            Err(e) => tracing::debug!("live map: cannot write its state file: {e}"),
        }
    }

    /// Queues the active set's VMs that are down, on a boot (no VM of the
    /// active set listens when this launcher becomes the writer) and on a
    /// cut-over (the active set changed).
    fn plan_prestart(&mut self, active: Vec<u16>, strangers: &BTreeMap<u16, u32>) {
        // Never launched over a stranger's socket.
        let down: Vec<u16> = active
            .iter()
            .copied()
            .filter(|p| !self.up.contains(p) && !strangers.contains_key(p))
            .collect();
        let none_up = active.iter().all(|p| !self.up.contains(p));
        let why = match &self.last_active {
            None if !down.is_empty() && none_up => Some("no VM of the active set listens"),
            Some(previous) if *previous != active && !down.is_empty() => {
                Some("the active set changed")
            }
            _ => None,
        };
        if let Some(why) = why {
            tracing::info!(
                "{why}: starting {down:?} in the background, at most {} at a time",
                self.shared.config.max_starting
            );
            for port in down {
                if !self.prestart.contains(&port) {
                    self.prestart.push_back(port);
                }
            }
        }
        self.last_active = Some(active);
    }

    fn prestart_next(&mut self) {
        self.prestart.retain(|p| !self.up.contains(p));
        while let Some(&port) = self.prestart.front() {
            match start_launch(&self.shared, port, Some(self.shared.config.max_starting)) {
                Claim::AtLimit => break,
                Claim::Granted | Claim::UnderWay | Claim::BackingOff(_) => {
                    self.prestart.pop_front();
                }
            }
        }
    }

    /// Opens a pidfd for each recorded VM that runs (all of them when
    /// `force`, or every [`RECORDS_EVERY`]); notes the ones still starting.
    fn refresh_records(&mut self, force: bool) {
        let due = self
            .records_read_at
            .is_none_or(|at| at.elapsed() >= RECORDS_EVERY);
        if !force && !due {
            return;
        }
        self.records_read_at = Some(Instant::now());
        let config = &self.shared.config;
        for &port in config.ports.ports() {
            let record = match PidRecord::read_in(&config.pid_dir, port) {
                Ok(Some(record)) => record,
                Ok(None) | Err(_) => {
                    self.exits.remove(&port);
                    continue;
                }
            };
            if let Ok(Liveness::Running { age }) = record.liveness()
                && age < config.start_timeout
                && !self.up.contains(&port)
            {
                self.starting_until
                    .insert(port, Instant::now() + (config.start_timeout - age));
            }
            if self
                .exits
                .get(&port)
                .is_some_and(|(known, _)| *known == record)
            {
                continue;
            }
            match pidfd::open(&record) {
                Ok(Some(fd)) => {
                    self.exits.insert(port, (record, fd));
                }
                Ok(None) => {
                    self.exits.remove(&port);
                }
                Err(e) => {
                    tracing::debug!(
                        "port {port}: no pidfd for pid {} ({e}); the periodic check covers it",
                        record.pid
                    );
                    self.exits.remove(&port);
                }
            }
        }
    }

    /// Sleeps until something may have changed, or `timeout`.
    fn wait(&mut self, timeout: Duration) {
        let ports: Vec<u16> = self.exits.keys().copied().collect();
        let (woken, records_changed, exited) = {
            let mut fds = vec![PollFd::new(self.wakeups.0.as_fd(), PollFlags::POLLIN)];
            if let Some(watch) = &self.watch {
                fds.push(PollFd::new(watch.inotify.as_fd(), PollFlags::POLLIN));
            }
            let first_pidfd = fds.len();
            for port in &ports {
                fds.push(PollFd::new(self.exits[port].1.as_fd(), PollFlags::POLLIN));
            }
            let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            if poll(&mut fds, PollTimeout::from(millis)).is_err() {
                return;
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let exited: Vec<u16> = fds[first_pidfd..]
                .iter()
                .zip(&ports)
                .filter(|(fd, _)| ready(fd))
                .map(|(_, &port)| port)
                .collect();
            (
                ready(&fds[0]),
                self.watch.is_some() && ready(&fds[1]),
                exited,
            )
        };
        if woken {
            let mut sink = [0u8; 64];
            while matches!(nix::unistd::read(&self.wakeups.0, &mut sink), Ok(n) if n > 0) {}
        }
        let records_changed = records_changed && self.watch.as_ref().is_some_and(DirWatch::drain);
        for port in exited {
            if let Some((record, _)) = self.exits.remove(&port)
                && !self.shared.exits.is_child(record.pid)
            {
                self.shared.exits.other_exited(port, record.pid);
            }
        }
        if records_changed {
            self.refresh_records(true);
        }
    }
}
