//! Pid records: which process was launched on a port, by pid *and* start
//! time, so a recycled pid is never mistaken for our VM.
//!
//! A bare pid file is a promise that breaks the day the VM dies and the
//! kernel hands its pid to another process: the original launcher then
//! `kill`ed whatever had the number. A record here holds the pid, the
//! process's start time (field 22 of `/proc/PID/stat`, in clock ticks since
//! boot) and the boot id; the process is "ours" only while all three match.
//!
//! File format (`<port>.pid`), written atomically (temp file + rename):
//! ```text
//! 12345                                  <- pid, as every pid-file tool expects
//! 9876543                                <- start time, clock ticks after boot
//! 6a1d2f0e-...                           <- /proc/sys/kernel/random/boot_id
//! ```

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::safedir::{Access, SafeDir};

/// What `/proc/PID/stat` says about a process (the fields we use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z`, `T`...
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgrp: i32,
    /// Session.
    pub session: i32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Reads `/proc/PID/stat`; `None` if there is no such process.
pub fn proc_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text)
            .map(Some)
            .ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/stat"))),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::libc::ESRCH) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Parses a stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after the *last* `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// True if process `pid`, or a process of the group it leads (a VM's
/// helpers), holds the socket with inode `inode` (`/proc/PID/fd/N` links to
/// `socket:[inode]`). How a listener is told to be a recorded VM's own.
pub fn holds_socket(pid: u32, inode: u32) -> bool {
    let wanted = format!("socket:[{inode}]");
    let holds = |pid: u32| {
        fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
            })
        })
    };
    if holds(pid) {
        return true;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&other| other != pid)
        .filter(|&other| {
            proc_stat(other)
                .ok()
                .flatten()
                .is_some_and(|stat| stat.pgrp == pid as i32)
        })
        .any(holds)
}

/// The current boot's id, read once.
fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Seconds since boot, from `/proc/uptime`.
fn uptime() -> io::Result<Duration> {
    let text = fs::read_to_string("/proc/uptime")?;
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| io::Error::other("cannot parse /proc/uptime"))
}

/// What became of the process a record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Still running (not a zombie); started `age` ago.
    Running {
        /// Time since the process started.
        age: Duration,
    },
    /// It has exited and waits to be reaped by its parent.
    Zombie,
    /// No process has that pid any more.
    Gone,
    /// The pid belongs to another process now (or the record is from an
    /// earlier boot, or has no start time to check): not ours, never touch it.
    NotOurs,
}

/// The identity of a launched process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidRecord {
    /// The process id.
    pub pid: u32,
    /// Its start time in clock ticks after boot.
    pub start_ticks: u64,
    /// The boot it belongs to.
    pub boot_id: String,
}

