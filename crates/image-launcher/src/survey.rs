//! The pool as the live map's writer sees it at one check: which ports a VM
//! listens on (the kernel's exact lookup), and which of those VMs are hung
//! (their queues, sampled at most every second or so: see `hang`). A VM that
//! is up is one that listens and is not hung.
//!
//! A port is the VM's only if its listener is: the socket must belong to the
//! VM user, and where a pid record names the port's VM, to that very process
//! (or its process group). Any other listener is a stranger: never routed
//! to, never launched over, named in the log and the state file. (A VM of
//! the same user that binds another VM's port is a stranger too.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// What one port's listener is.
enum Seen {
    /// The VM's (`None`: known only by a connect).
    Vm(Option<Listener>),
    /// Someone else's: its uid.
    Stranger(u32),
    /// Nothing listens.
    Nothing,
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
    /// Ports some other socket holds: the uid of its owner.
    pub strangers: BTreeMap<u16, u32>,
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
    /// Listeners already proved to be their recorded VM's: (port, inode, pid).
    proved: BTreeSet<(u16, u32, u32)>,
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
            proved: BTreeSet::new(),
        }
    }

    /// Looks at `ports` now; `recorded`: the pid of each port's VM, from
    /// its pid record, where one runs.
    pub fn survey(&mut self, ports: &[u16], recorded: &HashMap<u16, u32>, now: Instant) -> Survey {
        let mut listeners: BTreeMap<u16, Option<Listener>> = BTreeMap::new();
        let mut strangers = BTreeMap::new();
        for &port in ports {
            match self.listener(port, recorded.get(&port).copied()) {
                Seen::Vm(listener) => {
                    listeners.insert(port, listener);
                }
                Seen::Stranger(uid) => {
                    strangers.insert(port, uid);
                }
                Seen::Nothing => {}
            }
        }
        self.proved
            .retain(|(port, _, _)| listeners.contains_key(port));
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
            strangers,
        }
    }

    /// What listens on `port`; `vm`: the pid its record names.
    fn listener(&mut self, port: u16, vm: Option<u32>) -> Seen {
        let addr = vm_addr(port);
        if let Some(listener) = self.prober.listener(addr) {
            let theirs = vm.is_none_or(|pid| {
                let known = (port, listener.inode, pid);
                self.proved.contains(&known) || {
                    let holds = vmpool::pidrecord::holds_socket(pid, listener.inode);
                    if holds {
                        self.proved.insert(known);
                    }
                    holds
                }
            });
            if theirs {
                self.strangers.reset(&port);
                return Seen::Vm(Some(listener));
            }
            self.warn_stranger(
                port,
                listener.uid,
                " (the VM user's, but not its recorded VM's)",
            );
            return Seen::Stranger(listener.uid);
        }
        match self.prober.find(addr) {
            Found::Up => Seen::Vm(None),
            Found::Stranger { uid } => {
                self.warn_stranger(port, uid, ", not the VM user's");
                Seen::Stranger(uid)
            }
            Found::Down => Seen::Nothing,
        }
    }

    fn warn_stranger(&mut self, port: u16, uid: u32, whose: &str) {
        if let Some(held) = self.strangers.admit(port) {
            tracing::warn!(
                "port {port}: a socket of uid {uid}{whose} listens there: never routed to, never launched over{}",
                held_back_note(held)
            );
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
