//! Launching a VM detached from its launcher: its own session, stdin from
//! `/dev/null`, stdout and stderr appended to its log, no inherited file
//! descriptors, default signal handling, and the privileges of its user.
//!
//! Why each step matters:
//! - A VM that inherits the launcher's stdin or stdout holds Apache's map
//!   pipes: once the launcher dies, Apache's next lookup writes into a pipe
//!   nobody reads, and the whole site hangs. So stdio is replaced and every
//!   other descriptor is closed on exec.
//! - Its own session (`setsid`) keeps it alive when Apache's process group
//!   is signalled on a restart, and makes it the leader of a process group
//!   that [`crate::kill`] can stop as a whole.
//! - Signals ignored by Apache (inherited as `SIG_IGN` across exec) would
//!   make the VM deaf to them; every disposition goes back to the default and
//!   the mask is emptied.
//! - Privileges are dropped supplementary groups first, then gid, then uid
//!   (after `setuid` nothing else could be changed), and then checked: if
//!   root can be regained, the exec is refused.
//!
//! Everything that allocates or may fail slowly (user lookup, opening the
//! log, building argv) happens in the parent; between fork and exec only
//! plain system calls run.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{self, SigSet, SigmaskHow};
use nix::unistd::{self, Gid, Group, Uid, User};

use crate::systemd::Scope;

/// The user a VM runs as: resolved once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Supplementary groups (from the group database, with `gid`).
    pub groups: Vec<Gid>,
    /// Home directory (for `HOME`).
    pub home: PathBuf,
}

impl Identity {
    /// Resolves `USER` or `USER:GROUP` (names or numeric ids).
    pub fn lookup(spec: &str) -> io::Result<Identity> {
        let (user_part, group_part) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let not_found =
            |what: &str| io::Error::new(io::ErrorKind::NotFound, format!("no such {what}"));
        let user = match user_part.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid))?,
            Err(_) => User::from_name(user_part)?,
        }
        .ok_or_else(|| not_found(&format!("user {user_part:?}")))?;
        let gid = match group_part {
            None => user.gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => Gid::from_raw(gid),
                Err(_) => {
                    Group::from_name(g)?
                        .ok_or_else(|| not_found(&format!("group {g:?}")))?
                        .gid
                }
            },
        };
        let name = CString::new(user.name.clone())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name holds NUL"))?;
        let mut groups = unistd::getgrouplist(&name, gid)?;
        groups.sort_unstable_by_key(|g| g.as_raw());
        groups.dedup();
        Ok(Identity {
            name: user.name,
            uid: user.uid,
            gid,
            groups,
            home: user.dir,
        })
    }

    /// The identity of the running process (for a launcher that is not root).
    pub fn current() -> io::Result<Identity> {
        let uid = unistd::geteuid();
        let user = User::from_uid(uid)?;
        Ok(Identity {
            name: user
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_else(|| uid.to_string()),
            uid,
            gid: unistd::getegid(),
            groups: unistd::getgroups().unwrap_or_default(),
            home: user.map(|u| u.dir).unwrap_or_else(|| PathBuf::from("/")),
        })
    }
}

/// Everything needed to launch one VM.
#[derive(Debug)]
pub struct Launch<'a> {
    /// Absolute path of the program.
    pub program: &'a Path,
    /// Its arguments, already with the port filled in.
    pub args: &'a [OsString],
    /// Drop to this user; `None` keeps the launcher's own.
    pub user: Option<&'a Identity>,
    /// Where stdout and stderr go (opened for append by the caller).
    pub log: File,
    /// The working directory.
    pub workdir: &'a Path,
    /// The complete environment.
    pub env: &'a [(OsString, OsString)],
    /// Under systemd: the VM's own scope, for this port
    /// ([`crate::systemd`]); privileges are then dropped after
    /// systemd-run, by the scope's dropper.
    pub scope: Option<(&'a Scope, u16)>,
}

/// Starts the VM described by `launch`, detached (see the module doc).
/// The returned [`Child`] must be waited for by someone, or it stays a
/// zombie when it exits while the launcher lives.
pub fn spawn_detached(launch: Launch<'_>) -> io::Result<Child> {
    let stderr = launch.log.try_clone()?;
    let mut command = match launch.scope {
        Some((scope, port)) => {
            let mut command = Command::new(&scope.systemd_run);
            command.args(scope.command_line(port, launch.user, launch.program, launch.args));
            command
        }
        None => {
            let mut command = Command::new(launch.program);
            command.args(launch.args);
            command
        }
    };
    command
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(launch.workdir)
        .stdin(Stdio::null())
        .stdout(launch.log)
        .stderr(stderr);
    // In a scope, systemd-run must run as root; the dropper drops.
    let drop_to = launch
        .user
        .filter(|_| launch.scope.is_none())
        .map(|u| (u.uid, u.gid, u.groups.clone()));
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed. It makes plain system calls
    // (setsid, signal with SIG_DFL, sigprocmask, close_range or fcntl,
    // setgroups, setgid, setuid, get*id) on data prepared in the parent;
    // it allocates nothing and takes no lock.
    #[expect(
        unsafe_code,
        reason = "pre_exec is the one door to the child between fork and exec"
    )]
    unsafe {
        command.pre_exec(move || {
            unistd::setsid()?;
            reset_signals();
            close_on_exec_from(3);
            if let Some((uid, gid, groups)) = &drop_to {
                drop_privileges(*uid, *gid, groups)?;
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Default disposition for every signal, real-time ones included, and an
/// empty mask. Runs in the child before exec. (glibc keeps signals 32 and 33
/// for itself and refuses to change them; no program uses them.)
fn reset_signals() {
    for sig in 1..=nix::libc::SIGRTMAX() {
        if sig != nix::libc::SIGKILL && sig != nix::libc::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no handler code; an invalid
            // number is refused with EINVAL and changes nothing.
            #[expect(unsafe_code, reason = "signal() on a raw signal number")]
            unsafe {
                nix::libc::signal(sig, nix::libc::SIG_DFL);
            }
        }
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Marks every descriptor from `first` up close-on-exec, so the VM gets
/// exactly stdin, stdout and stderr. Runs in the child before exec.
fn close_on_exec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;
    // SAFETY: a raw system call on integers; close_range does not touch
    // memory.
    #[expect(unsafe_code, reason = "close_range has no safe wrapper")]
    let done = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // Kernels before 5.11: walk the descriptor table.
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft.min(65_536));
        for fd in first as i32..limit as i32 {
            // SAFETY: fcntl on a descriptor number; EBADF for unused ones.
            #[expect(unsafe_code, reason = "fcntl on a raw descriptor number")]
            unsafe {
                nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC);
            }
        }
    }
}

/// Supplementary groups, then gid, then uid; then proof that root cannot be
/// regained. Runs in the child before exec (or in the scope's dropper).
pub(crate) fn drop_privileges(uid: Uid, gid: Gid, groups: &[Gid]) -> io::Result<()> {
    unistd::setgroups(groups)?;
    unistd::setgid(gid)?;
    unistd::setuid(uid)?;
    let dropped = unistd::getuid() == uid
        && unistd::geteuid() == uid
        && unistd::getgid() == gid
        && unistd::getegid() == gid;
    if !dropped || (!uid.is_root() && unistd::setuid(Uid::from_raw(0)).is_ok()) {
        return Err(io::Error::from_raw_os_error(nix::libc::EPERM));
    }
    Ok(())
}
