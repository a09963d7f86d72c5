//! Hung VMs, told from the kernel's queues alone: no request is ever sent
//! to a VM to find out.
//!
//! A VM that is alive but hung (an endless loop, a deadlock, a debugger halt,
//! SIGSTOP) keeps its listening socket, and the kernel keeps completing
//! connections and queueing bytes for it. A VM is *hung* when work has been
//! waiting for it (a connection in its accept queue, or unread bytes on a
//! connection it accepted) and it has taken none of it (no connection
//! accepted, no byte read) for the hang timeout. A VM with nothing waiting is
//! never hung, however long it is quiet; a single-threaded VM busy with one
//! long request while others wait keeps its clock running only until it
//! takes the next one, so an honest request shorter than the timeout never
//! makes it hung.
//!
//! Progress is read from each connection's identity (the kernel's socket
//! cookie), whether it has been accepted (an accepted socket has an inode),
//! and how many bytes the VM has read from it (`tcpi_bytes_received` minus
//! the unread bytes; the unread bytes alone on old kernels).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use vmpool::listen_table::{Connection, Listener};

/// What was waiting for a VM, for the log line that explains a verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Connections in the listener's accept queue.
    pub accept_queue: u32,
    /// Accepted connections with unread bytes.
    pub unread_connections: usize,
    /// Unread bytes on all of the VM's connections.
    pub unread_bytes: u64,
}

impl Evidence {
    fn waiting(&self) -> bool {
        self.accept_queue > 0 || self.unread_bytes > 0
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connection(s) in its accept queue, {} unread byte(s) on {} accepted connection(s)",
            self.accept_queue, self.unread_bytes, self.unread_connections
        )
    }
}

/// The verdict on one VM after a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing waits, or the VM takes what waits.
    Working,
    /// Work has waited, untaken, since this instant (not yet for the
    /// timeout).
    Stalled(Instant),
    /// Work has waited, untaken, for the timeout or more.
    Hung {
        /// Since when.
        since: Instant,
        /// What waits now.
        evidence: Evidence,
    },
}

/// What one VM's queues looked like at the last sample.
#[derive(Debug, Default)]
struct Seen {
    /// Accepted connections, by cookie: the bytes read from each (where
    /// the kernel tells) and the bytes unread.
    accepted: HashMap<u64, (Option<u64>, u32)>,
    /// Work has waited, untaken, since.
    stalled_since: Option<Instant>,
}

/// The memory of the hang detector, one entry per VM port.
#[derive(Debug)]
pub struct HangWatch {
    timeout: Duration,
    ports: HashMap<u16, Seen>,
}

impl HangWatch {
    /// A detector that calls a VM hung after `timeout` without progress.
    pub fn new(timeout: Duration) -> HangWatch {
        HangWatch {
            timeout,
            ports: HashMap::new(),
        }
    }

    /// Forgets a port (its VM is gone): a new VM starts with a clean slate.
    pub fn forget(&mut self, port: u16) {
        self.ports.remove(&port);
    }

