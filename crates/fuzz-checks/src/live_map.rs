//! The launcher's live map: any map the writer can produce, written as the
//! file Apache reads (header included, whatever the map's path), reads back
//! as the same map, through the same parser that reads balance.conf.
//!
//! The writer's maps: servers named as balance.conf can name them (a key
//! the map-file parser reads back as that key, other than `ALL` and the
//! map's own `DRAINING` and `HOST`, each once), ports 1 to 65535, `ALL`
//! either absent or listing at least one port, any draining ports and any
//! host health. Inputs that describe anything else are skipped.
//!
//! Input: the map's path, then for each server a name and a port, then
//! `ALL`'s ports, the draining ports and the host's health.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use image_launcher::livemap::{LiveMap, is_reserved};
use server_map::{ALL, MapFile};
use vmpool::HostHealth;

use crate::input::Input;

/// Checks the round trip on `data` (see the module doc).
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let path = Path::new(OsStr::from_bytes(input.chunk(80)));
    let mut servers = Vec::new();
    for _ in 0..input.u8() % 16 {
        let name = String::from_utf8_lossy(input.chunk(24)).into_owned();
        servers.push((name, input.u16()));
    }
    let all = input
        .bool()
        .then(|| (0..input.u8() % 16).map(|_| input.u16()).collect());
    let draining = (0..input.u8() % 8).map(|_| input.u16()).collect();
    let host = match input.u8() % 4 {
        0 => None,
        1 => Some(HostHealth::Up),
        2 => Some(HostHealth::Drain),
        _ => Some(HostHealth::Down),
    };
    let map = LiveMap {
        servers,
        all,
        draining,
        host,
    };
    if !writable(&map) {
        return;
    }
    let text = map.file_text(path);
    assert_eq!(LiveMap::parse(text.as_bytes()), map, "{text:?}");
    let entries = map.render();
    assert_eq!(LiveMap::parse(entries.as_bytes()), map, "{entries:?}");
}

/// A map the launcher's writer could produce (see the module doc).
fn writable(map: &LiveMap) -> bool {
    let mut names = std::collections::HashSet::new();
    let servers_ok = map.servers.iter().all(|(name, port)| {
        *port != 0 && !is_reserved(name) && is_map_key(name) && names.insert(name)
    });
    let all_ok = map
        .all
        .as_ref()
        .is_none_or(|ports| !ports.is_empty() && !ports.contains(&0));
    servers_ok && all_ok && !map.draining.contains(&0)
}

/// A name that balance.conf can hold as a server's key: the map-file parser
/// reads `NAME 1` back as that name.
fn is_map_key(name: &str) -> bool {
    name != ALL
        && MapFile::parse(format!("{name} 1\n").as_bytes())
            .is_ok_and(|map| map.servers().map(|(key, _)| key).eq([name]))
}
