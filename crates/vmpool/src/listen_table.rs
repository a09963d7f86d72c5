//! The kernel's table of TCP sockets, read through netlink `sock_diag`:
//! which socket would take a connection to a local port, whose it is and
//! how full its accept queue is, without connecting to it (so the VM behind
//! it sees nothing).
//!
//! Two questions, both answered by the kernel:
//! - [`ListenTable::listener_for`]: an exact lookup (`SOCK_DIAG_BY_FAMILY`
//!   without `NLM_F_DUMP`). The kernel finds the socket with the same hashed
//!   lookup that routes an incoming connection, so the answer is the one
//!   socket that would take a connection to the address (a dual-stack `::`
//!   socket for a v4 address included), and its cost does not grow with the
//!   host's other listeners (measured: 6 µs with 20,000 foreign listeners,
//!   where a dump of the table took 1 ms).
//! - [`ListenTable::listeners`]: a dump of the listening sockets on a port,
//!   for the status view and the tests.
//!
//! Messages are built and parsed by hand from the layouts in
//! `linux/inet_diag.h` and `linux/netlink.h` (all fields in host byte order
//! but the ports and addresses, which are in network order); the parsing is
//! pure ([`parse_datagram`]) so that it can be fuzzed.
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
const INET_DIAG_NOCOOKIE: u32 = !0;
const IPPROTO_TCP: u8 = 6;
const TCP_LISTEN: u8 = 10;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ENOENT: i32 = 2;

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
    /// The user that created the socket: a pool port counts as the VM's only
    /// when its listener belongs to the VM's user.
    pub uid: u32,
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
        Ok(self.listener_for(target)?.is_some())
    }

    /// The listening socket that would take a connection to `target`, by
    /// the kernel's own lookup (see the module doc); `None` if there is none.
    pub fn listener_for(&mut self, target: SocketAddr) -> io::Result<Option<Listener>> {
        self.seq = self.seq.wrapping_add(1);
        let request = exact_request(target, self.seq);
        self.send(&request)?;
        let mut found = None;
        self.receive(|listener| found = Some(listener))?;
        Ok(found.filter(|l| l.addr.port() == target.port()))
    }

    /// Every listening TCP socket, or only those on `port` when it is not 0.
    pub fn listeners(&mut self, port: u16) -> io::Result<Vec<Listener>> {
        let mut all = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.seq = self.seq.wrapping_add(1);
            let request = dump_request(family, self.seq, port);
            self.send(&request)?;
            self.receive(|listener| {
                if port == 0 || listener.addr.port() == port {
                    all.push(listener);
                }
            })?;
        }
        Ok(all)
    }

    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        let to = NetlinkAddr::new(0, 0);
        retry_eintr(|| sendto(self.fd.as_raw_fd(), request, &to, MsgFlags::empty()))?;
        Ok(())
    }

    /// Reads datagrams until the answer to the current request is complete.
    fn receive(&mut self, mut each: impl FnMut(Listener)) -> io::Result<()> {
        loop {
            let n = retry_eintr(|| recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()))?;
            if n == 0 {
                return Err(io::Error::other("sock_diag: empty netlink reply"));
            }
            match parse_datagram(&self.buf[..n], self.seq, &mut each)? {
                Reply::Done => return Ok(()),
                Reply::More => {}
            }
        }
    }
}

/// Where a reply stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The answer is complete.
    Done,
    /// More datagrams follow (a dump in progress, or nothing of ours yet).
    More,
}

/// Parses one netlink datagram of a sock_diag reply to request `seq`: each
/// listening socket in it goes to `each`. An exact lookup's reply is one
/// message (a socket, or the error `ENOENT` for none); a dump ends with
/// `NLMSG_DONE`. Messages of other sequence numbers (left over from an
/// abandoned request) are skipped; malformed input is an error, never a
/// panic.
pub fn parse_datagram(bytes: &[u8], seq: u32, mut each: impl FnMut(Listener)) -> io::Result<Reply> {
    let mut rest = bytes;
    let mut reply = Reply::More;
    while rest.len() >= NLMSG_HDR_LEN {
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return Err(io::Error::other("sock_diag: malformed netlink message"));
        }
        let kind = u16_at(rest, 4);
        let flags = u16_at(rest, 6);
        let message_seq = u32_at(rest, 8);
        let body = &rest[NLMSG_HDR_LEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        if message_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(Reply::Done),
            NLMSG_ERROR => {
                let errno = body.get(..4).map_or(0, |b| i32_at(b, 0));
                // The kernel sends -errno; i32::MIN has no negation.
                return match errno.checked_neg() {
                    Some(ENOENT) => Ok(Reply::Done),
                    Some(e) if e > 0 => Err(io::Error::from_raw_os_error(e)),
                    _ => Err(io::Error::other("sock_diag: netlink error")),
                };
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(listener) = parse_listener(body) {
                    each(listener);
                }
                // Without NLM_F_MULTI this was the whole answer of an exact
                // lookup.
                if flags & 0x2 == 0 {
                    reply = Reply::Done;
                }
            }
            _ => {}
        }
    }
    Ok(reply)
}

