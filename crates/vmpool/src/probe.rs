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

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::listen_table::ListenTable;

/// Connects to `addr` within `timeout`; true if the connection was accepted
/// by the kernel on behalf of a listening socket.
pub fn connect_probe(addr: SocketAddr, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&addr, timeout).is_ok()
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

/// Answers "is anything listening on this address?" with a fixed method and
/// timeout, keeping the netlink socket open between questions.
#[derive(Debug)]
pub struct Prober {
    method: ProbeMethod,
    timeout: Duration,
    table: Option<ListenTable>,
}

impl Prober {
    /// A prober. With [`ProbeMethod::ListenTable`], the netlink socket is
    /// opened now; if that fails the prober connects instead, and says so.
    pub fn new(method: ProbeMethod, timeout: Duration) -> Prober {
        let table = match method {
            ProbeMethod::Connect => None,
            ProbeMethod::ListenTable => match ListenTable::open() {
                Ok(table) => Some(table),
                Err(e) => {
                    tracing::warn!(
                        "cannot read the listening-socket table ({e}); probing by connecting"
                    );
                    None
                }
            },
        };
        Prober {
            method,
            timeout,
            table,
        }
    }

    /// The method asked for.
    pub fn method(&self) -> ProbeMethod {
        self.method
    }

    /// The connect timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// True if `addr` is listening.
    pub fn is_listening(&mut self, addr: SocketAddr) -> bool {
        self.is_listening_until(addr, Instant::now() + self.timeout)
    }

    /// True if `addr` is listening; a connect gives up at `deadline` (or
    /// after the prober's timeout, whichever comes first).
    pub fn is_listening_until(&mut self, addr: SocketAddr, deadline: Instant) -> bool {
        if addr.ip().is_loopback()
            && let Some(table) = self.table.as_mut()
        {
            match table.is_listening(addr) {
                Ok(listening) => return listening,
                Err(e) => {
                    tracing::warn!(
                        "listening-socket table failed ({e}); probing by connecting from now on"
                    );
                    self.table = None;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        !left.is_zero() && connect_probe(addr, left.min(self.timeout))
    }
}
