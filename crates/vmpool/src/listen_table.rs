//! The kernel's table of listening TCP sockets, read through netlink
//! `sock_diag`: is anything listening on a local port, without connecting
//! to it (so the VM behind it sees nothing).
//!
//! One `SOCK_DIAG_BY_FAMILY` dump of TCP sockets in `LISTEN` state per
//! address family; messages are built and parsed by hand from the layouts in
//! `linux/inet_diag.h` and `linux/netlink.h` (all fields in host byte order
//! but the ports and addresses, which are in network order).
//!
//! What this cannot tell: whether the process behind the socket still calls
//! `accept` (a hung VM keeps its listening socket), and anything about other
//! hosts or other network namespaces. See `docs/benchmarks.md` for the
//! measured comparison with a TCP connect.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_REQ_V2_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_SKV6ONLY: u16 = 11;
const IPPROTO_TCP: u8 = 6;
const TCP_LISTEN: u32 = 10;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// One listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// The address it is bound to (`0.0.0.0`/`::` for any).
    pub addr: SocketAddr,
    /// Connections waiting in its accept queue.
    pub accept_queue: u32,
    /// The most the accept queue holds (the `listen` backlog).
    pub backlog: u32,
    /// For IPv6 sockets: `IPV6_V6ONLY` (a `::` socket without it takes IPv4).
    pub v6only: bool,
    /// The socket's inode: `/proc/PID/fd/N` of its owner links to
    /// `socket:[inode]`.
    pub inode: u32,
}

