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
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
/// Offset of `tcpi_bytes_received` in `struct tcp_info`.
const TCPI_BYTES_RECEIVED: usize = 128;
/// Offsets of `tcpi_last_data_sent` and `tcpi_last_data_recv` (ms ago),
/// `tcpi_data_segs_in` and `tcpi_data_segs_out` (Linux 4.6 and later).
const TCPI_LAST_DATA_SENT: usize = 44;
const TCPI_LAST_DATA_RECV: usize = 52;
const TCPI_DATA_SEGS_IN: usize = 152;
const TCPI_DATA_SEGS_OUT: usize = 156;
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

    /// Reads datagrams until the answer to the current request is complete;
    /// each listening socket goes to `each`.
    fn receive(&mut self, mut each: impl FnMut(Listener)) -> io::Result<()> {
        self.receive_messages(|body| {
            if let Some(listener) = parse_listener(body) {
                each(listener);
            }
        })
    }

    /// Reads datagrams until the answer to the current request is complete;
    /// each socket's `inet_diag_msg` goes to `each`.
    fn receive_messages(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            let n = retry_eintr(|| recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()))?;
            if n == 0 {
                return Err(io::Error::other("sock_diag: empty netlink reply"));
            }
            match parse_messages(&self.buf[..n], self.seq, &mut each)? {
                Reply::Done => return Ok(()),
                Reply::More => {}
            }
        }
    }

    /// The connections to `ports` on this host, as their VM's end sees
    /// them: established or half-closed by the client, accepted or still in
    /// the accept queue. One dump per address family, filtered by the kernel
    /// (an `inet_diag` bytecode: local port in `ports`).
    pub fn connections_on(&mut self, ports: &[u16]) -> io::Result<Vec<Connection>> {
        let mut all = Vec::new();
        if ports.is_empty() {
            return Ok(all);
        }
        let filter = port_filter(ports);
        for family in [AF_INET, AF_INET6] {
            self.seq = self.seq.wrapping_add(1);
            let request = connections_request(family, self.seq, &filter);
            self.send(&request)?;
            self.receive_messages(|body| {
                if let Some(connection) = parse_connection(body)
                    && ports.contains(&connection.local_port)
                {
                    all.push(connection);
                }
            })?;
        }
        Ok(all)
    }
}

/// One TCP connection to a local port: the VM's end of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The local port (the VM's).
    pub local_port: u16,
    /// The client's address.
    pub remote: SocketAddr,
    /// The kernel's unique id of the socket.
    pub cookie: u64,
    /// The socket's inode; 0 while the connection waits in its listener's
    /// accept queue (a socket no process has accepted has no file).
    pub inode: u32,
    /// Bytes received and not yet read by the process.
    pub unread: u32,
    /// Bytes received in all (`tcpi_bytes_received`), where the kernel
    /// reports it (Linux 4.1 and later).
    pub bytes_received: Option<u64>,
    /// When the VM's end last sent and received data, where the kernel
    /// reports it.
    pub activity: Option<Activity>,
}

/// The data a connection carried, from its `tcp_info`: enough to tell a
/// request waiting for its answer from an idle keep-alive connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Milliseconds since data was last sent (`tcpi_last_data_sent`; since
    /// the connection was set up, if never).
    pub sent_ms_ago: u32,
    /// Milliseconds since data was last received (`tcpi_last_data_recv`).
    pub received_ms_ago: u32,
    /// Segments with data received (`tcpi_data_segs_in`).
    pub data_segs_in: u32,
    /// Segments with data sent (`tcpi_data_segs_out`).
    pub data_segs_out: u32,
}

impl Connection {
    /// True once the process has accepted it.
    pub fn accepted(&self) -> bool {
        self.inode != 0
    }

    /// Bytes the process has read so far, where the kernel tells.
    pub fn consumed(&self) -> Option<u64> {
        self.bytes_received
            .map(|received| received.saturating_sub(u64::from(self.unread)))
    }

