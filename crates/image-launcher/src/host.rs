//! The host's health for a front in front of several hosts: the live map's
//! `HOST up|drain|down` line (see `vmpool::host`), decided at every check of
//! the writer from what it knows, never by asking a VM.
//!
//! The question is the one a front asks: would a new session sent here now
//! get a VM? Yes (`up`) while a VM that takes new sessions is in the live map
//! (the rules, or the launcher's cover for a starting active set, send it
//! there), or a VM of the active set can be started: not up, not draining,
//! its last start did not fail, and the VM command can be run. Otherwise the
//! answer would be the 503 page: `drain` while some VM still serves its
//! sessions (so the front keeps them here), else `down`. The operator's
//! drain flag makes it `drain` whatever else holds.
//!
//! A port whose start failed stays "failing" until one of its VMs proves
//! itself (`PortTable::failing`), not only during its backoff: otherwise a
//! crash-looping host would say `up` whenever a backoff ended, and the next
//! visitor sent to it would pay for the proof. So while no VM takes new
//! sessions and a port of the active set is failing, the writer itself
//! starts the active set's other ports (is the failure the port's or the
//! command's?) and retries the failing ones as their backoff ends, in the
//! background: a sick host says `down` within moments of its first failed
//! start, whether visitors come or not, and comes back by itself, within a
//! backoff (at most a minute), once its VM command works again. (A cold
//! host with nothing failing is left alone: its VMs start on demand, as
//! ever, so VMs that exited when idle are not started again for nothing.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use vmpool::HostHealth;
use vmpool::host::is_drained;

use crate::supervise::{Shared, command_problem, start_launch};

/// The writer's memory of the host's health.
#[derive(Debug)]
pub struct HostWatch {
    live_map: PathBuf,
    last: Option<HostHealth>,
}

/// What one check knows, for [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The operator drained the host.
    pub drained: bool,
    /// A VM in the live map takes new sessions.
    pub serving: bool,
    /// A VM of the active set can be started.
    pub startable: bool,
    /// Some VM in the live map serves sessions (draining ones included).
    pub sessions: bool,
}

/// The health for `facts`, and why, for the log.
pub fn decide(facts: Facts) -> (HostHealth, &'static str) {
    if facts.drained {
        (HostHealth::Drain, "drained by the operator")
    } else if facts.serving {
        (HostHealth::Up, "a VM takes new sessions")
    } else if facts.startable {
        (HostHealth::Up, "a VM of the active set can be started")
    } else if facts.sessions {
        (
            HostHealth::Drain,
            "no VM takes new sessions and none of the active set can be started; VMs still serve their sessions",
        )
    } else {
        (
            HostHealth::Down,
            "no VM is up and none of the active set can be started",
        )
    }
}

impl HostWatch {
    /// A watch for the host whose live map is `live_map` (its drain flag is
    /// next to it).
    pub fn new(live_map: PathBuf) -> HostWatch {
        HostWatch {
            live_map,
            last: None,
        }
    }

    /// The host's health now: `active` is the active set, `published` the
    /// ports in the live map, `draining` those of VMs that asked to drain.
    /// Retries the active set's failing ports while no new session can be
    /// had; logs every change.
    pub fn assess(
        &mut self,
        shared: &Arc<Shared>,
        active: &[u16],
        published: &BTreeSet<u16>,
        draining: &[u16],
    ) -> HostHealth {
        let config = &shared.config;
        let serving = published.iter().any(|p| !draining.contains(p));
        let candidates: Vec<u16> = active
            .iter()
            .copied()
            .filter(|p| !published.contains(p) && !draining.contains(p))
            .collect();
        // One stat of the command, only when it matters.
        let problem = (!serving && !candidates.is_empty())
            .then(|| command_problem(&config.program))
            .flatten();
        let startable = problem.is_none() && candidates.iter().any(|&p| !shared.table.failing(p));
        if !serving && candidates.iter().any(|&p| shared.table.failing(p)) {
            for &port in &candidates {
                start_launch(shared, port, Some(config.max_starting));
            }
        }
        let facts = Facts {
            drained: is_drained(&self.live_map),
            serving,
            startable,
            sessions: !published.is_empty(),
        };
        let (health, why) = decide(facts);
        if self.last != Some(health) {
            let was = self
                .last
                .map_or_else(|| "host".to_owned(), |last| format!("host: {last} ->"));
            let detail = problem.map(|p| format!(" ({p})")).unwrap_or_default();
            if health == HostHealth::Up || facts.drained {
                tracing::info!("{was} {health}: {why}{detail}");
            } else {
                tracing::warn!("{was} {health}: {why}{detail}; the active set is {active:?}");
            }
            self.last = Some(health);
        }
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(drained: bool, serving: bool, startable: bool, sessions: bool) -> Facts {
        Facts {
            drained,
            serving,
            startable,
            sessions,
        }
    }

    #[test]
    fn a_host_is_up_while_a_new_session_can_get_a_vm() {
        assert_eq!(decide(facts(false, true, false, true)).0, HostHealth::Up);
        assert_eq!(
            decide(facts(false, false, true, false)).0,
            HostHealth::Up,
            "a cold pool with a command that works"
        );
    }

    #[test]
    fn a_host_that_cannot_take_a_new_session_keeps_its_sessions_or_is_down() {
        assert_eq!(
            decide(facts(false, false, false, true)).0,
            HostHealth::Drain,
            "draining VMs still serve their sessions"
        );
        assert_eq!(
            decide(facts(false, false, false, false)).0,
            HostHealth::Down
        );
    }

    #[test]
    fn the_operators_drain_wins() {
        for serving in [false, true] {
            for startable in [false, true] {
                for sessions in [false, true] {
                    assert_eq!(
                        decide(facts(true, serving, startable, sessions)).0,
                        HostHealth::Drain
                    );
                }
            }
        }
    }
}
