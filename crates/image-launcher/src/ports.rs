//! What this launcher knows about each port of the pool, shared between the
//! lookup thread, the background threads that launch and watch VMs, and the
//! live map's writer.
//!
//! The pid records on disk are the truth shared with other launchers; this
//! is the memory of one launcher: which launches are under way, which VM it
//! is watching, and the backoff of a port whose VMs keep dying at start.
//! Every change goes through one of the named transitions of [`PortTable`]
//! (so every change wakes a waiting lookup and the live map's writer); the
//! state itself is private.
//!
//! ```text
//!            claim_launch          launched             listened
//!   Idle ───────────────▶ Launching ───────▶ Starting ─────────▶ Up
//!    ▲                      │  │                 │                │
//!    │   launch_failed  ◀───┘  └─▶ not_launched  │ start_failed   │ exited
//!    └───────────────────────────────────────────┴────────────────┘
//! ```
//! `not_launched` goes to `StartingElsewhere` when another launcher's VM is
//! still within its start timeout, else back to `Idle`. A failure (a launch
//! that could not start a VM, a VM that exited before listening or before
//! `--min-uptime-ms`, or never listened) starts or lengthens the port's
//! backoff; a VM that has run `--min-uptime-ms` ends it ([`PortTable::proved`]).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmpool::{Liveness, PidRecord};

/// The first pause after a failed start; it doubles with each failure.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between two starts of a failing VM.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Where one port is, as far as this launcher knows.
#[derive(Debug, Clone, Default)]
enum Phase {
    /// Nothing of ours under way.
    #[default]
    Idle,
    /// A launch job runs (it may be waiting for the port's lock).
    Launching,
    /// Our VM was launched at `since` and has not listened yet.
    Starting { since: Instant },
    /// Another launcher's VM, alive and within its start timeout until
    /// `until`.
    StartingElsewhere { record: PidRecord, until: Instant },
    /// Our VM listened; it is watched until it exits.
    Up,
}

/// One port's state in this launcher.
#[derive(Debug, Default)]
struct PortState {
    phase: Phase,
    /// Failed starts in a row.
    failures: u32,
    /// No new launch before this instant.
    retry_at: Option<Instant>,
    /// VMs this launcher launched on the port.
    launches: u64,
    /// Hung VMs this launcher stopped on the port.
    hung_stops: u64,
}

impl PortState {
    /// True while a VM for this port is on its way: a launch runs, or a VM
    /// (ours or another launcher's) is alive and within its start timeout.
    /// Reads `/proc` for another launcher's VM, and forgets it once it is
    /// gone or late.
    fn vm_expected(&mut self, now: Instant, start_timeout: Duration) -> bool {
        match &self.phase {
            Phase::Launching => true,
            Phase::Starting { since, .. } => now.duration_since(*since) < start_timeout,
            Phase::StartingElsewhere { record, until } => {
                let alive =
                    now < *until && matches!(record.liveness(), Ok(Liveness::Running { .. }));
                if !alive {
                    self.phase = Phase::Idle;
                }
                alive
            }
            Phase::Idle | Phase::Up => false,
        }
    }

    /// Our VM (starting or up) is gone. A launch claimed since (its death
    /// seen by a lookup before its watcher saw it) is left alone.
    fn vm_gone(&mut self) {
        if matches!(self.phase, Phase::Starting { .. } | Phase::Up) {
            self.phase = Phase::Idle;
        }
    }

    /// True while this launcher has a start of its own in progress.
    fn starting_here(&self) -> bool {
        matches!(self.phase, Phase::Launching | Phase::Starting { .. })
    }

    fn backoff_left(&self, now: Instant) -> Option<Duration> {
        self.retry_at.filter(|&at| at > now).map(|at| at - now)
    }

    /// Records a failed start and returns the pause before the next one.
    /// The phase is the caller's business.
    fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exponent = (self.failures - 1).min(16);
        let pause = BACKOFF_FIRST.saturating_mul(1 << exponent).min(BACKOFF_MAX);
        self.retry_at = Some(now + pause);
        pause
    }
}

/// What [`PortTable::claim_launch`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller must start the launch job now (the port is `Launching`).
    Granted,
    /// A launch runs, or a VM is starting: nothing to do.
    UnderWay,
    /// The port's VMs keep failing: no launch for this long.
    BackingOff(Duration),
    /// This launcher already has `--max-starting` VMs on their way.
    AtLimit,
}

/// The states of all ports, and a condition variable signalled on every
/// change, for a lookup waiting in a cold pool; every change also calls the
/// `on_change` hook (the live map's writer).
pub struct PortTable {
    states: Mutex<HashMap<u16, PortState>>,
    changed: Condvar,
    on_change: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for PortTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortTable")
            .field("states", &self.states)
            .finish_non_exhaustive()
    }
}

