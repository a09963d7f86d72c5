//! SIGTERM: Apache's way of stopping a map program, handled so the program
//! stops promptly and cleanly.
//!
//! On every restart Apache sends SIGTERM to each map program, waits about 3 s
//! and then sends SIGKILL. The handler sets a flag and puts `/dev/null` in
//! place of stdin (`dup2` is async-signal-safe). It is installed without
//! `SA_RESTART`, so a blocking read of stdin returns `EINTR`, and the loop in
//! [`crate::serve()`] sees the flag and returns. A signal that lands just
//! before the read starts cannot be missed either: the read then meets
//! `/dev/null`, that is end of input. A program that inherited SIGTERM
//! ignored or blocked gets it back. SIGHUP is taken like SIGTERM, and
//! SIGUSR1 is ignored: the prefork MPM sends both to Apache's whole process
//! group on restarts, and they are not meant for the maps.
//!
//! A process-directed signal goes to any thread that does not block it, so
//! background threads must be started with [`spawn_background`]: they block
//! SIGTERM and leave it to the main thread.

use std::io;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::{self, JoinHandle};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};

static STOP: AtomicBool = AtomicBool::new(false);
/// A descriptor open on `/dev/null`, for the handler to put over stdin.
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigterm(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    let dev_null = DEV_NULL.load(Ordering::SeqCst);
    if dev_null >= 0 {
        // SAFETY: dup2 is async-signal-safe and only changes the descriptor
        // table; fd 0 then reads as end of input.
        #[expect(unsafe_code, reason = "dup2 on raw descriptors in a signal handler")]
        unsafe {
            nix::libc::dup2(dev_null, nix::libc::STDIN_FILENO);
        }
    }
}

/// Installs the SIGTERM handler and unblocks SIGTERM in the calling thread.
/// Call it once, first thing in `main`, before any thread is started.
pub fn install() -> io::Result<()> {
    let dev_null = std::fs::File::open("/dev/null")?;
    DEV_NULL.store(dev_null.into_raw_fd(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_sigterm),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic and calls dup2, both
    // async-signal-safe, and it touches no other state; SIG_IGN runs no code.
    #[expect(unsafe_code, reason = "installing a signal handler is unsafe in nix")]
    unsafe {
        signal::sigaction(Signal::SIGTERM, &action)?;
        // A hard restart of the prefork MPM signals Apache's whole process
        // group with SIGHUP, a graceful one with SIGUSR1: neither is meant
        // for the maps, whose own stop comes as SIGTERM from the parent.
        signal::sigaction(Signal::SIGHUP, &action)?;
        signal::sigaction(Signal::SIGUSR1, &ignore)?;
    }
    sigterm_mask(SigmaskHow::SIG_UNBLOCK)?;
    Ok(())
}

/// True once SIGTERM has arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Starts a named thread that has SIGTERM blocked, so the signal always
/// interrupts the main thread (which is the one waiting on stdin).
pub fn spawn_background<F, T>(name: String, work: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // The new thread inherits the mask of the thread that creates it, so
    // there is no window in which it could take the signal.
    let previous = sigterm_mask(SigmaskHow::SIG_BLOCK)?;
    let spawned = thread::Builder::new().name(name).spawn(work);
    signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
    spawned
}

/// Changes SIGTERM in the calling thread's mask and returns the mask it had.
fn sigterm_mask(how: SigmaskHow) -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    let mut previous = SigSet::empty();
    signal::pthread_sigmask(how, Some(&set), Some(&mut previous))?;
    Ok(previous)
}
