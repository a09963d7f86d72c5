//! The answer to one lookup: a port with a listening VM, now.
//!
//! Apache holds one global mutex for every map lookup of the whole site, so
//! a lookup must not wait for a VM to start when another VM can take the new
//! session: a port that listens is answered at once; for one that does not,
//! its VM is launched in the background and another listening port of the
//! pool is answered at once. Only a cold pool (nothing listening) or
//! `--wait` makes the lookup wait, polling every millisecond, for at most
//! the start timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rewritemap::BadKey;
use rewritemap::signals::stop_requested;
use server_map::ReloadingMap;
use vmpool::{Prober, parse_port};

use crate::config::Config;
use crate::ports::PortTable;
use crate::supervise::{Shared, launch_in_background, vm_addr};

/// The "no" answer: Apache's `|default` applies.
pub const NULL: &str = "NULL";

/// How often a waiting lookup probes the key's port.
const POLL_EVERY: Duration = Duration::from_millis(1);

/// The lookup side of the launcher.
#[derive(Debug)]
pub struct Launcher {
    shared: Arc<Shared>,
    prober: Prober,
    rng: fastrand::Rng,
    /// The server map, for the active set (`--balance`).
    balance: Option<ReloadingMap>,
}

/// What [`Launcher::launch`] found or did.
enum Launch {
    /// A launch was started, or one is already under way.
    UnderWay,
    /// The port's VMs keep failing; no launch for this long.
    BackingOff(Duration),
}

impl Launcher {
    /// A launcher for a validated configuration.
    pub fn new(config: Config) -> Launcher {
        let prober = Prober::new(config.probe, Duration::from_millis(200));
        let balance = config.balance.clone().map(ReloadingMap::new);
        Launcher {
            balance,
            shared: Arc::new(Shared {
                config,
                table: PortTable::default(),
            }),
            prober,
            rng: fastrand::Rng::new(),
        }
    }

    fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Answers one key: see the module doc.
    pub fn answer(&mut self, key: &str) -> Result<String, BadKey> {
        let port = parse_port(key)
            .filter(|&p| self.config().ports.contains(p))
            .ok_or_else(|| BadKey::new(format!("not a port of --ports {}", self.config().ports)))?;
        if self.prober.is_listening(vm_addr(port)) {
            return Ok(key.to_owned());
        }
        let epoch = self.shared.table.read(port, |s| s.failure_epoch);
        let launch = self.launch(port);
        if !self.config().wait
            && let Some(other) = self.other_listening_port(port)
        {
            tracing::debug!("port {port} is not up; answering {other} meanwhile");
            return Ok(other.to_string());
        }
        if let Launch::BackingOff(left) = launch {
            tracing::warn!(
                "port {port}: its VM keeps failing to start; no launch for {left:?}; answering {NULL}"
            );
            return Ok(NULL.to_owned());
        }
        Ok(match self.wait_for(port, epoch) {
            Some(port) => port.to_string(),
            None => NULL.to_owned(),
        })
    }

    /// Starts a background launch for `port` unless one is under way, the
    /// VM we launched is still starting, or the port backs off.
    fn launch(&mut self, port: u16) -> Launch {
        let now = Instant::now();
        let start_timeout = self.config().start_timeout;
        let start = self.shared.table.update(port, |s| {
            let starting = s
                .starting
                .is_some_and(|(_, at)| at.elapsed() < start_timeout);
            if s.launching || starting {
                return Ok(false);
            }
            if let Some(left) = s.backoff_left(now) {
                return Err(left);
            }
            s.launching = true;
            Ok(true)
        });
        match start {
            Err(left) => Launch::BackingOff(left),
            Ok(false) => Launch::UnderWay,
            Ok(true) => {
                if let Err(e) = launch_in_background(&self.shared, port) {
                    let pause = self.shared.table.update(port, |s| {
                        s.launching = false;
                        s.fail(now)
                    });
                    tracing::error!(
                        "port {port}: cannot start a launch thread ({e}); next try in {pause:?}"
                    );
                }
                Launch::UnderWay
            }
        }
    }

    /// A random listening port other than `port`, from the active set (the
    /// server map's ALL, with `--balance`) or else the pool: candidates are
    /// probed in random order and the first that listens is taken, which is
    /// uniform among the listening ones.
    fn other_listening_port(&mut self, port: u16) -> Option<u16> {
        let pool = &self.shared.config.ports;
        let active = self
            .balance
            .as_mut()
            .map(|map| map.current().active_ports())
            .filter(|active| !active.is_empty());
        let mut candidates: Vec<u16> = match active {
            Some(active) => active.into_iter().filter(|&p| pool.contains(p)).collect(),
            None => pool.ports().to_vec(),
        };
        candidates.retain(|&p| p != port);
        self.rng.shuffle(&mut candidates);
        candidates
            .into_iter()
            .find(|&p| self.prober.is_listening(vm_addr(p)))
    }

    /// Waits for `port` to listen, at most the start timeout; gives up early
    /// when a start fails (the failure epoch moves) or SIGTERM arrives.
    fn wait_for(&mut self, port: u16, epoch: u64) -> Option<u16> {
        let started = Instant::now();
        let deadline = started + self.config().start_timeout;
        loop {
            if self.prober.is_listening(vm_addr(port)) {
                tracing::debug!("port {port}: up after waiting {:?}", started.elapsed());
                return Some(port);
            }
            if stop_requested() {
                return None;
            }
            if self.shared.table.read(port, |s| s.failure_epoch) != epoch {
                tracing::warn!("port {port}: its VM failed to start; answering {NULL}");
                return None;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "port {port}: no VM listening after {:?}; answering {NULL}",
                    self.config().start_timeout
                );
                return None;
            }
            self.shared.table.wait_change(POLL_EVERY);
        }
    }

    /// Waits (at most `timeout`) for launches under way to write their pid
    /// records, so that stopping never leaves a VM nobody can identify.
    pub fn finish(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.shared.table.any_launching() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
