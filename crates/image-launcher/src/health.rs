//! A VM may ask to drain (`--health-path`): the "OK / DYING" status of the
//! original fail-over proposal. Every `--health-every-s`, each VM that is up
//! is asked `GET PATH` (HTTP/1.0, a short timeout, on a thread of its own so
//! a VM that does not answer holds nothing up); an answer whose body is
//! `DYING` (with any status; a 503 is usual) puts that VM in drain until it
//! exits: no new session, its sessions stay. No answer is not a verdict: a
//! busy single-threaded VM cannot answer, and only the kernel's evidence
//! (see `hang`) makes a VM hung. Without `--health-path` no request is ever
//! sent to a VM.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::supervise::vm_addr;
use crate::writer::Waker;

/// How long one VM gets to answer its health check.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an answer that is read.
const MAX_ANSWER: u64 = 4096;

/// The VMs that asked to drain, by port, with the pid that asked (a new VM
/// on the port starts healthy).
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<Mutex<HashMap<u16, u32>>>);

impl Draining {
    /// The ports whose VM (still `pid`) asked to drain.
    pub fn ports(&self, alive: &HashMap<u16, u32>) -> Vec<u16> {
        let mut draining = self.0.lock().unwrap_or_else(|p| p.into_inner());
        draining.retain(|port, pid| alive.get(port) == Some(pid));
        let mut ports: Vec<u16> = draining.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// True if the VM `pid` of `port` asked to drain.
    pub fn contains(&self, port: u16, pid: u32) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&port) == Some(&pid)
    }

    fn mark(&self, port: u16, pid: u32) -> bool {
        let mut draining = self.0.lock().unwrap_or_else(|p| p.into_inner());
        draining.insert(port, pid) != Some(pid)
    }
}

/// What the health thread asks next: the VMs that are up (port, pid).
#[derive(Debug, Clone, Default)]
pub struct Targets(Arc<Mutex<HashMap<u16, u32>>>);

impl Targets {
    /// Replaces the list.
    pub fn set(&self, alive: HashMap<u16, u32>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = alive;
    }

    fn get(&self) -> HashMap<u16, u32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Starts the thread that asks `path` of every target every `every`.
pub fn spawn(
    path: String,
    every: Duration,
    targets: Targets,
    draining: Draining,
    waker: Arc<Waker>,
) -> std::io::Result<()> {
    rewritemap::signals::spawn_background("health".into(), move || {
        loop {
            thread::sleep(every);
            for (port, pid) in targets.get() {
                let (path, draining, waker) = (path.clone(), draining.clone(), Arc::clone(&waker));
                let _ = rewritemap::signals::spawn_background(format!("health-{port}"), move || {
                    if ask(port, &path) == Some(Answer::Dying) && draining.mark(port, pid) {
                        tracing::info!(
                            "port {port}: pid {pid} answered DYING on {path}: draining (no new session; its sessions stay until it exits)"
                        );
                        waker.wake();
                    }
                });
            }
        }
    })
    .map(drop)
}

/// What a VM answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Anything but DYING.
    Ok,
    /// The body said DYING.
    Dying,
}

/// Asks one VM; `None` when it did not answer in time.
pub fn ask(port: u16, path: &str) -> Option<Answer> {
    let mut stream = TcpStream::connect_timeout(&vm_addr(port), ASK_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(ASK_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(ASK_TIMEOUT)).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).ok()?;
    Some(classify(&answer))
}

/// DYING when the body (after the head) is `DYING`, whatever the status.
pub fn classify(answer: &[u8]) -> Answer {
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&answer[..0], |at| &answer[at + 4..]);
    if body.trim_ascii() == b"DYING" {
        Answer::Dying
    } else {
        Answer::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_body_of_dying_is_dying() {
        let dying = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 6\r\n\r\nDYING\n";
        assert_eq!(classify(dying), Answer::Dying);
        assert_eq!(classify(b"HTTP/1.0 200 OK\r\n\r\nDYING"), Answer::Dying);
        assert_eq!(classify(b"HTTP/1.0 200 OK\r\n\r\nOK\n"), Answer::Ok);
        assert_eq!(classify(b"HTTP/1.0 503 Busy\r\n\r\n"), Answer::Ok);
        assert_eq!(
            classify(b"HTTP/1.0 200 OK\r\nX: DYING\r\n\r\nfine"),
            Answer::Ok
        );
        assert_eq!(classify(b"garbage"), Answer::Ok);
    }
}
