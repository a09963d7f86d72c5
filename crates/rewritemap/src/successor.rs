//! Handing the pipes to a successor on SIGTERM, so that a graceful restart of
//! Apache fails no request.
//!
//! On a graceful restart, Apache's parent closes its ends of the map pipes,
//! sends SIGTERM to each map program, starts new ones for the new generation
//! of children, and only then tells the old children to finish. Until they
//! have, the old children still look keys up through the old pipes; a map
//! program that simply exited would answer them all with end-of-file, an
//! empty answer, and those requests would fail.
//!
//! So on SIGTERM, once every key read has been answered, a map program
//! starts a copy of itself (the same binary and arguments) on the same
//! stdin and stdout, and exits at once, as Apache expects. The successor
//! answers the old generation's lookups until they close the pipe (the last
//! old child has exited), then exits; it never outlives [`DRAIN_MAX`], and it
//! never hands over again. Nothing is handed over unless stdin is a pipe or
//! a socket (not a terminal, not a file) and the input is at a line
//! boundary, so a key is never lost or split between the two processes.

use std::env;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Set in a successor's environment.
const SUCCESSOR_ENV: &str = "REWRITEMAP_SUCCESSOR";

/// The longest a successor serves the previous generation.
pub const DRAIN_MAX: Duration = Duration::from_secs(120);

/// A second descriptor on stdin, taken before the SIGTERM handler may put
/// `/dev/null` over fd 0.
static SAVED_STDIN: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// True in a process started by [`hand_over`].
pub fn is_successor() -> bool {
    env::var_os(SUCCESSOR_ENV).is_some()
}

/// Keeps a descriptor on stdin if it is a pipe or a socket. Call before
/// installing the SIGTERM handler.
pub fn keep_stdin() {
    let Ok(fd) = io::stdin().as_fd().try_clone_to_owned() else {
        return;
    };
    let file = File::from(fd);
    let handable = file
        .metadata()
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false);
    if handable && let Ok(mut saved) = SAVED_STDIN.lock() {
        *saved = Some(OwnedFd::from(file));
    }
}

/// In a successor: ends the process after [`DRAIN_MAX`], whatever happens.
pub fn limit_drain(name: &'static str) {
    let _ = crate::signals::spawn_background("drain-limit".into(), move || {
        std::thread::sleep(DRAIN_MAX);
        tracing::warn!(
            "{name}: the previous Apache generation still holds the pipe after {DRAIN_MAX:?}; exiting"
        );
        std::process::exit(0);
    });
}

/// True while some process still holds the write end of the pipe: on a full
/// stop (not a graceful restart) Apache's children are gone already, and
/// there is no one left to serve.
fn writers_remain(stdin: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_none_or(|events| !events.contains(PollFlags::POLLHUP)),
        Err(_) => true,
    }
}

/// Starts the successor on the kept stdin and a copy of stdout; returns its
/// pid. `Ok(None)` when stdin is not a pipe or socket, or nobody writes to
/// it any more.
pub fn hand_over() -> io::Result<Option<u32>> {
    let Some(stdin) = SAVED_STDIN.lock().ok().and_then(|mut s| s.take()) else {
        return Ok(None);
    };
    if !writers_remain(&stdin) {
        return Ok(None);
    }
    let stdout = io::stdout().as_fd().try_clone_to_owned()?;
    let mut args = env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("map"));
    // This very binary: its path if it is still there, else /proc/self/exe,
    // which works even after an upgrade deleted or replaced the file.
    let exe = env::current_exe()
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| "/proc/self/exe".into());
    let child = Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env_clear()
        .env(SUCCESSOR_ENV, "1")
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::inherit())
        .spawn()?;
    // Not waited for: it outlives us, and is reaped by whoever adopts it.
    Ok(Some(child.id()))
}
