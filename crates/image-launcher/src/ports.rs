//! What this launcher knows about each port of the pool, shared between the
//! lookup thread and the background threads that launch and watch VMs.
//!
//! The pid records on disk are the truth shared with other launchers; this
//! is the memory of one launcher: which launches are under way, which VM it
//! is watching, and the backoff of a port whose VMs keep dying at start.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmpool::{Liveness, PidRecord};

/// The first pause after a failed start; it doubles with each failure.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between two starts of a failing VM.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One port's state in this launcher.
#[derive(Debug, Default)]
pub struct PortState {
    /// A launch job runs for this port (it may be waiting for the lock).
    pub launching: bool,
    /// The VM this launcher started and still watches: pid and launch time,
    /// until it listens or exits.
    pub starting: Option<(u32, Instant)>,
    /// A VM another launcher started (a successor, one started by hand),
    /// still within its start timeout: its record, and the end of that time.
    pub starting_elsewhere: Option<(PidRecord, Instant)>,
    /// Failed starts in a row (exited before listening or less than
    /// `--min-uptime-ms` after launch, never listened, or could not be
    /// spawned).
    pub failures: u32,
    /// No new launch before this instant.
    pub retry_at: Option<Instant>,
    /// Counts failed starts ever; a lookup waiting for a VM gives up when it
    /// changes.
    pub failure_epoch: u64,
}

impl PortState {
    /// True while a VM for this port is on its way: a launch runs, or a VM
    /// (ours or another launcher's) is alive and within its start timeout.
    /// Reads `/proc` for another launcher's VM.
    pub fn vm_expected(&mut self, now: Instant, start_timeout: Duration) -> bool {
        if self.launching {
            return true;
        }
        if self
            .starting
            .is_some_and(|(_, at)| now.duration_since(at) < start_timeout)
        {
            return true;
        }
        if let Some((record, until)) = &self.starting_elsewhere {
            if now < *until && matches!(record.liveness(), Ok(Liveness::Running { .. })) {
                return true;
            }
            self.starting_elsewhere = None;
        }
        false
    }

    /// Remaining backoff, if any.
    pub fn backoff_left(&self, now: Instant) -> Option<Duration> {
        self.retry_at.filter(|&at| at > now).map(|at| at - now)
    }

    /// Records a failed start and returns the pause before the next one.
    pub fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.failure_epoch += 1;
        let exponent = (self.failures - 1).min(16);
        let pause = BACKOFF_FIRST.saturating_mul(1 << exponent).min(BACKOFF_MAX);
        self.retry_at = Some(now + pause);
        pause
    }

    /// Records a VM that came up: the backoff is over.
    pub fn succeed(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }
}

/// The states of all ports, and a condition variable signalled on every
/// change, for a lookup waiting in a cold pool.
#[derive(Debug, Default)]
pub struct PortTable {
    states: Mutex<HashMap<u16, PortState>>,
    changed: Condvar,
}

impl PortTable {
    /// Locks the table. A thread that panicked while holding it cannot have
    /// left it inconsistent in a way that matters more than stopping would.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u16, PortState>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes one port's state and wakes waiting lookups.
    pub fn update<T>(&self, port: u16, change: impl FnOnce(&mut PortState) -> T) -> T {
        let result = change(self.lock().entry(port).or_default());
        self.changed.notify_all();
        result
    }

    /// Reads one port's state.
    pub fn read<T>(&self, port: u16, look: impl FnOnce(&PortState) -> T) -> T {
        look(self.lock().entry(port).or_default())
    }

    /// [`PortState::vm_expected`] for one port.
    pub fn vm_expected(&self, port: u16, start_timeout: Duration) -> bool {
        self.lock()
            .entry(port)
            .or_default()
            .vm_expected(Instant::now(), start_timeout)
    }

    /// Waits at most `timeout` for any change.
    pub fn wait_change(&self, timeout: Duration) {
        let guard = self.lock();
        let _ = self.changed.wait_timeout(guard, timeout);
    }

    /// True while any launch job runs.
    pub fn any_launching(&self) -> bool {
        self.lock().values().any(|s| s.launching)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_clears_on_success() {
        let now = Instant::now();
        let mut state = PortState::default();
        let pauses: Vec<u64> = (0..9).map(|_| state.fail(now).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(state.backoff_left(now), Some(BACKOFF_MAX));
        assert_eq!(state.failure_epoch, 9);
        state.succeed();
        assert_eq!(state.backoff_left(now), None);
        assert_eq!(state.fail(now), BACKOFF_FIRST);
    }
}
