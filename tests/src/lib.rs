//! The harness of the end-to-end tests: a whole stack (a private Apache 2.4
//! configured from the shipped `apache-conf/`, the three map programs and
//! `demo-vm` VMs) on loopback, and an HTTP client. The cases live in
//! `tests/through_apache.rs`. Several hosts, each such a stack in a network
//! namespace of its own, behind a real HAProxy (`front`, `netns`): the
//! cases live in `tests/hosts.rs`.

#![deny(missing_docs)]

pub mod apache;
pub mod front;
pub mod http;
pub mod netns;
pub mod skip;
pub mod stack;

pub use http::{Client, Response, VmReply, request};
pub use stack::{HostNet, Options, Stack, wait_until};

/// `n` distinct free loopback ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    rewritemap::client::free_loopback_ports(n)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}
