//! Which address a key names, and whether this map may probe it: the host
//! allow-list and the optional port spec.
//!
//! Keys: `3001` (127.0.0.1), `HOST:PORT`, `[V6]:PORT`. The hosts localhost,
//! 127.0.0.1 and ::1 are always allowed; `--allow-host` adds more. Anything
//! else is a [`BadKey`], answered `closed` before any connection is tried.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use rewritemap::BadKey;
use vmpool::{PortSpec, parse_port};

/// The hosts and ports this map may probe.
#[derive(Debug)]
pub struct Targets {
    /// Allowed host names (lowercase) and what they resolved to at start.
    names: Vec<(String, Vec<IpAddr>)>,
    /// Allowed addresses: the literals and everything the names resolved to.
    addrs: Vec<IpAddr>,
    ports: Option<PortSpec>,
}

impl Targets {
    /// The built-in loopback hosts plus `extra` (IP literals, with or without
    /// brackets, or names resolved once, now: a DNS lookup must never sit on
    /// the path of a request). A name that does not resolve is kept, with a
    /// warning, and its keys are answered `closed`.
    pub fn new(extra: &[String], ports: Option<PortSpec>) -> Targets {
        let mut targets = Targets {
            names: vec![(
                "localhost".to_owned(),
                vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
            )],
            addrs: vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
            ports,
        };
        for host in extra {
            targets.allow(host);
        }
        targets
    }

    fn allow(&mut self, host: &str) {
        let host = host.trim();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.addrs.push(ip);
            return;
        }
        let name = host.to_ascii_lowercase();
        let resolved: Vec<IpAddr> = match (name.as_str(), 0).to_socket_addrs() {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(e) => {
                tracing::warn!(
                    "--allow-host {host}: cannot resolve ({e}); its keys will be answered closed"
                );
                Vec::new()
            }
        };
        self.addrs.extend(&resolved);
        self.names.push((name, resolved));
    }

    /// The addresses to probe for `key`, in order, or why the key is refused.
    pub fn resolve(&self, key: &str) -> Result<Vec<SocketAddr>, BadKey> {
        if let Some(port) = parse_port(key) {
            return Ok(vec![SocketAddr::new(
                Ipv4Addr::LOCALHOST.into(),
                self.check_port(port)?,
            )]);
        }
        let (host, port) = split_host_port(key)?;
        let port = self.check_port(port)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !self.addrs.contains(&ip) {
                return Err(BadKey::new(format!(
                    "host {ip} is not allowed (see --allow-host)"
                )));
            }
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let lower = host.to_ascii_lowercase();
        match self.names.iter().find(|(name, _)| *name == lower) {
            Some((_, ips)) => Ok(ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect()),
            None => Err(BadKey::new(format!(
                "host {host:?} is not allowed (see --allow-host)"
            ))),
        }
    }

    fn check_port(&self, port: u16) -> Result<u16, BadKey> {
        match &self.ports {
            Some(spec) if !spec.contains(port) => {
                Err(BadKey::new(format!("port {port} is not in --ports {spec}")))
            }
            _ => Ok(port),
        }
    }
}

/// `HOST:PORT` or `[V6]:PORT` -> (host, port). An IPv6 address must be in
/// brackets, or its colons would be ambiguous.
fn split_host_port(key: &str) -> Result<(&str, u16), BadKey> {
    let bad = || BadKey::new("not a port, HOST:PORT or [V6]:PORT");
    let (host, port) = if let Some(rest) = key.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':').ok_or_else(bad)?)
    } else {
        let (host, port) = key.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    let port = parse_port(port)
        .ok_or_else(|| BadKey::new(format!("{port:?} is not a port from 1 to 65535")))?;
    let plausible = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    if !plausible {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn a_bare_port_is_on_ipv4_loopback() {
        let t = Targets::new(&[], None);
        assert_eq!(t.resolve("3001").expect("ok"), [addr("127.0.0.1:3001")]);
    }

    #[test]
    fn loopback_hosts_are_always_allowed() {
        let t = Targets::new(&[], None);
        assert_eq!(
            t.resolve("127.0.0.1:3001").expect("ok"),
            [addr("127.0.0.1:3001")]
        );
        assert_eq!(t.resolve("[::1]:3001").expect("ok"), [addr("[::1]:3001")]);
        assert_eq!(
            t.resolve("LocalHost:3001").expect("ok"),
            [addr("127.0.0.1:3001"), addr("[::1]:3001")]
        );
    }

    #[test]
    fn other_hosts_need_allow_host() {
        let t = Targets::new(&[], None);
        for key in [
            "10.0.0.7:3001",
            "[fe80::1]:3001",
            "example.com:80",
            "127.0.0.2:3001",
        ] {
            assert!(t.resolve(key).is_err(), "{key}");
        }
        let t = Targets::new(&["10.0.0.7".into(), "[fe80::1]".into()], None);
        assert_eq!(
            t.resolve("10.0.0.7:3001").expect("ok"),
            [addr("10.0.0.7:3001")]
        );
        assert_eq!(
            t.resolve("[fe80::1]:3001").expect("ok"),
            [addr("[fe80::1]:3001")]
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        let t = Targets::new(&[], None);
        for key in [
            "0",
            "65536",
            "+3001",
            "-3001",
            "30 01",
            "3001;rm",
            "$(id)",
            "`id`",
            "a|b",
            "::1:3001",
            "[::1]3001",
            "[::1]:",
            "localhost:",
            ":3001",
            "localhost:0",
            "localhost:99999",
            "local host:3001",
            "3001|3002",
            "open3001",
        ] {
            assert!(t.resolve(key).is_err(), "{key:?} must be refused");
        }
    }

    #[test]
    fn ports_outside_the_spec_are_refused() {
        let t = Targets::new(&[], Some(PortSpec::parse("3001-3010").expect("spec")));
        assert!(t.resolve("3005").is_ok());
        assert!(t.resolve("22").is_err());
        assert!(t.resolve("localhost:22").is_err());
    }
}
