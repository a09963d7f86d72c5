//! What the demo and the tests can make the VM do besides serving sessions,
//! to stand for a Seaside image in trouble:
//! - hang for real (`GET .../hang`): from then on nothing accepts a
//!   connection or reads a byte, as in an endless loop or a debugger halt;
//!   what waits stays in the kernel's queues;
//! - report its health (`GET .../health`): `OK` (200), or `DYING` (503)
//!   once it wants no new session: after `--dying-after N` requests, or on
//!   SIGUSR1 (the "OK / DYING" status of the original fail-over proposal).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use nix::sys::signal::{SigSet, Signal};

use crate::server::LOG;

/// The VM's state of health, shared by every thread.
#[derive(Debug)]
pub struct Control {
    hung: AtomicBool,
    dying: AtomicBool,
    requests: AtomicU64,
    dying_after: Option<u64>,
}

impl Control {
    /// A healthy VM that turns DYING after `dying_after` requests, if given.
    pub fn new(dying_after: Option<u64>) -> Control {
        Control {
            hung: AtomicBool::new(false),
            dying: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            dying_after,
        }
    }

    /// Counts one request (health checks excluded).
    pub fn count_request(&self) {
        let served = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if self.dying_after.is_some_and(|n| served >= n) && !self.dying.swap(true, Ordering::SeqCst)
        {
            tracing::info!(target: LOG, "DYING after {served} requests (--dying-after)");
        }
    }

    /// True once the VM wants no new session.
    pub fn dying(&self) -> bool {
        self.dying.load(Ordering::SeqCst)
    }

    /// Hangs the calling thread, and from now on every thread that asks
    /// [`Control::stop_if_hung`].
    pub fn hang(&self) -> ! {
        if !self.hung.swap(true, Ordering::SeqCst) {
            tracing::warn!(target: LOG, "hanging: no connection accepted, no byte read from now on");
        }
        loop {
            thread::park();
        }
    }

    /// Never returns once the VM hangs.
    pub fn stop_if_hung(&self) {
        if self.hung.load(Ordering::SeqCst) {
            loop {
                thread::park();
            }
        }
    }
}

/// Makes SIGUSR1 turn the VM DYING: blocks it in the calling thread (call
/// first in `main`, before any thread starts, so that every thread inherits
/// the mask) and waits for it on a thread of its own.
pub fn dying_on_sigusr1(control: &'static Control) -> std::io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    set.thread_block()?;
    thread::Builder::new()
        .name("sigusr1".into())
        .spawn(move || {
            while set.wait().is_ok() {
                if !control.dying.swap(true, Ordering::SeqCst) {
                    tracing::info!(target: LOG, "DYING on SIGUSR1");
                }
            }
        })
        .map(drop)
}
