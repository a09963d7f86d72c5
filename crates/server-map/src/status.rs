//! `server-map status`: every server of a map file as a person wants to see
//! it (in ALL, listening, accept queue, the VM's pid and uptime) and a
//! summary, as a table or `--json`.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::ensure;
use serde::Serialize;
use server_map::{MapFile, Severity};
use vmpool::listen_table::ListenTable;
use vmpool::{Liveness, PidRecord, ProbeMethod, Prober};

use crate::commands::{load, plural, print_diagnostics};

/// One server as `status` shows it.
#[derive(Debug, Serialize)]
struct Row {
    /// `None` for a port that ALL lists but no key names.
    name: Option<String>,
    port: u16,
    in_all: bool,
    listening: bool,
    /// Connections waiting to be accepted, and the most the queue holds,
    /// from the kernel's table of listening sockets. A full queue is a VM
    /// that accepts nothing: busy, or hung with its socket open.
    accept_queue: Option<u32>,
    backlog: Option<u32>,
    pid: Option<u32>,
    uptime_s: Option<u64>,
    state: &'static str,
}

impl Row {
    fn queue_full(&self) -> bool {
        matches!((self.accept_queue, self.backlog), (Some(q), Some(b)) if q > b)
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    servers: usize,
    in_all: usize,
    listening: usize,
    draining: usize,
    queue_full: usize,
}

#[derive(Debug, Serialize)]
struct Status {
    file: String,
    all: Vec<u16>,
    servers: Vec<Row>,
    summary: Summary,
}

pub fn status(
    out: &mut impl Write,
    file: &Path,
    pid_dir: Option<&Path>,
    json: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    if let Some(dir) = pid_dir {
        ensure!(dir.is_dir(), "--pid-dir {}: not a directory", dir.display());
    }
    let name = file.display().to_string();
    let map = match load(file) {
        Ok(loaded) => loaded.map,
        Err(diagnostics) => {
            print_diagnostics(&name, &diagnostics);
            return Ok(ExitCode::FAILURE);
        }
    };
    let errors = map.count(Severity::Error);
    if errors > 0 {
        eprintln!(
            "server-map: {name} has {}; see server-map check {name}",
            plural(errors, "error")
        );
    }
    let status = survey(&name, &map, pid_dir, timeout);
    if json {
        serde_json::to_writer_pretty(&mut *out, &status)?;
        writeln!(out)?;
    } else {
        print_table(out, &status)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Probes every server's port and reads its pid record.
fn survey(name: &str, map: &MapFile, pid_dir: Option<&Path>, timeout: Duration) -> Status {
    let all = map.active_ports();
    let mut ports: Vec<(Option<String>, u16)> = map
        .servers()
        .map(|(key, port)| (Some(key.to_owned()), port))
        .collect();
    for &port in &all {
        if !ports.iter().any(|&(_, p)| p == port) {
            ports.push((None, port));
        }
    }
    // The kernel's table answers for every port at once and tells how full
    // each accept queue is; a connect probe is the fallback.
    let table = ListenTable::open()
        .and_then(|mut table| table.listeners(0))
        .ok();
    let mut prober = Prober::new(ProbeMethod::Connect, timeout);
    let servers: Vec<Row> = ports
        .into_iter()
        .map(|(name, port)| {
            let in_all = all.contains(&port);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let (listening, queue) = match &table {
                Some(listeners) => match listeners.iter().find(|l| l.serves(addr)) {
                    Some(l) => (true, Some((l.accept_queue, l.backlog))),
                    None => (false, None),
                },
                None => (prober.is_listening(addr), None),
            };
            let (pid, age) = pid_dir.map_or((None, None), |dir| process(dir, port));
            Row {
                name,
                port,
                in_all,
                listening,
                accept_queue: queue.map(|(q, _)| q),
                backlog: queue.map(|(_, b)| b),
                pid,
                uptime_s: age.map(|age| age.as_secs()),
                state: state(in_all, listening, age.is_some()),
            }
        })
        .collect();
    let count = |keep: fn(&Row) -> bool| servers.iter().filter(|row| keep(row)).count();
    let summary = Summary {
        servers: servers.len(),
        in_all: count(|row| row.in_all),
        listening: count(|row| row.listening),
        draining: count(|row| row.listening && !row.in_all),
        queue_full: count(Row::queue_full),
    };
    Status {
        file: name.to_owned(),
        all,
        servers,
        summary,
    }
}

/// The pid and age of the VM recorded for `port`, if it still runs.
fn process(dir: &Path, port: u16) -> (Option<u32>, Option<Duration>) {
    let record = match PidRecord::read(dir, port) {
        Ok(Some(record)) => record,
        Ok(None) => return (None, None),
        Err(e) => {
            eprintln!("server-map: warning: pid record for port {port}: {e}");
            return (None, None);
        }
    };
    match record.liveness() {
        Ok(Liveness::Running { age }) => (Some(record.pid), Some(age)),
        Ok(Liveness::Zombie | Liveness::Gone | Liveness::NotOurs) => (None, None),
        Err(e) => {
            eprintln!(
                "server-map: warning: pid {} of port {port}: {e}",
                record.pid
            );
            (None, None)
        }
    }
}

fn state(in_all: bool, listening: bool, running: bool) -> &'static str {
    match (listening, running, in_all) {
        (true, _, true) => "active",
        (true, _, false) => "draining",
        (false, true, true) => "starting",
        (false, true, false) => "stopping",
        (false, false, true) => "down",
        (false, false, false) => "stopped",
    }
}

/// The status table for people.
fn print_table(out: &mut impl Write, status: &Status) -> io::Result<()> {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let width = status
        .servers
        .iter()
        .filter_map(|row| row.name.as_deref().map(str::len))
        .max()
        .unwrap_or(0)
        .max(4);
    writeln!(
        out,
        "{:width$}  {:>5}  {:6}  {:9}  {:>9}  {:>7}  {:>7}  STATE",
        "NAME", "PORT", "IN ALL", "LISTENING", "QUEUE", "PID", "UPTIME"
    )?;
    for row in &status.servers {
        let queue = match (row.accept_queue, row.backlog) {
            (Some(_), Some(_)) if row.queue_full() => "full".to_owned(),
            (Some(q), Some(b)) => format!("{q}/{b}"),
            _ => "-".to_owned(),
        };
        writeln!(
            out,
            "{:width$}  {:>5}  {:6}  {:9}  {:>9}  {:>7}  {:>7}  {}",
            row.name.as_deref().unwrap_or("-"),
            row.port,
            yes(row.in_all),
            yes(row.listening),
            queue,
            row.pid.map_or("-".to_owned(), |pid| pid.to_string()),
            row.uptime_s.map_or("-".to_owned(), uptime),
            row.state,
        )?;
    }
    let Summary {
        servers,
        in_all,
        listening,
        draining,
        queue_full,
    } = &status.summary;
    writeln!(
        out,
        "{}, {in_all} in ALL (active set), {listening} listening, {draining} listening outside ALL (draining){}",
        plural(*servers, "server"),
        if *queue_full > 0 {
            format!(", {queue_full} with a full accept queue (busy, or hung)")
        } else {
            String::new()
        }
    )
}

/// `45s`, `12m05s`, `3h07m`, `2d04h`.
fn uptime(secs: u64) -> String {
    let (m, s) = (secs / 60, secs % 60);
    let (h, m) = (m / 60, m % 60);
    let (d, h) = (h / 24, h % 24);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_at_a_glance() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(45), "45s");
        assert_eq!(uptime(725), "12m05s");
        assert_eq!(uptime(3 * 3600 + 7 * 60 + 9), "3h07m");
        assert_eq!(uptime(2 * 86400 + 4 * 3600), "2d04h");
    }
}
