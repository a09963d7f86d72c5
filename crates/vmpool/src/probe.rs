//! Is a VM listening? The one probe every program of the pool uses.
//!
//! Two ways to ask, measured side by side in `docs/benchmarks.md`:
//! - [`ProbeMethod::ListenTable`] (the default): a lookup in the kernel's
//!   table of listening sockets ([`crate::listen_table`]) for loopback
//!   targets. It tells the truth about a VM that is up: a VM whose socket
//!   listens is up, even when it is too busy to accept at this instant, and
//!   it costs the VM nothing.
//! - [`ProbeMethod::Connect`]: a TCP connect with a timeout, then close. It
//!   takes the path the proxied request will take, but every probe is a
//!   connection the VM must accept, and a busy single-threaded VM whose
//!   accept queue is full looks dead: the SYN is dropped and retried only
//!   after 1 s, past the timeout. Measured: 3 false "closed" in a million
//!   probes of a healthy listener, which would cost a session each (or, in a
//!   launcher, a healthy VM).
//!
//! Other hosts, and hosts where sock_diag is unavailable, are always probed
//! by connecting.
//!
//! A port is the VM's only if its listener is: a prober given an owner
//! ([`Prober::owned_by`]) counts a listener of any other user as a
//! [`Found::Stranger`], never as up. (A connect cannot tell who listens; the
//! owner is checked wherever the table is read.)

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::listen_table::{ListenTable, Listener};

/// Connects to `addr` within `timeout`; true if the connection was accepted
/// by the kernel on behalf of a listening socket.
///
/// A connection whose two ends are the same address is not a listener: on
/// a port of the ephemeral range, the kernel may pick that very port as the
/// source and connect the socket to itself (TCP simultaneous open).
pub fn connect_probe(addr: SocketAddr, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&addr, timeout).is_ok_and(|s| s.local_addr().ok() != Some(addr))
}

/// How a [`Prober`] learns that a port is listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeMethod {
    /// A TCP connect.
    Connect,
    /// The kernel's listening-socket table, for loopback targets.
    #[default]
    ListenTable,
}

impl FromStr for ProbeMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "connect" => Ok(ProbeMethod::Connect),
            "listen-table" => Ok(ProbeMethod::ListenTable),
            other => Err(format!(
                "unknown probe {other:?}: use connect or listen-table"
            )),
        }
    }
}

impl fmt::Display for ProbeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeMethod::Connect => "connect",
            ProbeMethod::ListenTable => "listen-table",
        })
    }
}

/// What a probe found on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A listener of the expected owner (or of anyone, without one), or a
    /// connect that succeeded.
    Up,
    /// A listener of another user: not the VM, never routed to.
    Stranger {
        /// The listener's owner.
        uid: u32,
    },
    /// Nothing listens.
    Down,
}

/// Answers "is the VM listening on this address?" with a fixed method and
/// timeout, keeping the netlink socket open between questions.
#[derive(Debug)]
pub struct Prober {
    timeout: Duration,
    table: Option<ListenTable>,
    /// After a failure of the table: when to try opening it again.
    reopen_at: Option<Instant>,
    /// The only user whose listeners count.
    owner: Option<u32>,
}

/// How long a prober connects instead after the table failed, before it
/// tries the table again.
const REOPEN_AFTER: Duration = Duration::from_secs(30);

impl Prober {
    /// A prober. With [`ProbeMethod::ListenTable`], the netlink socket is
    /// opened now; if that fails the prober connects instead, says so, and
    /// tries the table again later.
    pub fn new(method: ProbeMethod, timeout: Duration) -> Prober {
        let mut prober = Prober {
            timeout,
            table: None,
            reopen_at: None,
            owner: None,
        };
        if method == ProbeMethod::ListenTable {
            prober.open_table();
        }
        prober
    }

    /// Counts only listeners of `uid` (none: anyone's).
    pub fn owned_by(mut self, uid: Option<u32>) -> Prober {
        self.owner = uid;
        self
    }

    fn open_table(&mut self) {
        match ListenTable::open() {
            Ok(table) => {
                self.table = Some(table);
                self.reopen_at = None;
            }
            Err(e) => self.table_failed(&e),
        }
    }

    fn table_failed(&mut self, e: &std::io::Error) {
        tracing::warn!(
            "cannot read the listening-socket table ({e}); probing by connecting for {REOPEN_AFTER:?}"
        );
        self.table = None;
        self.reopen_at = Some(Instant::now() + REOPEN_AFTER);
    }

    /// The table, if the method uses it and it works (reopened after a
    /// failure once [`REOPEN_AFTER`] has passed).
    fn table(&mut self) -> Option<&mut ListenTable> {
        if self.table.is_none() && self.reopen_at.is_some_and(|at| Instant::now() >= at) {
            self.open_table();
        }
        self.table.as_mut()
    }

    /// The connect timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// True if the VM listens on `addr` (a stranger's listener is not it).
    pub fn is_listening(&mut self, addr: SocketAddr) -> bool {
        self.find(addr) == Found::Up
    }

    /// What listens on `addr`.
    pub fn find(&mut self, addr: SocketAddr) -> Found {
        self.find_until(addr, Instant::now() + self.timeout)
    }

    /// True if the VM listens on `addr`; a connect gives up at `deadline`
    /// (or after the prober's timeout, whichever comes first).
    pub fn is_listening_until(&mut self, addr: SocketAddr, deadline: Instant) -> bool {
        self.find_until(addr, deadline) == Found::Up
    }

    fn find_until(&mut self, addr: SocketAddr, deadline: Instant) -> Found {
        if addr.ip().is_loopback()
            && let Some(table) = self.table()
        {
            match table.listener_for(addr) {
                Ok(listener) => return self.judge(listener),
                Err(e) => self.table_failed(&e),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() && connect_probe(addr, left.min(self.timeout)) {
            Found::Up
        } else {
            Found::Down
        }
    }

    fn judge(&self, listener: Option<Listener>) -> Found {
        match (listener, self.owner) {
            (None, _) => Found::Down,
            (Some(l), Some(owner)) if l.uid != owner => Found::Stranger { uid: l.uid },
            (Some(_), _) => Found::Up,
        }
    }

    /// The VM's listener on `addr` from the kernel's table (its queue), if
    /// the table can be read and the listener has the right owner. Asked of
    /// the table even by a connect prober: a VM whose accept queue is full
    /// fails a connect, and only the table tells that it is busy, not dead.
    pub fn listener(&mut self, addr: SocketAddr) -> Option<Listener> {
        let found = match self.table() {
            Some(table) => table.listener_for(addr),
            None => ListenTable::open().ok()?.listener_for(addr),
        };
        match found {
            Ok(Some(l)) if self.owner.is_none_or(|owner| owner == l.uid) => Some(l),
            Ok(_) => None,
            Err(e) => {
                self.table_failed(&e);
                None
            }
        }
    }

    /// Which of `ports` the VM listens on at 127.0.0.1: one exact lookup
    /// each in the table (its cost does not grow with the host's other
    /// listeners), or one connect each.
    pub fn listening_ports(&mut self, ports: &[u16]) -> Vec<u16> {
        let host = std::net::Ipv4Addr::LOCALHOST;
        ports
            .iter()
            .copied()
            .filter(|&p| self.is_listening(SocketAddr::new(host.into(), p)))
            .collect()
    }
}
