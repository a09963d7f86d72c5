//! Sessions a new map would orphan: the servers of the map in place whose VM
//! listens and which the new map drops (or sends to another port).
//!
//! A session's cookie names its server (`server=app3001`) and the map turns
//! the name into the port of the VM that holds the session's state. A new
//! balance.conf without that name (or with another port for it) leaves the
//! session no route to its VM while the VM still serves: the user is sent to
//! another VM and loses the session. `server-map switch` refuses such a file
//! unless `--force`, `server-map check NEW --against CURRENT` shows the same
//! beforehand, and a running map that loads one (a `cp`) logs one warning
//! ([`OrphanWatch`]).
//!
//! "Listens" is asked of the kernel's table of listening sockets on
//! 127.0.0.1 (one exact lookup per server dropped, see
//! `vmpool::listen_table`), so no VM sees a connection.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use vmpool::{ProbeMethod, Prober};

use crate::mapfile::{MapFile, Value};
use crate::reload::ReloadingMap;

/// How long a connect probe may take when the kernel's table cannot be
/// read: a VM's port on loopback answers at once or never.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// A server whose sessions the new map leaves without a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The server's name (`app3001`): the cookie its sessions carry.
    pub name: String,
    /// The port its VM listens on.
    pub port: u16,
    /// The port the new map gives the name instead, if any.
    pub moved_to: Option<u16>,
}

impl fmt::Display for Orphan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.moved_to {
            None => write!(f, "{} (port {})", self.name, self.port),
            Some(to) => write!(f, "{} (port {}, now {to})", self.name, self.port),
        }
    }
}

/// A prober for [`orphans`]: the kernel's table, a connect where it fails.
pub fn prober() -> Prober {
    Prober::new(ProbeMethod::ListenTable, PROBE_TIMEOUT)
}

/// The servers of `old` whose VM listens (asked of `prober`) and whose name
/// `new` drops or maps to another port, in `old`'s order.
pub fn orphans(old: &MapFile, new: &MapFile, prober: &mut Prober) -> Vec<Orphan> {
    old.servers()
        .filter_map(|(name, port)| {
            let now = new.get(name).map(Value::port);
            if now == Some(Some(port)) {
                return None;
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            prober.is_listening(addr).then(|| Orphan {
                name: name.to_owned(),
                port,
                moved_to: now.flatten(),
            })
        })
        .collect()
}

/// `app3001 (port 3001), app3002 (port 3002, now 3006)`.
pub fn list(orphans: &[Orphan]) -> String {
    orphans
        .iter()
        .map(Orphan::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Follows a [`ReloadingMap`] and logs one warning for each map it loads
/// that orphans the sessions of listening VMs. Costs one comparison per
/// lookup; the ports are probed only when a reload drops or moves a name.
#[derive(Debug)]
pub struct OrphanWatch {
    loads: u64,
    last: MapFile,
    prober: Option<Prober>,
}

impl OrphanWatch {
    /// Watches `map` from the map it serves now.
    pub fn new(map: &ReloadingMap) -> OrphanWatch {
        OrphanWatch {
            loads: map.loads(),
            last: map.served().clone(),
            prober: None,
        }
    }

    /// The map to answer from ([`ReloadingMap::current`]), after a warning
    /// if it is a new one that orphans sessions.
    pub fn current<'m>(&mut self, map: &'m mut ReloadingMap) -> &'m MapFile {
        map.current();
        if map.loads() != self.loads {
            self.loads = map.loads();
            let next = map.served();
            let dropped = self
                .last
                .servers()
                .any(|(name, port)| next.get(name).and_then(Value::port) != Some(port));
            if dropped {
                let prober = self.prober.get_or_insert_with(prober);
                let found = orphans(&self.last, next, prober);
                if !found.is_empty() {
                    tracing::warn!(
                        "{}: the new map no longer routes {}, whose VMs listen: \
                         their sessions have lost their route (`server-map switch` \
                         refuses such a file without --force)",
                        map.name(),
                        list(&found)
                    );
                }
            }
            self.last = next.clone();
        }
        map.served()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_listening_server_dropped_or_moved_is_an_orphan_and_nothing_else_is() {
        let vm = TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (up, kept) = (
            vm.local_addr().expect("addr").port(),
            other.local_addr().expect("addr").port(),
        );
        let down = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let old =
            MapFile::parse(format!("appA {up}\nappB {kept}\nappC {down}\nALL {up}\n").as_bytes())
                .expect("old");
        let mut prober = prober();
        let dropped = MapFile::parse(format!("appB {kept}\nALL {kept}\n").as_bytes()).expect("new");
        let found = orphans(&old, &dropped, &mut prober);
        assert_eq!(
            found,
            [Orphan {
                name: "appA".into(),
                port: up,
                moved_to: None
            }]
        );
        assert_eq!(list(&found), format!("appA (port {up})"));
        let moved = MapFile::parse(format!("appA {kept}\nappB {kept}\nALL {kept}\n").as_bytes())
            .expect("new");
        assert_eq!(
            list(&orphans(&old, &moved, &mut prober)),
            format!("appA (port {up}, now {kept})")
        );
        assert!(orphans(&old, &old, &mut prober).is_empty());
        drop(vm);
        assert!(
            orphans(&old, &dropped, &mut prober).is_empty(),
            "its VM is gone"
        );
    }
}