impl Default for PortTable {
    fn default() -> Self {
        PortTable::new(Box::new(|| {}))
    }
}

impl PortTable {
    /// A table whose every change also calls `on_change`.
    pub fn new(on_change: Box<dyn Fn() + Send + Sync>) -> PortTable {
        PortTable {
            states: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            on_change,
        }
    }

    /// A thread that panicked while holding the lock cannot have left the
    /// table inconsistent in a way that matters more than stopping would.
    fn lock(&self) -> MutexGuard<'_, HashMap<u16, PortState>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The one place that changes a port's state: applies `change`, then
    /// wakes waiting lookups and the writer.
    fn change<T>(&self, port: u16, change: impl FnOnce(&mut PortState) -> T) -> T {
        let result = change(self.lock().entry(port).or_default());
        self.changed.notify_all();
        (self.on_change)();
        result
    }

    fn read<T>(&self, port: u16, look: impl FnOnce(&PortState) -> T) -> T {
        look(self.lock().entry(port).or_default())
    }

    /// Decides whether a launch may start for `port` now: not while one is
    /// under way or a VM is starting, not during a backoff, not when
    /// `limit` (this launcher's starts in progress) is reached. On
    /// [`Claim::Granted`] the port is `Launching` and the caller must run
    /// the launch job, which ends in [`Self::launched`],
    /// [`Self::not_launched`] or [`Self::launch_failed`].
    pub fn claim_launch(&self, port: u16, start_timeout: Duration, limit: Option<usize>) -> Claim {
        let now = Instant::now();
        let mut states = self.lock();
        let starting = states.values().filter(|s| s.starting_here()).count();
        let state = states.entry(port).or_default();
        if state.vm_expected(now, start_timeout) {
            return Claim::UnderWay;
        }
        if let Some(left) = state.backoff_left(now) {
            return Claim::BackingOff(left);
        }
        if limit.is_some_and(|limit| starting >= limit) {
            return Claim::AtLimit;
        }
        state.phase = Phase::Launching;
        drop(states);
        self.changed.notify_all();
        (self.on_change)();
        Claim::Granted
    }

    /// The launch job started a VM.
    pub fn launched(&self, port: u16) {
        self.change(port, |s| {
            s.launches += 1;
            s.phase = Phase::Starting {
                since: Instant::now(),
            }
        });
    }

    /// A hung VM on the port was stopped: like a failed start, the port
    /// backs off, so an image that hangs every time is not relaunched in a
    /// loop; returns the backoff.
    pub fn stopped_hung(&self, port: u16) -> Duration {
        self.change(port, |s| {
            s.hung_stops += 1;
            s.vm_gone();
            s.fail(Instant::now())
        })
    }

    /// The backoff left before `port`'s next launch, if any.
    pub fn backoff_left(&self, port: u16) -> Option<Duration> {
        self.read(port, |s| s.backoff_left(Instant::now()))
    }

    /// (VMs launched, hung VMs stopped) on the port by this launcher.
    pub fn counts(&self, port: u16) -> (u64, u64) {
        self.read(port, |s| (s.launches, s.hung_stops))
    }

    /// The launch job found nothing to do; `elsewhere`: another launcher's
    /// VM that is still starting, and how much of its start timeout is left.
    pub fn not_launched(&self, port: u16, elsewhere: Option<(PidRecord, Duration)>) {
        self.change(port, |s| {
            s.phase = match elsewhere {
                Some((record, left)) => Phase::StartingElsewhere {
                    record,
                    until: Instant::now() + left,
                },
                None => Phase::Idle,
            }
        });
    }

    /// The launch job could not start a VM; returns the backoff.
    pub fn launch_failed(&self, port: u16) -> Duration {
        self.change(port, |s| {
            s.phase = Phase::Idle;
            s.fail(Instant::now())
        })
    }

    /// Our VM listens.
    pub fn listened(&self, port: u16) {
        self.change(port, |s| {
            if matches!(s.phase, Phase::Starting { .. }) {
                s.phase = Phase::Up;
            }
        });
    }

    /// Our VM failed its start (exited before listening or before the
    /// minimum uptime, or never listened); returns the backoff.
    pub fn start_failed(&self, port: u16) -> Duration {
        self.change(port, |s| {
            s.vm_gone();
            s.fail(Instant::now())
        })
    }

    /// Our VM has run the minimum uptime: the port's backoff is over.
    pub fn proved(&self, port: u16) {
        self.change(port, |s| {
            s.failures = 0;
            s.retry_at = None;
        });
    }

    /// Our VM exited after a good start.
    pub fn exited(&self, port: u16) {
        self.change(port, PortState::vm_gone);
    }

