//! `vmpool`'s parser of the kernel's sock_diag replies
//! ([`vmpool::listen_table::parse_datagram`]): any datagram is parsed or
//! refused, never a panic and never a read out of bounds; and a datagram
//! built here from the kernel's own layouts (`linux/netlink.h`,
//! `linux/inet_diag.h`) is read exactly as those layouts say: every
//! listening socket of our request, in order, with its address, queue,
//! owner and inode, and the reply complete exactly when the kernel says so.
//!
//! Input: one byte picks the mode. Raw: the rest is a datagram, parsed for
//! the request number of its first message or for one from the input.
//! Built: the rest describes messages (kind, request number, flags, socket
//! fields, attributes), which are encoded, parsed and compared with what
//! they describe.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use vmpool::listen_table::{Listener, Reply, parse_datagram};

use crate::input::Input;

const NLMSG_HDR_LEN: usize = 16;
const INET_DIAG_MSG_LEN: usize = 72;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_MULTI: u16 = 0x2;
const INET_DIAG_SKV6ONLY: u16 = 11;
const TCP_LISTEN: u8 = 10;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ENOENT: i32 = 2;
const SEQ: u32 = 0x5eed;

/// Checks the parser on `data` (see the module doc).
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 3 {
        0 => {
            let datagram = input.rest();
            let seq = datagram.get(8..12).map_or(0, |b| u32_at(b, 0));
            raw(datagram, seq);
        }
        1 => {
            let seq = input.u32();
            raw(input.rest(), seq);
        }
        _ => built(input),
    }
}

/// Arbitrary bytes: an answer or an error, and no more sockets than the
/// datagram has room for.
fn raw(datagram: &[u8], seq: u32) {
    let mut found = 0;
    let _ = parse_datagram(datagram, seq, |_| found += 1);
    assert!(found <= datagram.len() / (NLMSG_HDR_LEN + INET_DIAG_MSG_LEN));
}

/// One netlink message of a reply.
enum Message {
    /// `SOCK_DIAG_BY_FAMILY` + `inet_diag_msg` + attributes.
    Socket {
        multi: bool,
        family: u8,
        state: u8,
        port: u16,
        ip: [u8; 16],
        accept_queue: u32,
        backlog: u32,
        uid: u32,
        inode: u32,
        /// `(type, payload)`; `INET_DIAG_SKV6ONLY` among them sets v6only.
        attrs: Vec<(u16, Vec<u8>)>,
    },
    Done,
    /// `NLMSG_ERROR` with this errno (negative, as the kernel sends it).
    Error(i32),
    /// Any other message type, with a body.
    Other(u16, Vec<u8>),
}

/// A listener's fields, compared one by one (a field added to [`Listener`]
/// later does not break this check).
type Fields = (SocketAddr, u32, u32, bool, u32, u32);

fn fields(l: &Listener) -> Fields {
    (l.addr, l.accept_queue, l.backlog, l.v6only, l.uid, l.inode)
}

/// What the parser must make of a reply: the sockets it reports and how it
/// ends.
fn expected(messages: &[(bool, Message)]) -> (Vec<Fields>, io::Result<Reply>) {
    let mut found = Vec::new();
    let mut reply = Reply::More;
    for (ours, message) in messages {
        if !ours {
            continue;
        }
        match message {
            Message::Done => return (found, Ok(Reply::Done)),
            Message::Error(errno) if *errno == -ENOENT => return (found, Ok(Reply::Done)),
            Message::Error(_) => return (found, Err(io::Error::other("error"))),
            Message::Socket { multi, .. } => {
                found.extend(listener(message));
                if !multi {
                    reply = Reply::Done;
                }
            }
            Message::Other(..) => {}
        }
    }
    (found, Ok(reply))
}

/// The listener a message describes, if it is a listening TCP socket of a
/// family the parser knows.
fn listener(message: &Message) -> Option<Fields> {
    let Message::Socket {
        family,
        state,
        port,
        ip,
        accept_queue,
        backlog,
        uid,
        inode,
        attrs,
        ..
    } = message
    else {
        return None;
    };
    let ip = match *family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(*ip)),
        _ => return None,
    };
    if *state != TCP_LISTEN {
        return None;
    }
    let v6only = attrs
        .iter()
        .rev()
        .find(|(kind, payload)| *kind == INET_DIAG_SKV6ONLY && !payload.is_empty())
        .is_some_and(|(_, payload)| payload[0] != 0);
    Some((
        SocketAddr::new(ip, *port),
        *accept_queue,
        *backlog,
        v6only,
        *uid,
        *inode,
    ))
}

