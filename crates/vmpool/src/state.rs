//! The pool's state as the live map's writer knows it, for people and tools:
//! `LIVE_MAP.json` next to the live map, rewritten (temp file + rename)
//! whenever it changes, read by `server-map status`. What the live map
//! cannot say: which VMs are hung and since when (they are out of the map),
//! which asked to drain, and how often each port's VM was launched or
//! stopped for hanging.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolState {
    /// The launcher that writes the live map.
    pub writer_pid: u32,
    /// One entry per port of the pool.
    pub ports: Vec<PortState>,
}

/// One port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortState {
    /// The port.
    pub port: u16,
    /// A socket of the VM's user listens on it.
    pub listening: bool,
    /// Its server names are in the live map.
    pub in_map: bool,
    /// Hung: work waits for it and it takes none.
    pub hung: Option<Hung>,
    /// Its VM asked to drain (DYING on the health path).
    pub draining: bool,
    /// VMs launched on it by the writer's launcher since it started.
    pub launches: u64,
    /// Hung VMs stopped on it by the writer since it started.
    pub hung_kills: u64,
    /// A socket that is not the VM's holds the port: its owner's uid.
    #[serde(default)]
    pub taken_by_uid: Option<u32>,
}

/// The evidence of a hang.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hung {
    /// When work started to wait untaken, in seconds since the epoch.
    pub since_unix_s: u64,
    /// Connections in its accept queue.
    pub accept_queue: u32,
    /// Unread bytes on its connections.
    pub unread_bytes: u64,
}

/// `LIVE_MAP.json` for the live map at `live_map`.
pub fn path_for(live_map: &Path) -> PathBuf {
    let mut name = live_map.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

impl PoolState {
    /// Writes the state next to the live map (temp file, rename).
    pub fn write(&self, live_map: &Path) -> io::Result<()> {
        let path = path_for(live_map);
        let temp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
        let _ = fs::remove_file(&temp);
        let text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        let written = crate::files::write_new(&temp, text.as_bytes(), 0o644)
            .and_then(|()| fs::rename(&temp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Reads the state next to the live map; `Ok(None)` if there is none.
    pub fn read(live_map: &Path) -> io::Result<Option<PoolState>> {
        match fs::read(path_for(live_map)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_next_to_its_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let map = dir.path().join("live.map");
        assert_eq!(PoolState::read(&map).expect("read"), None);
        let state = PoolState {
            writer_pid: 42,
            ports: vec![PortState {
                port: 3001,
                listening: true,
                hung: Some(Hung {
                    since_unix_s: 1_796_000_000,
                    accept_queue: 3,
                    unread_bytes: 120,
                }),
                hung_kills: 1,
                ..PortState::default()
            }],
        };
        state.write(&map).expect("write");
        assert_eq!(PoolState::read(&map).expect("read"), Some(state));
        assert_eq!(path_for(&map), dir.path().join("live.map.json"));
    }
}
