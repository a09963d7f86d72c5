//! One lock file per port, so that whatever runs at the same time (several
//! launchers, an Apache restart overlapping the old launcher) never starts
//! two VMs for one port.
//!
//! `flock` on `DIR/<port>.lock`: released when the lock is dropped or the
//! process dies, so a crash never leaves a port locked. The file is opened
//! close-on-exec and a VM never inherits it. Lock first, then look at the
//! pid record and act: never check-then-create.

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::safedir::{Access, SafeDir};

/// A held lock on one port; released on drop.
#[derive(Debug)]
pub struct PortLock {
    file: File,
}

impl PortLock {
    /// `DIR/<port>.lock`.
    pub fn path(dir: &Path, port: u16) -> PathBuf {
        dir.join(format!("{port}.lock"))
    }

    /// Takes the lock if it is free; `Ok(None)` if someone else holds it.
    pub fn try_acquire(dir: &SafeDir, port: u16) -> io::Result<Option<PortLock>> {
        let file = dir.open_file(&format!("{port}.lock"), Access::Lock)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(PortLock { file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// Takes the lock, waiting at most `timeout` for its holder to let go.
    pub fn acquire(dir: &SafeDir, port: u16, timeout: Duration) -> io::Result<Option<PortLock>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(lock) = Self::try_acquire(dir, port)? {
                return Ok(Some(lock));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for PortLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_lock_is_exclusive_until_dropped() {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = SafeDir::open(top.path()).expect("dir");
        let dir = &dir;
        let held = PortLock::try_acquire(dir, 3001)
            .expect("lock")
            .expect("free");
        assert!(PortLock::try_acquire(dir, 3001).expect("lock").is_none());
        assert!(PortLock::try_acquire(dir, 3002).expect("lock").is_some());
        let waited = PortLock::acquire(dir, 3001, Duration::from_millis(20)).expect("lock");
        assert!(waited.is_none());
        drop(held);
        assert!(PortLock::try_acquire(dir, 3001).expect("lock").is_some());
    }
}
