//! The answer to one lookup: a port with a live VM, now.
//!
//! A port is *up* when its VM listens and, with `--live-map`, the port is in
//! the published live map: a new session is sent only where its next request
//! will find its VM through the map. A key's port that is up is answered at
//! once. For one that is not, its VM is launched in the background and
//! another port that is up is answered at once: one of the active set, or
//! else (just after a cut-over to a set not started yet) one of the other VMs
//! of the pool, so that a cut-over never costs a new session a 503.
//!
//! Apache holds one global mutex for every map lookup of the whole site, so a
//! lookup waits only when nothing at all can take the session: a cold pool
//! (no VM up), or `--wait`. Then it waits, at most the start timeout, for
//! the key's VM (or, without `--wait`, for any VM of the active set), and
//! gives up as soon as none is on its way any more.
//!
//! The key `ALL` (with `--balance`) stands for a random port of the active
//! set, as `${SERVERS:ALL}` did: the new-session rule then makes one `prg:`
//! lookup instead of two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rewritemap::BadKey;
use rewritemap::signals::stop_requested;
use rewritemap::throttle::{Throttle, held_back_note};
use server_map::{ALL, ReloadingMap};
use vmpool::{Found, Prober, parse_port};

use crate::config::Config;
use crate::livemap::PublishedMap;
use crate::ports::Claim;
use crate::supervise::{Shared, start_launch, vm_addr};

/// The "no" answer: Apache's `|default` applies.
pub const NULL: &str = "NULL";

/// How often a waiting lookup looks again (it also wakes on every change of
/// this launcher's state).
const POLL_EVERY: Duration = Duration::from_millis(1);
/// A condition that lasts is logged at most this often.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// How a lookup sees one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The VM listens and the port is published: it may take a session.
    Up,
    /// The VM listens but the port is not in the live map yet: the writer is
    /// about to publish it (or the VM is hung: it stays out of the map);
    /// neither launched nor answered meanwhile.
    Pending,
    /// The VM asked to drain: it takes no new session; not launched.
    Draining,
    /// Another user's socket listens there: never answered, never launched.
    Stranger(u32),
    /// Nothing listens.
    Down,
}

/// Who takes a new session while the key's VM is not up.
enum Cover {
    /// This port is up.
    Port(u16),
    /// Nothing is up in the whole pool.
    Cold,
}

/// The lookup side of the launcher.
#[derive(Debug)]
pub struct Launcher {
    shared: Arc<Shared>,
    prober: Prober,
    rng: fastrand::Rng,
    /// The server map, for the active set (`--balance`).
    balance: Option<ReloadingMap>,
    /// The live map as published (`--live-map`).
    published: Option<PublishedMap>,
    /// Conditions that last (a backoff, a stranger, an empty active set),
    /// logged at most once a minute per port.
    repeats: Throttle<(u16, &'static str)>,
}

impl Launcher {
    /// A launcher for a validated configuration.
    pub fn new(shared: Arc<Shared>) -> Launcher {
        let config = &shared.config;
        Launcher {
            prober: shared.prober(),
            balance: config.balance.clone().map(ReloadingMap::new),
            published: config.live_map.clone().map(PublishedMap::new),
            rng: fastrand::Rng::new(),
            repeats: Throttle::new(REPEAT_LOG_EVERY),
            shared,
        }
    }

    fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Answers one key: see the module doc.
    pub fn answer(&mut self, key: &str) -> Result<String, BadKey> {
        let port = self.key_port(key)?;
        match self.see(port) {
            Seen::Up => return Ok(port.to_string()),
            Seen::Pending | Seen::Draining => {}
            Seen::Stranger(uid) => self.log_repeat(port, "stranger", || {
                format!("port {port}: a socket of uid {uid}, not the VM user, listens there: not answered, not launched")
            }),
            Seen::Down => {
                let limit = (!self.config().wait).then_some(self.config().max_starting);
                if let Claim::BackingOff(left) = start_launch(&self.shared, port, limit) {
                    self.log_repeat(port, "backoff", || {
                        format!("port {port}: its VM keeps failing to start; no launch for {left:?}")
                    });
                }
            }
        }
        if !self.config().wait
            && let Cover::Port(other) = self.cover_for(port)
        {
            tracing::debug!("port {port} is not up; answering {other} meanwhile");
            return Ok(other.to_string());
        }
        Ok(match self.wait_for(port) {
            Some(port) => port.to_string(),
            None => NULL.to_owned(),
        })
    }