/// Connects to the listener on `addr` until its accept queue is full, as the
/// kernel's table reports it, and returns the connections (keep them, or the
/// queue empties). The listener then stands for a VM too busy to accept: a
/// connect probe reads it as closed, the table as listening. For tests and
/// benchmarks; it fails after 10,000 connections.
pub fn fill_accept_queue(addr: SocketAddr) -> io::Result<Vec<std::net::TcpStream>> {
    let mut table = ListenTable::open()?;
    let mut queued = Vec::new();
    while queued.len() < 10_000 {
        let listener = table.listener_for(addr)?.ok_or_else(|| {
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

/// `nlmsghdr` + `inet_diag_req_v2` for a dump of TCP sockets in LISTEN
/// state. With `port` set (not 0), the kernel only reports listeners on that
/// port.
fn dump_request(family: u8, seq: u32, port: u16) -> Vec<u8> {
    let mut msg = request_header(NLM_F_REQUEST | NLM_F_DUMP, seq, family);
    // inet_diag_sockid: idiag_sport (network order) filters; the rest is
    // zero for a dump.
    msg.extend_from_slice(&port.to_be_bytes());
    msg.resize(NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN, 0);
    msg
}

/// `nlmsghdr` + `inet_diag_req_v2` for an exact lookup: the kernel takes
/// `src`/`sport` as the local end and `dst`/`dport` as the remote one, and
/// returns the socket an incoming connection from the remote end would
/// reach. The remote end is the target's own address, port 0 (no connection
/// has port 0, so no established socket matches: only a listener can).
fn exact_request(target: SocketAddr, seq: u32) -> Vec<u8> {
    let (family, ip) = match target.ip() {
        IpAddr::V4(v4) => {
            let mut ip = [0u8; 16];
            ip[..4].copy_from_slice(&v4.octets());
            (AF_INET, ip)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    };
    let mut msg = request_header(NLM_F_REQUEST, seq, family);
    msg.extend_from_slice(&target.port().to_be_bytes()); // idiag_sport
    msg.extend_from_slice(&0u16.to_be_bytes()); // idiag_dport
    msg.extend_from_slice(&ip); // idiag_src
    msg.extend_from_slice(&ip); // idiag_dst
    msg.extend_from_slice(&0u32.to_ne_bytes()); // idiag_if
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    debug_assert_eq!(msg.len(), NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN);
    msg
}

/// The netlink header and the first fields of `inet_diag_req_v2`, up to
/// its socket id.
fn request_header(flags: u16, seq: u32, family: u8) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    msg.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    msg.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    msg
}

/// `inet_diag_msg` and its attributes -> a listener (`None` for a socket
/// that is not listening, or a message too short).
fn parse_listener(body: &[u8]) -> Option<Listener> {
    if body.len() < INET_DIAG_MSG_LEN || body[1] != TCP_LISTEN {
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
        uid: u32_at(body, 64),
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
    use std::net::{SocketAddr, TcpListener};

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
    fn the_accept_queue_and_the_owner_are_reported_by_both_queries() {
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
        assert_eq!(ours.uid, nix::unistd::geteuid().as_raw());
        let exact = table.listener_for(addr).expect("query").expect("found");
        assert_eq!(&exact, ours);
    }

    #[test]
    fn the_exact_lookup_finds_the_socket_a_connection_would_reach() {
        let Ok(mut table) = ListenTable::open() else {
            return;
        };
        // A dual-stack :: socket takes IPv4 connections: found for 127.0.0.1.
        let Ok(dual) = TcpListener::bind("[::]:0") else {
            return; // no IPv6 here
        };
        let port = dual.local_addr().expect("addr").port();
        let v4: SocketAddr = ([127, 0, 0, 1], port).into();
        let found = table.listener_for(v4).expect("query").expect("found");
        assert!(found.addr.is_ipv6() && found.serves(v4), "{found:?}");
        // An established connection on the port is not a listener.
        let client = std::net::TcpStream::connect(v4).expect("connect");
        let (_server_end, _) = dual.accept().expect("accept");
        drop(dual);
        assert_eq!(table.listener_for(v4).expect("query"), None);
        let local = client.local_addr().expect("addr");
        assert_eq!(table.listener_for(local).expect("query"), None);
    }

    #[test]
    fn garbage_datagrams_are_errors_or_skipped_never_a_panic() {
        let mut seen = 0;
        for bytes in [
            &[][..],
            &[1, 2, 3][..],
            &[0xff; 16][..],
            &[16, 0, 0, 0, 20, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0][..],
            &[
                20, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff,
            ][..],
        ] {
            let _ = parse_datagram(bytes, 7, |_| seen += 1);
        }
        assert_eq!(seen, 0);
        let enoent = [
            20, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff,
        ];
        assert_eq!(
            parse_datagram(&enoent, 7, |_| ()).expect("ENOENT"),
            Reply::Done
        );
        assert_eq!(
            parse_datagram(&enoent, 8, |_| ()).expect("other seq"),
            Reply::More
        );
    }

    /// Found by the fuzz target `listen_table`: negating the error code
    /// overflowed (a panic with overflow checks on) for `i32::MIN`.
    #[test]
    fn an_error_code_without_a_negation_is_an_error_not_an_overflow() {
        let error = [
            20, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80,
        ];
        assert_eq!(i32_at(&error, 16), i32::MIN);
        assert!(parse_datagram(&error, 7, |_| ()).is_err());
    }

    #[test]
    fn wildcard_and_v6_matching() {
        let any4 = Listener {
            addr: "0.0.0.0:80".parse().expect("addr"),
            accept_queue: 0,
            backlog: 1,
            v6only: false,
            inode: 0,
            uid: 0,
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
