//! Every VM exit logged once, with its cause, at a level that fits:
//!
//! | cause | level |
//! |---|---|
//! | stopped by this launcher (start timeout, hung) or by `server-map stop` | INFO |
//! | exited by itself with status 0 (idle, done, drained) | INFO |
//! | exited by itself with another status after a good start (a crash) | WARN |
//! | killed by a signal nobody here sent | WARN |
//! | started by an earlier launcher: its status cannot be known | WARN |
//! | a failed start (before listening, or within `--min-uptime-ms`) | ERROR, with the next try (`supervise`) |
//!
//! A VM this launcher started is its child: the thread that watches it
//! reaps it and logs its exit with the exit status. A VM started by an
//! earlier launcher (before an Apache restart) is not: the live map's writer
//! learns of its exit through a pidfd and logs it, without a status. Each
//! line names the port and the pid; the VM's own log gets a timestamped line
//! too.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;

use vmpool::safedir::{Access, SafeDir};

use crate::metrics::ExitCause;

/// Why this launcher stopped a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// It did not listen within its start timeout.
    StartTimeout,
    /// It was hung (work waiting, none taken).
    Hung,
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopCause::StartTimeout => "it did not listen within its start timeout",
            StopCause::Hung => "it was hung",
        })
    }
}

/// What the launcher knows about the VMs whose exits it will log.
#[derive(Debug)]
pub struct Exits {
    /// Where pid records (and `server-map stop`'s notes) are.
    pid_dir: SafeDir,
    /// Where the VMs' logs are.
    log_dir: SafeDir,
    /// VMs this launcher is stopping, and why.
    stopping: Mutex<HashMap<u32, StopCause>>,
    /// Exits counted by port and cause, for the metrics.
    counts: Mutex<HashMap<(u16, ExitCause), u64>>,
    /// VMs this launcher started (its children): those it watches, and the
    /// last ones it reaped (the writer may learn of their exit after the
    /// reaping, and must not log it a second time).
    children: Mutex<Children>,
}

#[derive(Debug, Default)]
struct Children {
    watched: HashSet<u32>,
    reaped: VecDeque<u32>,
}

/// How many reaped children are remembered.
const REAPED_KEPT: usize = 256;

impl Exits {
    /// The exits of the VMs of `pid_dir`, logged also in `log_dir`.
    pub fn new(pid_dir: SafeDir, log_dir: SafeDir) -> Exits {
        Exits {
            pid_dir,
            log_dir,
            stopping: Mutex::default(),
            counts: Mutex::default(),
            children: Mutex::default(),
        }
    }

    /// `pid` is about to be stopped by this launcher, for `cause`.
    pub fn stopping(&self, pid: u32, cause: StopCause) {
        lock(&self.stopping).insert(pid, cause);
    }

    /// True if `pid` was stopped on purpose (by this launcher, or by
    /// `server-map stop`): its early exit is no failed start.
    pub fn intended(&self, port: u16, pid: u32) -> bool {
        lock(&self.stopping).contains_key(&pid)
            || vmpool::stopmark::is_for(&self.pid_dir, port, pid)
    }

    /// `pid` is a child of this launcher.
    pub fn adopt_child(&self, pid: u32) {
        lock(&self.children).watched.insert(pid);
    }

    /// True if `pid` is (or was, lately) a child of this launcher: its
    /// exit is logged by the thread that reaps it.
    pub fn is_child(&self, pid: u32) -> bool {
        let children = lock(&self.children);
        children.watched.contains(&pid) || children.reaped.contains(&pid)
    }

