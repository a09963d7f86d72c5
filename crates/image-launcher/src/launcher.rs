//! The answer to one lookup: a port with a listening VM, now.
//!
//! Apache holds one global mutex for every map lookup of the whole site, so
//! a lookup must not wait for a VM to start when another VM can take the new
//! session: a port that listens is answered at once; for one that does not,
//! its VM is launched in the background and another listening port of the
//! active set (or pool) is answered at once. When none of those listens but
//! other VMs of the pool do (the old set, just after a cut-over to a set not
//! yet started), waiting would stall every session of the old set for the
//! new VM's start: the answer is `NULL` at once (a 503 with Retry-After for
//! this new session only). Only a cold pool (no VM listens at all) or
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
/// How often a waiting lookup checks that a VM is still on its way.
const VM_CHECK_EVERY: Duration = Duration::from_millis(50);

/// The lookup side of the launcher.
#[derive(Debug)]
pub struct Launcher {
    shared: Arc<Shared>,
    prober: Prober,
    rng: fastrand::Rng,
    /// The server map, for the active set (`--balance`).
    balance: Option<ReloadingMap>,
}

/// Who covers for a port whose VM is not up.
enum Cover {
    /// This listening port takes the session.
    Port(u16),
    /// No VM of the active set listens, but others of the pool do.
    OutsideActiveSet,
    /// No VM of the pool listens at all.
    ColdPool,
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
        if !self.config().wait {
            match self.cover_for(port) {
                Cover::Port(other) => {
                    tracing::debug!("port {port} is not up; answering {other} meanwhile");
                    return Ok(other.to_string());
                }
                Cover::OutsideActiveSet => {
                    tracing::info!(
                        "port {port}: no VM of the active set listens yet (VMs outside it do); answering {NULL} rather than stall the site"
                    );
                    return Ok(NULL.to_owned());
                }
                Cover::ColdPool => {}
            }
        }
        // A cold pool (or --wait): wait for the key's VM; while the key's port
        // backs off, for another port's instead (but --wait always means the
        // key's own).
        let (port, epoch) = match launch {
            Launch::UnderWay => (port, epoch),
            Launch::BackingOff(left) => {
                let substitute = if self.config().wait {
                    None
                } else {
                    self.substitute_for(port)
                };
                let Some((other, epoch)) = substitute else {
                    tracing::warn!(
                        "port {port}: its VM keeps failing to start; no launch for {left:?}; answering {NULL}"
                    );
                    return Ok(NULL.to_owned());
                };
                tracing::warn!(
                    "port {port}: its VM keeps failing to start (no launch for {left:?}); launching {other} instead"
                );
                (other, epoch)
            }
        };
        Ok(match self.wait_for(port, epoch) {
            Some(port) => port.to_string(),
            None => NULL.to_owned(),
        })
    }

    /// In a cold pool, when the key's port backs off: another port of the
    /// active set (or pool) whose launch starts (or is under way), in random
    /// order, with its failure epoch from before the launch.
    fn substitute_for(&mut self, port: u16) -> Option<(u16, u64)> {
        let mut candidates = self.active_ports();
        candidates.retain(|&p| p != port);
        self.rng.shuffle(&mut candidates);
        candidates.into_iter().find_map(|other| {
            let epoch = self.shared.table.read(other, |s| s.failure_epoch);
            matches!(self.launch(other), Launch::UnderWay).then_some((other, epoch))
        })
    }

    /// The active set (the server map's ALL, with `--balance`) within the
    /// pool, or the pool.
    fn active_ports(&mut self) -> Vec<u16> {
        let pool = &self.shared.config.ports;
        let active = self
            .balance
            .as_mut()
            .map(|map| map.current().active_ports())
            .filter(|active| !active.is_empty());
        match active {
            Some(active) => active.into_iter().filter(|&p| pool.contains(p)).collect(),
            None => pool.ports().to_vec(),
        }
    }

    /// Starts a background launch for `port` unless one is under way, the
    /// VM we launched is still starting, or the port backs off.
    fn launch(&mut self, port: u16) -> Launch {
        let now = Instant::now();
        let start_timeout = self.config().start_timeout;
        let start = self.shared.table.update(port, |s| {
            if s.vm_expected(now, start_timeout) {
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

    /// Who can take a new session while `port`'s VM starts: a random
    /// listening port of the active set (the server map's ALL, with
    /// `--balance`) or else of the pool, which is uniform among the
    /// listening ones; or nobody, told apart by whether VMs outside the
    /// active set listen.
    fn cover_for(&mut self, port: u16) -> Cover {
        let pool = self.shared.config.ports.ports().to_vec();
        let mut candidates = self.active_ports();
        candidates.retain(|&p| p != port);
        // One question for the whole pool when the kernel's table is read.
        let listening = self.prober.listening_ports(&pool);
        let up: Vec<u16> = candidates
            .into_iter()
            .filter(|p| listening.contains(p))
            .collect();
        if !up.is_empty() {
            return Cover::Port(up[self.rng.usize(..up.len())]);
        }
        if listening.iter().any(|&p| p != port) {
            Cover::OutsideActiveSet
        } else {
            Cover::ColdPool
        }
    }

    /// Waits for `port` to listen, at most the start timeout; gives up early
    /// when a start fails (the failure epoch moves), when no VM is on its way
    /// any more (another launcher's VM died), or when SIGTERM arrives.
    fn wait_for(&mut self, port: u16, epoch: u64) -> Option<u16> {
        let started = Instant::now();
        let start_timeout = self.config().start_timeout;
        let deadline = started + start_timeout;
        let mut next_check = started;
        loop {
            // Answered only once our launch has written the VM's pid record:
            // a VM can listen a millisecond after its spawn, before that.
            if self.prober.is_listening(vm_addr(port))
                && !self.shared.table.read(port, |s| s.launching)
            {
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
            if Instant::now() >= next_check {
                next_check += VM_CHECK_EVERY;
                if !self.shared.table.vm_expected(port, start_timeout) {
                    tracing::warn!(
                        "port {port}: no VM is starting there any more; answering {NULL}"
                    );
                    return None;
                }
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