    /// True while the VM owes the client an answer, as far as the kernel
    /// can tell: the connection waits to be accepted, the VM has not read
    /// all it received, it received data and never sent any, or it
    /// received data after it last sent some (in a later millisecond). An
    /// idle keep-alive connection owes nothing; neither does one whose
    /// answer is being sent. (A request that arrives on a reused connection
    /// in the millisecond of the previous answer looks idle.)
    pub fn owes_an_answer(&self) -> bool {
        !self.accepted()
            || self.unread > 0
            || self.activity.is_some_and(|a| {
                (a.data_segs_in > 0 && a.data_segs_out == 0) || a.received_ms_ago < a.sent_ms_ago
            })
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
    parse_messages(bytes, seq, |body| {
        if let Some(listener) = parse_listener(body) {
            each(listener);
        }
    })
}

/// [`parse_datagram`] for any socket: each `inet_diag_msg` (with its
/// attributes) of request `seq` goes to `each`.
fn parse_messages(bytes: &[u8], seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<Reply> {
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
                each(body);
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

/// `nlmsghdr` + `inet_diag_req_v2` + the bytecode attribute, for a dump of
/// established and half-closed TCP sockets whose local port passes
/// `filter`, with their `tcp_info`.
fn connections_request(family: u8, seq: u32, filter: &[u8]) -> Vec<u8> {
    let states = (1u32 << TCP_ESTABLISHED) | (1u32 << TCP_CLOSE_WAIT);
    let mut msg = request_header(NLM_F_REQUEST | NLM_F_DUMP, seq, family);
    // idiag_ext: INET_DIAG_INFO (tcp_info), asked as bit (INFO - 1).
    msg[NLMSG_HDR_LEN + 2] = 1 << (INET_DIAG_INFO - 1);
    msg[NLMSG_HDR_LEN + 4..NLMSG_HDR_LEN + 8].copy_from_slice(&states.to_ne_bytes());
    msg.resize(NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN, 0);
    let attr_len = 4 + filter.len();
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    msg.extend_from_slice(filter);
    msg.resize(align4(msg.len()), 0);
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

/// An `inet_diag` bytecode program that accepts a socket whose local port
/// is one of `ports`, built like `ss` builds `sport = :a or sport = :b`:
/// `[EQ a: yes next, no +12] [JMP over the rest] [EQ b ...]`, the last test
/// jumping past the end (reject) when it fails.
pub fn port_filter(ports: &[u16]) -> Vec<u8> {
    match ports {
        [] => Vec::new(),
        [port] => {
            // {S_EQ, yes = 8 (past this test), no = 12 (past the JMP that
            // follows, or past the end: reject)}, then the port in `no`.
            let mut op = vec![INET_DIAG_BC_S_EQ, 8];
            op.extend_from_slice(&12u16.to_ne_bytes());
            op.extend_from_slice(&[0, 0]);
            op.extend_from_slice(&port.to_ne_bytes());
            op
        }
        [first, rest @ ..] => {
            let head = port_filter(&[*first]);
            let tail = port_filter(rest);
            let mut code = head;
            // JMP: taken when the test before it passed: over the tail, to
            // the end (accept).
            code.push(INET_DIAG_BC_JMP);
            code.push(4);
            code.extend_from_slice(&((tail.len() + 4) as u16).to_ne_bytes());
            code.extend_from_slice(&tail);
            code
        }
    }
}

/// `inet_diag_msg` and its attributes -> a connection (`None` for another
/// state, or a message too short).
fn parse_connection(body: &[u8]) -> Option<Connection> {
    if body.len() < INET_DIAG_MSG_LEN || !matches!(body[1], TCP_ESTABLISHED | TCP_CLOSE_WAIT) {
        return None;
    }
    let local_port = u16::from_be_bytes([body[4], body[5]]);
    let remote_port = u16::from_be_bytes([body[6], body[7]]);
    let dst = &body[24..40];
    let ip = match body[0] {
        AF_INET => IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3])),
        AF_INET6 => {
            let octets: [u8; 16] = dst.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    let cookie = u64::from(u32_at(body, 44)) | (u64::from(u32_at(body, 48)) << 32);
    let mut bytes_received = None;
    let mut activity = None;
    let mut attrs = &body[INET_DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0));
        if len < 4 || len > attrs.len() {
            break;
        }
        if u16_at(attrs, 2) == INET_DIAG_INFO && len >= 4 + TCPI_BYTES_RECEIVED + 8 {
            let at = 4 + TCPI_BYTES_RECEIVED;
            bytes_received =
                Some(u64::from(u32_at(attrs, at)) | (u64::from(u32_at(attrs, at + 4)) << 32));
        }
        if u16_at(attrs, 2) == INET_DIAG_INFO && len >= 4 + TCPI_DATA_SEGS_OUT + 4 {
            activity = Some(Activity {
                sent_ms_ago: u32_at(attrs, 4 + TCPI_LAST_DATA_SENT),
                received_ms_ago: u32_at(attrs, 4 + TCPI_LAST_DATA_RECV),
                data_segs_in: u32_at(attrs, 4 + TCPI_DATA_SEGS_IN),
                data_segs_out: u32_at(attrs, 4 + TCPI_DATA_SEGS_OUT),
            });
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(Connection {
        local_port,
        remote: SocketAddr::new(ip, remote_port),
        cookie,
        inode: u32_at(body, 68),
        unread: u32_at(body, 56),
        bytes_received,
        activity,
    })
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
    fn connections_are_seen_queued_then_accepted_with_their_unread_bytes() {
        let Ok(mut table) = ListenTable::open() else {
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let other_port = other.local_addr().expect("addr").port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _elsewhere = std::net::TcpStream::connect(("127.0.0.1", other_port)).expect("connect");
        std::io::Write::write_all(&mut client, b"GET / HTTP/1.0\r\n\r\n").expect("write");
        let wait = |table: &mut ListenTable, done: &dyn Fn(&[Connection]) -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let found = table.connections_on(&[port]).expect("dump");
                if done(&found) {
                    return found;
                }
                assert!(std::time::Instant::now() < deadline, "{found:?}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        // In the accept queue: no inode, 18 bytes unread.
        let queued = wait(&mut table, &|c| c.len() == 1 && c[0].unread == 18);
        assert!(!queued[0].accepted(), "{queued:?}");
        assert!(queued[0].owes_an_answer());
        assert!(
            queued.iter().all(|c| c.local_port == port),
            "only the asked port"
        );
        let (mut server_end, _) = listener.accept().expect("accept");
        let accepted = wait(&mut table, &|c| c.len() == 1 && c[0].accepted());
        assert_eq!(accepted[0].cookie, queued[0].cookie, "the same socket");
        assert_eq!(accepted[0].consumed(), Some(0));
        let mut buf = [0u8; 18];
        std::io::Read::read_exact(&mut server_end, &mut buf).expect("read");
        let read = wait(&mut table, &|c| c.len() == 1 && c[0].unread == 0);
        assert_eq!(read[0].consumed(), Some(18));
        // Read and not answered: owed; answered: an idle connection.
        assert!(read[0].owes_an_answer(), "{read:?}");
        std::io::Write::write_all(&mut server_end, b"HTTP/1.0 200 OK\r\n\r\n").expect("answer");
        let answered = wait(&mut table, &|c| c.len() == 1 && !c[0].owes_an_answer());
        // The next request on the same connection is owed again (once the
        // clock has moved past the answer's millisecond).
        let moved = answered[0].activity.expect("tcp_info").sent_ms_ago;
        let _ = wait(&mut table, &|c| {
            c[0].activity.is_some_and(|a| a.sent_ms_ago > moved)
        });
        let second = b"GET /2 HTTP/1.0\r\n\r\n";
        std::io::Write::write_all(&mut client, second).expect("write");
        server_end
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        std::io::Read::read_exact(&mut server_end, &mut [0u8; 19]).expect("read");
        assert_eq!(second.len(), 19);
        let again = wait(&mut table, &|c| c.len() == 1 && c[0].unread == 0);
        assert!(again[0].owes_an_answer(), "{again:?}");
        // Several ports in one filter; none at all.
        let both = table.connections_on(&[other_port, port]).expect("dump");
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(table.connections_on(&[]).expect("dump").is_empty());
    }

    #[test]
    fn the_port_filter_has_the_shape_the_kernel_audits() {
        assert_eq!(port_filter(&[80]).len(), 8);
        // n tests and n - 1 jumps.
        let code = port_filter(&[1, 2, 3]);
        assert_eq!(code.len(), 3 * 8 + 2 * 4);
        assert_eq!(code[0], INET_DIAG_BC_S_EQ);
        assert_eq!(code[8], INET_DIAG_BC_JMP);
        // The first jump skips the rest: 8 + 4 + 8 bytes, and itself.
        assert_eq!(u16::from_ne_bytes([code[10], code[11]]), 8 + 4 + 8 + 4);
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