impl Listener {
    /// True if a connection to `target` would reach this socket.
    pub fn serves(&self, target: SocketAddr) -> bool {
        if self.addr.port() != target.port() {
            return false;
        }
        match (self.addr.ip(), target.ip()) {
            (IpAddr::V4(bound), IpAddr::V4(want)) => bound == want || bound.is_unspecified(),
            (IpAddr::V6(bound), IpAddr::V6(want)) => bound == want || bound.is_unspecified(),
            (IpAddr::V6(bound), IpAddr::V4(want)) => {
                !self.v6only && (bound.is_unspecified() || bound == want.to_ipv6_mapped())
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

/// An open `NETLINK_SOCK_DIAG` socket, reused for every query.
#[derive(Debug)]
pub struct ListenTable {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl ListenTable {
    /// Opens the netlink socket. Fails where sock_diag is not available
    /// (some sandboxes) or not allowed.
    pub fn open() -> io::Result<ListenTable> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        // The kernel answers at once; the timeout only bounds the unexpected.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 500_000))?;
        Ok(ListenTable {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// True if a listening socket would take a connection to `target`.
    pub fn is_listening(&mut self, target: SocketAddr) -> io::Result<bool> {
        let mut found = false;
        // A v4 target can be served by a v6 `::` socket, so both families
        // may have to be asked; v4 first, where VMs usually listen.
        let families: &[u8] = match target {
            SocketAddr::V4(_) => &[AF_INET, AF_INET6],
            SocketAddr::V6(_) => &[AF_INET6],
        };
        for &family in families {
            self.dump(family, target.port(), |listener| {
                found |= listener.serves(target);
            })?;
            if found {
                break;
            }
        }
        Ok(found)
    }

    /// Every listening TCP socket of `family` (`AF_INET`/`AF_INET6`), or
    /// only those on `port` when it is not 0.
    pub fn listeners(&mut self, port: u16) -> io::Result<Vec<Listener>> {
        let mut all = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, port, |listener| all.push(listener))?;
        }
        Ok(all)
    }

    fn dump(&mut self, family: u8, port: u16, mut each: impl FnMut(Listener)) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let request = dump_request(family, self.seq, port);
        let to = NetlinkAddr::new(0, 0);
        retry_eintr(|| sendto(self.fd.as_raw_fd(), &request, &to, MsgFlags::empty()))?;
        loop {
            let n = retry_eintr(|| recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()))?;
            if n == 0 {
                return Err(io::Error::other("sock_diag: empty netlink reply"));
            }
            let mut rest = &self.buf[..n];
            while rest.len() >= NLMSG_HDR_LEN {
                let len = u32_at(rest, 0) as usize;
                if len < NLMSG_HDR_LEN || len > rest.len() {
                    return Err(io::Error::other("sock_diag: malformed netlink message"));
                }
                let kind = u16_at(rest, 4);
                let seq = u32_at(rest, 8);
                let body = &rest[NLMSG_HDR_LEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                if seq != self.seq {
                    continue; // left over from an earlier, abandoned dump
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = body.get(..4).map_or(0, |b| i32_at(b, 0));
                        return Err(if errno < 0 {
                            io::Error::from_raw_os_error(-errno)
                        } else {
                            io::Error::other("sock_diag: netlink error")
                        });
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some(listener) = parse_listener(body)
                            && (port == 0 || listener.addr.port() == port)
                        {
                            each(listener);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `nlmsghdr` + `inet_diag_req_v2`: dump TCP sockets in LISTEN state.
/// Connects to the listener on `addr` until its accept queue is full, as the
/// kernel's table reports it, and returns the connections (keep them, or the
/// queue empties). The listener then stands for a VM too busy to accept: a
/// connect probe reads it as closed, the table as listening. For tests and
/// benchmarks; it fails after 10,000 connections.
pub fn fill_accept_queue(addr: SocketAddr) -> io::Result<Vec<std::net::TcpStream>> {
    let mut table = ListenTable::open()?;
    let mut queued = Vec::new();
    while queued.len() < 10_000 {
        let listeners = table.listeners(addr.port())?;
        let listener = listeners.iter().find(|l| l.serves(addr)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("nothing listens on {addr}"),
            )
        })?;
        if listener.accept_queue > listener.backlog {
            return Ok(queued);
        }
        if let Ok(stream) =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
        {
            queued.push(stream);
        }
    }
    Err(io::Error::other(format!(
        "the accept queue of {addr} never filled"
    )))
}

/// With `port` set (not 0), the kernel only reports listeners on that
/// port: the cost of a probe no longer grows with every listening socket of
/// the host (measured: 2.1 ms for 3000 listeners without it, 0.15 ms with).
fn dump_request(family: u8, seq: u32, port: u16) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    msg.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    msg.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // inet_diag_sockid: idiag_sport (network order) filters; the rest is
    // zero for a dump.
    msg.extend_from_slice(&port.to_be_bytes());
    msg.resize(len, 0);
    msg
}

/// `inet_diag_msg` and its attributes -> a listener.
fn parse_listener(body: &[u8]) -> Option<Listener> {
    if body.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let port = u16::from_be_bytes([body[4], body[5]]);
    let src = &body[8..24];
    let ip = match body[0] {
        AF_INET => IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3])),
        AF_INET6 => {
            let octets: [u8; 16] = src.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    let mut v6only = false;
    let mut attrs = &body[INET_DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0));
        if len < 4 || len > attrs.len() {
            break;
        }
        if u16_at(attrs, 2) == INET_DIAG_SKV6ONLY && len > 4 {
            v6only = attrs[4] != 0;
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(Listener {
        addr: SocketAddr::new(ip, port),
        accept_queue: u32_at(body, 56),
        backlog: u32_at(body, 60),
        v6only,
        inode: u32_at(body, 68),
    })
}

/// A signal (SIGTERM is installed without `SA_RESTART`) must not read as a
/// failure of the table.
fn retry_eintr<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn i32_at(bytes: &[u8], at: usize) -> i32 {
    u32_at(bytes, at) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_listening_loopback_port_is_in_the_table_and_a_closed_one_is_not() {
        let Ok(mut table) = ListenTable::open() else {
            eprintln!("sock_diag not available here; skipping");
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert!(table.is_listening(addr).expect("query"));
        drop(listener);
        assert!(!table.is_listening(addr).expect("query"));
    }

    #[test]
    fn the_accept_queue_is_reported() {
        let Ok(mut table) = ListenTable::open() else {
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _waiting = std::net::TcpStream::connect(addr).expect("connect");
        let found = table.listeners(addr.port()).expect("query");
        let ours = found.iter().find(|l| l.addr == addr).expect("listed");
        assert_eq!(ours.accept_queue, 1);
        assert!(ours.backlog >= 1);
    }

    #[test]
    fn wildcard_and_v6_matching() {
        let any4 = Listener {
            addr: "0.0.0.0:80".parse().expect("addr"),
            accept_queue: 0,
            backlog: 1,
            v6only: false,
            inode: 0,
        };
        assert!(any4.serves("127.0.0.1:80".parse().expect("addr")));
        assert!(!any4.serves("127.0.0.1:81".parse().expect("addr")));
        assert!(!any4.serves("[::1]:80".parse().expect("addr")));
        let any6 = Listener {
            addr: "[::]:80".parse().expect("addr"),
            ..any4
        };
        assert!(any6.serves("127.0.0.1:80".parse().expect("addr")));
        assert!(any6.serves("[::1]:80".parse().expect("addr")));
        let only6 = Listener {
            v6only: true,
            ..any6
        };
        assert!(!only6.serves("127.0.0.1:80".parse().expect("addr")));
        let other = Listener {
            addr: "127.0.0.2:80".parse().expect("addr"),
            ..any4
        };
        assert!(!other.serves("127.0.0.1:80".parse().expect("addr")));
    }
}
