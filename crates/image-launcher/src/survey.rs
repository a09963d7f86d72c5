//! The pool as the live map's writer sees it at one check: which ports a VM
//! listens on (the kernel's exact lookup, its owner checked), and which of
//! those VMs are hung (their queues, sampled at most every second or so:
//! see `hang`). A VM that is up is one that listens and is not hung.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rewritemap::throttle::{Throttle, held_back_note};
use vmpool::listen_table::{Connection, ListenTable, Listener};
use vmpool::{Found, Prober};

use crate::hang::{Evidence, HangWatch, Verdict};
use crate::supervise::vm_addr;

/// A hung VM: since when work waited untaken, and what waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hung {
    /// Work has waited untaken since.
    pub since: Instant,
    /// What waited when it was found hung.
    pub evidence: Evidence,
}

/// One check's view of the pool.
#[derive(Debug, Default)]
pub struct Survey {
    /// Ports a VM listens on.
    pub listening: BTreeSet<u16>,
    /// Those whose VM is hung.
    pub hung: BTreeMap<u16, Hung>,
    /// Hung since this check (to be stopped).
    pub newly_hung: Vec<u16>,
    /// The accept queue of each listening VM, where the table tells.
    pub accept_queues: BTreeMap<u16, u32>,
}

impl Survey {
    /// Ports whose VM listens and is not hung.
    pub fn up(&self) -> BTreeSet<u16> {
        self.listening
            .iter()
            .copied()
            .filter(|p| !self.hung.contains_key(p))
            .collect()
    }
}

/// The writer's eyes on the pool, with their memory between checks.
#[derive(Debug)]
pub struct Surveyor {
    prober: Prober,
    /// For the dump of the VMs' connections.
    queues: Option<ListenTable>,
    hangs: HangWatch,
    sample_every: Duration,
    sampled_at: Option<Instant>,
    hung: BTreeMap<u16, Hung>,
    strangers: Throttle<u16>,
}

impl Surveyor {
    /// A surveyor that calls a VM hung after `hang_timeout`; the queues are
    /// sampled every `check_every`, or every tenth of the hang timeout (at
    /// most once a second) when that is longer.
    pub fn new(prober: Prober, hang_timeout: Duration, check_every: Duration) -> Surveyor {
        let queues = ListenTable::open()
            .inspect_err(|e| {
                tracing::warn!(
                    "cannot read the kernel's socket table ({e}): hung VMs will not be noticed"
                )
            })
            .ok();
        Surveyor {
            prober,
            queues,
            hangs: HangWatch::new(hang_timeout),
            sample_every: check_every.max((hang_timeout / 10).min(Duration::from_secs(1))),
            sampled_at: None,
            hung: BTreeMap::new(),
            strangers: Throttle::new(Duration::from_secs(60)),
        }
    }

    /// Looks at `ports` now.
    pub fn survey(&mut self, ports: &[u16], now: Instant) -> Survey {
        let mut listeners: BTreeMap<u16, Option<Listener>> = BTreeMap::new();
        for &port in ports {
            if let Some(found) = self.listener(port) {
                listeners.insert(port, found);
            }
        }
        // A VM that no longer listens is no longer hung: a new one starts
        // with a clean slate.
        for port in ports {
            if !listeners.contains_key(port) {
                self.hangs.forget(*port);
                self.hung.remove(port);
            }
        }
        let due = self
            .sampled_at
            .is_none_or(|at| now.duration_since(at) >= self.sample_every);
        let mut newly_hung = Vec::new();
        if due {
            self.sampled_at = Some(now);
            newly_hung = self.sample_queues(&listeners, now);
        }
        Survey {
            listening: listeners.keys().copied().collect(),
            hung: self.hung.clone(),
            newly_hung,
            accept_queues: listeners
                .iter()
                .filter_map(|(&port, l)| Some((port, l.as_ref()?.accept_queue)))
                .collect(),
        }
    }

    /// `Some(listener)` when the VM listens (`Some(None)` when only a
    /// connect could tell); `None` when nothing of the VM's user listens.
    fn listener(&mut self, port: u16) -> Option<Option<Listener>> {
        let addr = vm_addr(port);
        if let Some(listener) = self.prober.listener(addr) {
            self.strangers.reset(&port);
            return Some(Some(listener));
        }
        match self.prober.find(addr) {
            Found::Up => Some(None),
            Found::Stranger { uid } => {
                if let Some(held) = self.strangers.admit(port) {
                    tracing::warn!(
                        "port {port}: a socket of uid {uid}, not the VM user, listens there: not routed to{}",
                        held_back_note(held)
                    );
                }
                None
            }
            Found::Down => None,
        }
    }

    /// One sample of every listening VM's queues; returns the ports found
    /// hung now.
    fn sample_queues(
        &mut self,
        listeners: &BTreeMap<u16, Option<Listener>>,
        now: Instant,
    ) -> Vec<u16> {
        let Some(table) = self.queues.as_mut() else {
            return Vec::new();
        };
        let ports: Vec<u16> = listeners
            .iter()
            .filter_map(|(&port, l)| l.is_some().then_some(port))
            .collect();
        let connections: Vec<Connection> = match table.connections_on(&ports) {
            Ok(connections) => connections,
            Err(e) => {
                tracing::debug!("cannot read the VMs' connections: {e}");
                return Vec::new();
            }
        };
        let mut newly_hung = Vec::new();
        for (&port, listener) in listeners {
            let Some(listener) = listener else { continue };
            let own: Vec<&Connection> = connections
                .iter()
                .filter(|c| c.local_port == port)
                .collect();
            match self.hangs.observe(port, listener, &own, now) {
                Verdict::Hung { since, evidence } => {
                    if self.hung.insert(port, Hung { since, evidence }).is_none() {
                        newly_hung.push(port);
                    }
                }
                Verdict::Working | Verdict::Stalled(_) => {
                    if self.hung.remove(&port).is_some() {
                        tracing::info!("port {port}: its VM takes work again: no longer hung");
                    }
                }
            }
        }
        newly_hung
    }
}