fn built(mut input: Input) {
    let mut messages = Vec::new();
    while !input.is_empty() && messages.len() < 64 {
        let ours = !input.u8().is_multiple_of(4);
        messages.push((ours, message(&mut input)));
    }
    let mut datagram = Vec::new();
    for (ours, message) in &messages {
        encode(&mut datagram, if *ours { SEQ } else { SEQ + 1 }, message);
    }
    let mut found = Vec::new();
    let got = parse_datagram(&datagram, SEQ, |l| found.push(fields(&l)));
    let (want, want_reply) = expected(&messages);
    assert_eq!(found, want);
    match (got, want_reply) {
        (Ok(got), Ok(want)) => assert_eq!(got, want),
        (Err(_), Err(_)) => {}
        (got, want) => panic!("parsed as {got:?}, should be {want:?}"),
    }
}

fn message(input: &mut Input) -> Message {
    match input.u8() % 8 {
        0 => Message::Done,
        1 => {
            let errno = match input.u8() % 4 {
                0 => -ENOENT,
                1 => 0,
                2 => -i32::from(input.u8()),
                _ => input.u32() as i32,
            };
            Message::Error(errno)
        }
        2 => {
            let kind = match input.u16() {
                NLMSG_ERROR | NLMSG_DONE | SOCK_DIAG_BY_FAMILY => 16,
                kind => kind,
            };
            Message::Other(kind, input.chunk(100).to_vec())
        }
        _ => socket(input),
    }
}

fn socket(input: &mut Input) -> Message {
    let flags = input.u8();
    let family = match flags % 8 {
        0 => input.u8(),
        1..4 => AF_INET,
        _ => AF_INET6,
    };
    let state = if flags & 0x08 == 0 {
        TCP_LISTEN
    } else {
        input.u8()
    };
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&{
        let mut bytes = input.take(16).to_vec();
        bytes.resize(16, 0);
        bytes
    });
    let port = input.u16();
    let (accept_queue, backlog, uid, inode) = (input.u32(), input.u32(), input.u32(), input.u32());
    let mut attrs = Vec::new();
    for _ in 0..input.u8() % 4 {
        let kind = if input.bool() {
            INET_DIAG_SKV6ONLY
        } else {
            input.u16()
        };
        attrs.push((kind, input.chunk(40).to_vec()));
    }
    Message::Socket {
        multi: flags & 0x10 != 0,
        family,
        state,
        port,
        ip,
        accept_queue,
        backlog,
        uid,
        inode,
        attrs,
    }
}

/// Appends `message` as the kernel lays it out, padded to 4 bytes.
fn encode(out: &mut Vec<u8>, seq: u32, message: &Message) {
    let (kind, flags, body) = match message {
        Message::Done => (NLMSG_DONE, NLM_F_MULTI, 0i32.to_ne_bytes().to_vec()),
        Message::Error(errno) => {
            // nlmsgerr: the error, then the header of the request.
            let mut body = errno.to_ne_bytes().to_vec();
            body.resize(4 + NLMSG_HDR_LEN, 0);
            (NLMSG_ERROR, 0, body)
        }
        Message::Other(kind, body) => (*kind, 0, body.clone()),
        Message::Socket { multi, .. } => (
            SOCK_DIAG_BY_FAMILY,
            if *multi { NLM_F_MULTI } else { 0 },
            socket_body(message),
        ),
    };
    let len = NLMSG_HDR_LEN + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    out.extend_from_slice(&body);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// `struct inet_diag_msg` and its `rtattr`s.
fn socket_body(message: &Message) -> Vec<u8> {
    let Message::Socket {
        family,
        state,
        port,
        ip,
        accept_queue,
        backlog,
        uid,
        inode,
        attrs,
        ..
    } = message
    else {
        return Vec::new();
    };
    let mut body = vec![*family, *state, 0, 0]; // family, state, timer, retrans
    body.extend_from_slice(&port.to_be_bytes()); // id.idiag_sport
    body.extend_from_slice(&0u16.to_be_bytes()); // id.idiag_dport
    body.extend_from_slice(ip); // id.idiag_src
    body.extend_from_slice(&[0; 16]); // id.idiag_dst
    body.extend_from_slice(&[0; 4 + 8 + 4]); // id.idiag_if, id.idiag_cookie, idiag_expires
    for field in [accept_queue, backlog, uid, inode] {
        body.extend_from_slice(&field.to_ne_bytes()); // rqueue, wqueue, uid, inode
    }
    assert_eq!(body.len(), INET_DIAG_MSG_LEN);
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(payload);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    body
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}
