//! Stopping a VM, but only ours: the process a pid record names, while its
//! pid *and* start time still match and it is not a zombie.
//!
//! SIGTERM goes to the VM's process group (the launcher made the VM a session
//! and group leader, so helpers it started go too), followed by SIGCONT, so
//! that a stopped VM (SIGSTOP, a debugger) handles it now rather than when
//! someone resumes it; then a bounded wait, then SIGKILL for the group. A pid that now belongs to someone else is left
//! alone, whatever the record says.

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pidrecord::{Liveness, PidRecord, proc_stat};

/// How long SIGKILL may take to be felt before we give up waiting.
const AFTER_SIGKILL: Duration = Duration::from_secs(2);

/// What [`kill_if_ours`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The pid belongs to another process now (or the record cannot be
    /// checked): nothing was signalled.
    NotOurs,
    /// It had already exited (gone, or a zombie): nothing was signalled.
    AlreadyGone,
    /// It exited after SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
}

/// Stops the process `record` names if it is still that process: SIGTERM to
/// its group, up to `grace` for it to exit, then SIGKILL. An error means it
/// could not be signalled or survived SIGKILL for 2 s.
pub fn kill_if_ours(record: &PidRecord, grace: Duration) -> io::Result<Stopped> {
    match record.liveness()? {
        Liveness::NotOurs => return Ok(Stopped::NotOurs),
        Liveness::Gone | Liveness::Zombie => return Ok(Stopped::AlreadyGone),
        Liveness::Running { .. } => {}
    }
    signal_ours(record, Signal::SIGTERM)?;
    signal_ours(record, Signal::SIGCONT)?;
    if wait_until_stopped(record, grace)? {
        return Ok(Stopped::Terminated);
    }
    // Check again right before SIGKILL: it may have exited just now.
    if !matches!(record.liveness()?, Liveness::Running { .. }) {
        return Ok(Stopped::Terminated);
    }
    signal_ours(record, Signal::SIGKILL)?;
    if wait_until_stopped(record, AFTER_SIGKILL)? {
        return Ok(Stopped::Killed);
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "pid {} still runs {AFTER_SIGKILL:?} after SIGKILL",
            record.pid
        ),
    ))
}

/// Sends `signal` to the group the VM leads, or to the VM alone if it has
/// left its group.
fn signal_ours(record: &PidRecord, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(record.pid).map_err(io::Error::other)?;
    let leads_group = proc_stat(record.pid)?.is_some_and(|stat| stat.pgrp == pid);
    let target = if leads_group {
        Pid::from_raw(-pid)
    } else {
        Pid::from_raw(pid)
    };
    match kill(target, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Polls until the process is no longer running; true if it stopped within
/// `timeout`.
fn wait_until_stopped(record: &PidRecord, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if !matches!(record.liveness()?, Liveness::Running { .. }) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(5));
    }
}
