//! The host as a whole, as a front (HAProxy, in front of several hosts)
//! sees it: the `HOST up|down|drain` line of the live map, which the live
//! map's writer keeps true and Apache answers on the health URL, and the
//! operator's drain flag, a file next to the live map (`LIVE_MAP.drain`)
//! that `server-map drain-host on` creates and the writer watches.
//!
//! - `up`: the host can take a new session: a VM is up to take it, or one of
//!   the active set can be started.
//! - `drain`: the operator drained the host (the flag), or no new session
//!   can be had but some VM still serves its sessions: the front keeps the
//!   host's sessions on it and sends it no new one.
//! - `down`: no VM is up and none of the active set can be started (every
//!   port's last start failed, or the VM command cannot be run).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The key of the live map's line that says how the host is.
pub const HOST: &str = "HOST";

/// What the host says to a front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHealth {
    /// It takes new sessions.
    Up,
    /// It keeps its sessions and takes no new one.
    Drain,
    /// It can take nothing.
    Down,
}

impl HostHealth {
    /// The word in the live map: `up`, `drain` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            HostHealth::Up => "up",
            HostHealth::Drain => "drain",
            HostHealth::Down => "down",
        }
    }

    /// Reads the word back; anything else is `None`.
    pub fn parse(word: &str) -> Option<HostHealth> {
        match word {
            "up" => Some(HostHealth::Up),
            "drain" => Some(HostHealth::Drain),
            "down" => Some(HostHealth::Down),
            _ => None,
        }
    }
}

impl fmt::Display for HostHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The drain flag for the live map at `live_map`: `LIVE_MAP.drain`.
pub fn drain_flag_for(live_map: &Path) -> PathBuf {
    let mut name = live_map.as_os_str().to_owned();
    name.push(".drain");
    PathBuf::from(name)
}

/// True if the operator drained the host: the flag is a regular file (a
/// symlink or anything else planted there does not count).
pub fn is_drained(live_map: &Path) -> bool {
    fs::symlink_metadata(drain_flag_for(live_map)).is_ok_and(|m| m.file_type().is_file())
}

/// Drains the host (`on`) or ends the drain: creates the flag with `note`
/// (who and when, for people) or removes it. Idempotent: true if it
/// changed anything.
pub fn set_drained(live_map: &Path, on: bool, note: &str) -> io::Result<bool> {
    let flag = drain_flag_for(live_map);
    if on == is_drained(live_map) {
        return Ok(false);
    }
    if on {
        let temp = PathBuf::from(format!("{}.{}.tmp", flag.display(), std::process::id()));
        let _ = fs::remove_file(&temp);
        let written = crate::files::write_new(&temp, note.as_bytes(), 0o644)
            .and_then(|()| fs::rename(&temp, &flag));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map(|()| true)
    } else {
        match fs::remove_file(&flag) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_reads_back_and_nothing_else_does() {
        for health in [HostHealth::Up, HostHealth::Drain, HostHealth::Down] {
            assert_eq!(HostHealth::parse(health.as_str()), Some(health));
        }
        for word in ["", "UP", "3001", "up ", "drained"] {
            assert_eq!(HostHealth::parse(word), None, "{word:?}");
        }
    }

    #[test]
    fn the_flag_lives_next_to_the_map_and_only_a_regular_file_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let map = dir.path().join("live.map");
        assert_eq!(drain_flag_for(&map), dir.path().join("live.map.drain"));
        assert!(!is_drained(&map));
        assert!(set_drained(&map, true, "test\n").expect("on"));
        assert!(is_drained(&map));
        assert!(!set_drained(&map, true, "again\n").expect("on again"));
        assert_eq!(
            fs::read_to_string(drain_flag_for(&map)).expect("read"),
            "test\n"
        );
        assert!(set_drained(&map, false, "").expect("off"));
        assert!(!is_drained(&map));
        assert!(!set_drained(&map, false, "").expect("off again"));
        std::os::unix::fs::symlink("/etc/hostname", drain_flag_for(&map)).expect("symlink");
        assert!(!is_drained(&map), "a symlink is not the flag");
    }
}
