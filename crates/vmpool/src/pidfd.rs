//! A descriptor that becomes readable when a process exits (`pidfd_open`,
//! Linux 5.3), for any process, not only our children: how the live map's
//! writer learns at once that a VM started by an earlier launcher has died.
//!
//! A pidfd names one process for its whole life, so once it is open a
//! recycled pid cannot fool it. The pid it is opened from comes from a pid
//! record, so the record is checked again *after* the open: if the process
//! behind the pid is no longer the recorded one, the descriptor is dropped.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::pidrecord::{Liveness, PidRecord};

/// Opens a pidfd for the process `record` names, if it is still that
/// process and running. `Ok(None)`: gone, a zombie, or not ours. An error:
/// the kernel has no pidfd (before 5.3) or refused.
pub fn open(record: &PidRecord) -> io::Result<Option<OwnedFd>> {
    let pid = nix::libc::pid_t::try_from(record.pid).map_err(io::Error::other)?;
    // SAFETY: a raw system call on integers; on success it returns a new
    // descriptor that nothing else owns, which OwnedFd takes over.
    #[expect(unsafe_code, reason = "pidfd_open has no safe wrapper in nix")]
    let fd = unsafe {
        // Flags 0: a pidfd is always close-on-exec.
        nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0 as nix::libc::c_uint)
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(nix::libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    let raw = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: `raw` was just returned by pidfd_open and is owned by no one.
    #[expect(unsafe_code, reason = "taking ownership of a fresh descriptor")]
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(matches!(record.liveness()?, Liveness::Running { .. }).then_some(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    use std::process::Command;

    #[test]
    fn a_pidfd_becomes_readable_when_its_process_exits() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        let record = PidRecord::of_process(child.id()).expect("record");
        let fd = open(&record).expect("pidfd").expect("running");
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::ZERO).expect("poll"), 0);
        child.kill().expect("kill");
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(5000u16)).expect("poll"), 1);
        child.wait().expect("reap");
        assert!(open(&record).expect("pidfd").is_none(), "gone");
    }

    #[test]
    fn a_record_of_another_process_gives_no_pidfd() {
        let me = PidRecord::of_process(std::process::id()).expect("self");
        let stale = PidRecord {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(open(&stale).expect("pidfd").is_none());
    }
}