    /// Takes one sample of `port`'s VM: its listener and the connections to
    /// its port; returns the verdict.
    pub fn observe(
        &mut self,
        port: u16,
        listener: &Listener,
        connections: &[&Connection],
        now: Instant,
    ) -> Verdict {
        let seen = self.ports.entry(port).or_default();
        let mut evidence = Evidence {
            accept_queue: listener.accept_queue,
            ..Evidence::default()
        };
        let mut progress = false;
        let mut accepted = HashMap::new();
        for c in connections {
            evidence.unread_bytes += u64::from(c.unread);
            if !c.accepted() {
                continue;
            }
            if c.unread > 0 {
                evidence.unread_connections += 1;
            }
            let read = c.consumed();
            progress |= match seen.accepted.get(&c.cookie) {
                // Accepted since the last sample.
                None => true,
                Some((Some(before), _)) if read.is_some() => read > Some(*before),
                // Without tcpi_bytes_received: fewer unread bytes.
                Some((_, unread_before)) => c.unread < *unread_before,
            };
            accepted.insert(c.cookie, (read, c.unread));
        }
        seen.accepted = accepted;
        if !evidence.waiting() {
            seen.stalled_since = None;
            return Verdict::Working;
        }
        if progress || seen.stalled_since.is_none() {
            seen.stalled_since = Some(now);
        }
        let since = seen.stalled_since.unwrap_or(now);
        if now.duration_since(since) >= self.timeout {
            Verdict::Hung { since, evidence }
        } else if progress {
            Verdict::Working
        } else {
            Verdict::Stalled(since)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn listener(queue: u32) -> Listener {
        Listener {
            addr: "127.0.0.1:3001".parse().expect("addr"),
            accept_queue: queue,
            backlog: 128,
            v6only: false,
            inode: 1,
            uid: 0,
        }
    }

    fn conn(cookie: u64, accepted: bool, unread: u32, received: u64) -> Connection {
        Connection {
            local_port: 3001,
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            cookie,
            inode: if accepted { 7 } else { 0 },
            unread,
            bytes_received: Some(received),
            activity: None,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn a_quiet_vm_is_never_hung_however_long() {
        let mut watch = HangWatch::new(TIMEOUT);
        let t0 = Instant::now();
        let idle = conn(1, true, 0, 100);
        for s in 0..100 {
            let verdict = watch.observe(1, &listener(0), &[&idle], t0 + Duration::from_secs(s));
            assert_eq!(verdict, Verdict::Working);
        }
    }

    #[test]
    fn work_untaken_for_the_timeout_is_a_hang_with_its_evidence() {
        let mut watch = HangWatch::new(TIMEOUT);
        let t0 = Instant::now();
        let stuck = conn(1, true, 50, 150);
        let queued = conn(2, false, 40, 40);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            watch.observe(1, &listener(1), &[&stuck, &queued], at(0)),
            Verdict::Working
        );
        assert_eq!(
            watch.observe(1, &listener(1), &[&stuck, &queued], at(3)),
            Verdict::Stalled(at(0))
        );
        assert_eq!(
            watch.observe(1, &listener(1), &[&stuck, &queued], at(5)),
            Verdict::Hung {
                since: at(0),
                evidence: Evidence {
                    accept_queue: 1,
                    unread_connections: 1,
                    unread_bytes: 90
                }
            }
        );
    }

    #[test]
    fn a_long_request_with_others_queued_is_not_a_hang_before_the_timeout() {
        let mut watch = HangWatch::new(TIMEOUT);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        // The VM read its long request; ten more wait in its accept queue.
        let long = conn(1, true, 0, 100);
        let queue: Vec<Connection> = (10..20).map(|c| conn(c, false, 80, 80)).collect();
        let mut all: Vec<&Connection> = vec![&long];
        all.extend(queue.iter());
        assert_eq!(
            watch.observe(1, &listener(10), &all, at(0)),
            Verdict::Working
        );
        for s in 1..=4 {
            assert!(matches!(
                watch.observe(1, &listener(10), &all, at(s)),
                Verdict::Stalled(_)
            ));
        }
        // 4.5 s in, it answers and takes the next: the clock starts again.
        let next = conn(10, true, 0, 80);
        let mut after: Vec<&Connection> = vec![&next];
        after.extend(queue[1..].iter());
        assert_eq!(
            watch.observe(1, &listener(9), &after, at(4) + Duration::from_millis(500)),
            Verdict::Working
        );
        assert!(matches!(
            watch.observe(1, &listener(9), &after, at(8)),
            Verdict::Stalled(_)
        ));
    }

    #[test]
    fn reading_bytes_on_a_kept_alive_connection_is_progress() {
        let mut watch = HangWatch::new(TIMEOUT);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        // Requests keep arriving on one connection; the VM reads each.
        for s in 0..20u64 {
            let c = conn(1, true, 30, 100 + 30 * s);
            let verdict = watch.observe(1, &listener(0), &[&c], at(s));
            assert!(
                !matches!(verdict, Verdict::Hung { .. }),
                "second {s}: {verdict:?}"
            );
        }
    }
}