    /// Logs the exit of a child (reaped with `status`) after `lived`.
    /// `drained`: it had asked to drain. Not for a failed start, which
    /// `supervise` logs with the next try.
    pub fn child_exited(
        &self,
        port: u16,
        pid: u32,
        status: ExitStatus,
        lived: Duration,
        drained: bool,
    ) {
        {
            let mut children = lock(&self.children);
            children.watched.remove(&pid);
            if children.reaped.len() == REAPED_KEPT {
                children.reaped.pop_front();
            }
            children.reaped.push_back(pid);
        }
        let after = format!("after {:.1} s", lived.as_secs_f64());
        let line = if let Some(cause) = lock(&self.stopping).remove(&pid) {
            Line::info(
                ExitCause::Stopped,
                format!("stopped by this launcher ({cause}) {after}"),
            )
        } else if let Some(signal) = status.signal() {
            if vmpool::stopmark::take(&self.pid_dir, port, pid) {
                Line::info(
                    ExitCause::Stopped,
                    format!("stopped by server-map stop (signal {signal}) {after}"),
                )
            } else {
                Line::warn(
                    ExitCause::Killed,
                    format!("was killed by signal {signal} {after}: not by this launcher"),
                )
            }
        } else if status.code() == Some(0) {
            let why = if drained { "drained" } else { "idle, or done" };
            Line::info(
                ExitCause::Clean,
                format!("exited by itself (status 0: {why}) {after}"),
            )
        } else {
            Line::warn(
                ExitCause::Crash,
                format!("exited with {status} {after}: a crash"),
            )
        };
        self.record(port, pid, line);
    }

    /// Logs the exit of a VM that is not our child (started by an earlier
    /// launcher), seen through its pidfd.
    pub fn other_exited(&self, port: u16, pid: u32) {
        let line = if let Some(cause) = lock(&self.stopping).remove(&pid) {
            Line::info(
                ExitCause::Stopped,
                format!("stopped by this launcher ({cause})"),
            )
        } else if vmpool::stopmark::take(&self.pid_dir, port, pid) {
            Line::info(ExitCause::Stopped, "stopped by server-map stop".to_owned())
        } else {
            Line::warn(
                ExitCause::Unknown,
                "exited; it was started by an earlier launcher, so its exit status cannot be known here"
                    .to_owned(),
            )
        };
        self.record(port, pid, line);
    }

    /// Counts an exit of `port`'s VM (a failed start is counted by
    /// `supervise`, which logs it).
    pub fn count(&self, port: u16, cause: ExitCause) {
        *lock(&self.counts).entry((port, cause)).or_default() += 1;
    }

    /// The exits of `port`'s VMs so far, by cause.
    pub fn counted(&self, port: u16) -> BTreeMap<ExitCause, u64> {
        lock(&self.counts)
            .iter()
            .filter(|((p, _), _)| *p == port)
            .map(|(&(_, cause), &n)| (cause, n))
            .collect()
    }

    fn record(&self, port: u16, pid: u32, line: Line) {
        self.count(port, line.cause);
        line.log(port, pid, &self.log_dir);
    }
}

/// One exit line.
struct Line {
    cause: ExitCause,
    warn: bool,
    text: String,
}

impl Line {
    fn info(cause: ExitCause, text: String) -> Line {
        Line {
            cause,
            warn: false,
            text,
        }
    }

    fn warn(cause: ExitCause, text: String) -> Line {
        Line {
            cause,
            warn: true,
            text,
        }
    }

    /// To the ErrorLog, and a timestamped copy to the VM's own log.
    fn log(self, port: u16, pid: u32, log_dir: &SafeDir) {
        if self.warn {
            tracing::warn!("port {port}: pid {pid} {}", self.text);
        } else {
            tracing::info!("port {port}: pid {pid} {}", self.text);
        }
        let note = format!("pid {pid} {}", self.text);
        vm_log_line(log_dir, port, &note);
    }
}

/// Appends `=== image-launcher TIME: TEXT` to the VM's log, for a person
/// reading it; not fatal.
pub fn vm_log_line(log_dir: &SafeDir, port: u16, text: &str) {
    if let Ok(mut log) = log_dir.open_file(&format!("{port}.log"), Access::Append) {
        let _ = writeln!(log, "=== image-launcher {}: {text}", timestamp());
    }
}

/// Now, as `2026-12-02T03:41:09Z` (UTC).
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(timestamp().len(), "2026-12-02T03:41:09Z".len());
    }
}