    /// The port a key stands for: itself, or for `ALL` a random port of the
    /// active set.
    fn key_port(&mut self, key: &str) -> Result<u16, BadKey> {
        if key == ALL {
            if self.balance.is_none() {
                return Err(BadKey::new("the key ALL needs --balance"));
            }
            let active = self.active_ports();
            if active.is_empty() {
                return Err(BadKey::new(
                    "balance.conf has no usable ALL entry (within --ports)",
                ));
            }
            return Ok(active[self.rng.usize(..active.len())]);
        }
        parse_port(key)
            .filter(|&p| self.config().ports.contains(p))
            .ok_or_else(|| BadKey::new(format!("not a port of --ports {}", self.config().ports)))
    }

    fn see(&mut self, port: u16) -> Seen {
        match self.prober.find(vm_addr(port)) {
            Found::Up => {
                // Our own launch answers only once the VM's pid record is
                // written (a VM can listen a millisecond after its spawn).
                if self.shared.table.is_launching(port) {
                    return Seen::Pending;
                }
                let Some(map) = self.published.as_mut() else {
                    return Seen::Up;
                };
                if !map.ports().contains(&port) {
                    Seen::Pending
                } else if map.draining(port) {
                    Seen::Draining
                } else {
                    Seen::Up
                }
            }
            Found::Stranger { uid } => Seen::Stranger(uid),
            Found::Down => Seen::Down,
        }
    }

    fn log_repeat(&mut self, port: u16, what: &'static str, line: impl FnOnce() -> String) {
        if let Some(held) = self.repeats.admit((port, what)) {
            tracing::warn!("{}{}", line(), held_back_note(held));
        }
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

    /// A random port that is up: of the active set if any is, else of the
    /// rest of the pool (after a cut-over, the old set while the new one
    /// starts).
    fn cover_for(&mut self, port: u16) -> Cover {
        let active = self.active_ports();
        let up_active = self.up_among(active.iter().copied().filter(|&p| p != port));
        if !up_active.is_empty() {
            return Cover::Port(up_active[self.rng.usize(..up_active.len())]);
        }
        let pool = self.shared.config.ports.ports().to_vec();
        let others = self.up_among(
            pool.into_iter()
                .filter(|p| *p != port && !active.contains(p)),
        );
        if others.is_empty() {
            return Cover::Cold;
        }
        let other = others[self.rng.usize(..others.len())];
        self.log_repeat(0, "outside-active", || {
            format!(
                "no VM of the active set {active:?} is up yet: new sessions go to VMs outside it (such as {other}) until one is"
            )
        });
        Cover::Port(other)
    }

    fn up_among(&mut self, ports: impl Iterator<Item = u16>) -> Vec<u16> {
        ports.filter(|&p| self.see(p) == Seen::Up).collect()
    }

    /// In a cold pool (or with `--wait`): waits for the key's VM, or without
    /// `--wait` for any VM of the active set, at most the start timeout;
    /// gives up when none is on its way any more, or on SIGTERM.
    fn wait_for(&mut self, key: u16) -> Option<u16> {
        let started = Instant::now();
        let start_timeout = self.config().start_timeout;
        let mut candidates = vec![key];
        if !self.config().wait {
            candidates.extend(self.active_ports().into_iter().filter(|&p| p != key));
            if !self.on_its_way(&candidates) {
                self.launch_substitute(&candidates);
            }
        }
        loop {
            let mut pending = false;
            for &port in &candidates {
                match self.see(port) {
                    Seen::Up => {
                        tracing::debug!("port {port}: up after waiting {:?}", started.elapsed());
                        return Some(port);
                    }
                    Seen::Pending => pending = true,
                    Seen::Draining | Seen::Stranger(_) | Seen::Down => {}
                }
            }
            if stop_requested() {
                return None;
            }
            if !pending && !self.on_its_way(&candidates) {
                tracing::warn!("port {key}: no VM is on its way; answering {NULL}");
                return None;
            }
            if started.elapsed() >= start_timeout {
                tracing::warn!("port {key}: no VM up after {start_timeout:?}; answering {NULL}");
                return None;
            }
            self.shared.table.wait_change(POLL_EVERY);
        }
    }

    fn on_its_way(&self, ports: &[u16]) -> bool {
        let start_timeout = self.config().start_timeout;
        ports
            .iter()
            .any(|&p| self.shared.table.vm_expected(p, start_timeout))
    }

    /// When the key's VM cannot be launched now (it backs off, or this
    /// launcher starts enough VMs already), one other port of the active set
    /// in random order.
    fn launch_substitute(&mut self, candidates: &[u16]) {
        let mut others = candidates[1..].to_vec();
        self.rng.shuffle(&mut others);
        let limit = Some(self.config().max_starting);
        for other in others {
            if start_launch(&self.shared, other, limit) == Claim::Granted {
                tracing::info!(
                    "port {}: no launch possible now; launching {other} instead",
                    candidates[0]
                );
                return;
            }
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