impl PidRecord {
    /// The record of a running process, read from `/proc` now.
    pub fn of_process(pid: u32) -> io::Result<PidRecord> {
        let stat = proc_stat(pid)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}")))?;
        Ok(PidRecord {
            pid,
            start_ticks: stat.start_ticks,
            boot_id: boot_id().to_owned(),
        })
    }

    /// `DIR/<port>.pid`.
    pub fn path(dir: &Path, port: u16) -> PathBuf {
        dir.join(format!("{port}.pid"))
    }

    /// Reads the record for `port` in the directory at `dir` (checked, see
    /// [`SafeDir`]); `Ok(None)` if there is none. For tools and tests: the
    /// launcher holds its directory open ([`PidRecord::read_in`]).
    pub fn read(dir: &Path, port: u16) -> io::Result<Option<PidRecord>> {
        Self::read_in(&SafeDir::open(dir)?, port)
    }

    /// Reads the record for `port`; `Ok(None)` if there is none. A record
    /// that cannot be parsed is an error (and is never acted upon).
    pub fn read_in(dir: &SafeDir, port: u16) -> io::Result<Option<PidRecord>> {
        let path = Self::path(dir.path(), port);
        let mut file = match dir.open_file(&format!("{port}.pid"), Access::Read) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        Read::by_ref(&mut file)
            .take(512)
            .read_to_string(&mut text)?;
        Self::parse(&text)
            .map(Some)
            .ok_or_else(|| io::Error::other(format!("{}: not a pid record", path.display())))
    }

    /// Parses the text of a pid record file (see the module doc): the pid
    /// (decimal, not 0), the start time, then the boot id (missing: empty).
    /// Whitespace around each line is ignored, as is anything after the
    /// third line. `None` for anything else: such a record names no process
    /// and is never acted upon.
    pub fn parse(text: &str) -> Option<PidRecord> {
        let mut lines = text.lines().map(str::trim);
        let pid = lines.next()?.parse().ok().filter(|&pid| pid > 0)?;
        let start_ticks = lines.next()?.parse().ok()?;
        let boot_id = lines.next().unwrap_or_default().to_owned();
        Some(PidRecord {
            pid,
            start_ticks,
            boot_id,
        })
    }

    /// The text of the record's file, which [`PidRecord::parse`] reads back:
    /// pid, start time and boot id, one per line.
    pub fn file_text(&self) -> String {
        format!("{}\n{}\n{}\n", self.pid, self.start_ticks, self.boot_id)
    }

    /// [`PidRecord::write_in`] the directory at `dir` (checked), for tools
    /// and tests.
    pub fn write(&self, dir: &Path, port: u16) -> io::Result<()> {
        self.write_in(&SafeDir::open(dir)?, port)
    }

    /// Writes the record for `port` atomically: a reader sees the old record
    /// or the new one, never half of one.
    pub fn write_in(&self, dir: &SafeDir, port: u16) -> io::Result<()> {
        dir.replace(&format!("{port}.pid"), self.file_text().as_bytes(), 0o644)
    }

    /// Checks the recorded process against `/proc`.
    pub fn liveness(&self) -> io::Result<Liveness> {
        if self.boot_id != boot_id() {
            return Ok(Liveness::NotOurs);
        }
        let Some(stat) = proc_stat(self.pid)? else {
            return Ok(Liveness::Gone);
        };
        if stat.start_ticks != self.start_ticks {
            return Ok(Liveness::NotOurs);
        }
        if stat.state == 'Z' || stat.state == 'X' {
            return Ok(Liveness::Zombie);
        }
        let started =
            Duration::from_secs_f64(self.start_ticks as f64 / clock_ticks_per_second() as f64);
        Ok(Liveness::Running {
            age: uptime()?.saturating_sub(started),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67 18446744073709551615";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_ticks, 987654);
    }

    #[test]
    fn our_own_record_is_running_and_round_trips_through_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = PidRecord::of_process(std::process::id()).expect("self");
        me.write(dir.path(), 3001).expect("write");
        let text = fs::read_to_string(dir.path().join("3001.pid")).expect("read");
        assert_eq!(
            text.lines().next(),
            Some(std::process::id().to_string().as_str())
        );
        let back = PidRecord::read(dir.path(), 3001)
            .expect("read")
            .expect("present");
        assert_eq!(back, me);
        assert!(matches!(
            back.liveness().expect("liveness"),
            Liveness::Running { .. }
        ));
        assert_eq!(PidRecord::read(dir.path(), 3002).expect("read"), None);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn a_recycled_pid_is_not_ours() {
        let me = PidRecord::of_process(std::process::id()).expect("self");
        let older = PidRecord {
            start_ticks: me.start_ticks.saturating_sub(1),
            ..me.clone()
        };
        assert_eq!(older.liveness().expect("liveness"), Liveness::NotOurs);
        let other_boot = PidRecord {
            boot_id: "another-boot".into(),
            ..me
        };
        assert_eq!(other_boot.liveness().expect("liveness"), Liveness::NotOurs);
    }

    #[test]
    fn an_exited_process_is_zombie_then_gone() {
        let mut child = Command::new("true").spawn().expect("spawn");
        // Until we reap it, even an exited child keeps its /proc entry.
        let record = PidRecord::of_process(child.id()).expect("record");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while record.liveness().expect("liveness") != Liveness::Zombie {
            assert!(
                std::time::Instant::now() < deadline,
                "never became a zombie"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        child.wait().expect("reap");
        assert_eq!(record.liveness().expect("liveness"), Liveness::Gone);
    }

    #[test]
    fn garbage_records_are_errors_not_pids() {
        for text in ["", "abc\n", "0\n1\n", "123\n", "-5\n10\n"] {
            assert_eq!(PidRecord::parse(text), None, "{text:?}");
        }
    }
}