    /// True while the port's last start failed and no VM of it has run
    /// `--min-uptime-ms` since (backing off or not): the port cannot be
    /// counted on to start a VM.
    pub fn failing(&self, port: u16) -> bool {
        self.read(port, |s| s.failures > 0)
    }

    /// True while a launch job runs for `port` (its pid record may not be
    /// written yet).
    pub fn is_launching(&self, port: u16) -> bool {
        self.read(port, |s| matches!(s.phase, Phase::Launching))
    }

    /// True while a VM for `port` is on its way (see the module doc).
    pub fn vm_expected(&self, port: u16, start_timeout: Duration) -> bool {
        self.lock()
            .entry(port)
            .or_default()
            .vm_expected(Instant::now(), start_timeout)
    }

    /// True while any launch job runs.
    pub fn any_launching(&self) -> bool {
        self.lock()
            .values()
            .any(|s| matches!(s.phase, Phase::Launching))
    }

    /// How many starts of this launcher are in progress (launch jobs and VMs
    /// that have not listened yet).
    pub fn starting_here(&self) -> usize {
        self.lock().values().filter(|s| s.starting_here()).count()
    }

    /// Waits at most `timeout` for any change.
    pub fn wait_change(&self, timeout: Duration) {
        let guard = self.lock();
        let _ = self.changed.wait_timeout(guard, timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_doubles_up_to_its_cap_and_ends_when_a_vm_proves_itself() {
        let now = Instant::now();
        let mut state = PortState::default();
        let pauses: Vec<u64> = (0..9).map(|_| state.fail(now).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(state.backoff_left(now), Some(BACKOFF_MAX));

        let table = PortTable::default();
        assert_eq!(table.claim_launch(1, TIMEOUT, None), Claim::Granted);
        assert_eq!(table.launch_failed(1), BACKOFF_FIRST);
        assert!(matches!(
            table.claim_launch(1, TIMEOUT, None),
            Claim::BackingOff(left) if left <= BACKOFF_FIRST
        ));
        assert!(table.failing(1));
        table.proved(1);
        assert!(!table.failing(1));
        assert_eq!(table.claim_launch(1, TIMEOUT, None), Claim::Granted);
        assert_eq!(
            table.launch_failed(1),
            BACKOFF_FIRST,
            "counting starts again"
        );
    }

    #[test]
    fn a_port_is_launched_once_until_its_vm_is_up_or_gone() {
        let table = PortTable::default();
        assert_eq!(table.claim_launch(7, TIMEOUT, None), Claim::Granted);
        assert!(table.is_launching(7));
        assert_eq!(table.claim_launch(7, TIMEOUT, None), Claim::UnderWay);
        table.launched(7);
        assert!(!table.is_launching(7));
        assert_eq!(table.claim_launch(7, TIMEOUT, None), Claim::UnderWay);
        table.listened(7);
        assert!(!table.vm_expected(7, TIMEOUT));
        table.exited(7);
        assert_eq!(table.claim_launch(7, TIMEOUT, None), Claim::Granted);
    }

    #[test]
    fn a_launch_claimed_after_a_death_is_not_undone_by_the_dead_vms_watcher() {
        let table = PortTable::default();
        assert_eq!(table.claim_launch(7, TIMEOUT, None), Claim::Granted);
        table.launched(7);
        table.listened(7);
        // The VM dies; a lookup sees it first and claims a new launch; then
        // the old VM's watcher reports its exit.
        assert_eq!(table.claim_launch(7, TIMEOUT, None), Claim::Granted);
        table.exited(7);
        assert!(table.is_launching(7), "the new launch was forgotten");
        assert_eq!(table.claim_launch(7, TIMEOUT, None), Claim::UnderWay);
    }

    #[test]
    fn the_limit_counts_this_launchers_starts_in_progress() {
        let table = PortTable::default();
        assert_eq!(table.claim_launch(1, TIMEOUT, Some(2)), Claim::Granted);
        assert_eq!(table.claim_launch(2, TIMEOUT, Some(2)), Claim::Granted);
        assert_eq!(table.claim_launch(3, TIMEOUT, Some(2)), Claim::AtLimit);
        assert_eq!(table.claim_launch(3, TIMEOUT, None), Claim::Granted);
        assert_eq!(table.starting_here(), 3);
        table.launched(1);
        table.listened(1);
        assert_eq!(table.starting_here(), 2);
    }

    #[test]
    fn every_transition_calls_the_hook() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let table = PortTable::new(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(table.claim_launch(1, TIMEOUT, None), Claim::Granted);
        table.launched(1);
        table.listened(1);
        table.proved(1);
        table.exited(1);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }
}
