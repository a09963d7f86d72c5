//! `server-map status`: every server of a map file as a person wants to see
//! it (in ALL, listening, accept queue, the VM's pid and uptime, whether the
//! live map routes to it) and a summary, as a table or `--json`.
//!
//! The live map (image-launcher's `--live-map`) is read with the same parser
//! as balance.conf: it is the same Apache txt/rnd syntax. Beside it, the
//! launcher's `LIVE_MAP.json` (`vmpool::state`) tells which VMs are hung
//! (since when, and what waits for them), which asked to drain, and how many
//! times each port's VM was launched and stopped for hanging.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::ensure;
use serde::Serialize;
use server_map::cli::StatusArgs;
use server_map::{ALL, MapFile, Severity, Value, read_settled};
use vmpool::listen_table::ListenTable;
use vmpool::state::{self, PoolState};
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
    /// With `--live-map`: the live map routes this name to this port.
    in_live_map: Option<bool>,
    /// With `--live-map`, from the launcher's state file: the VM is hung
    /// (work waits for it and it takes none): since when, what waits.
    hung: Option<state::Hung>,
    /// Likewise: the VM asked to drain (DYING on its health path).
    asked_to_drain: Option<bool>,
    /// Likewise: VMs launched on the port, hung VMs stopped there, by the
    /// launcher that writes the live map, since it started.
    launches: Option<u64>,
    hung_kills: Option<u64>,
    /// Likewise: a socket that is not the VM's listens on the port (a local
    /// user took it): its owner's uid. Never routed to, never launched over.
    taken_by_uid: Option<u32>,
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
    /// With `--live-map`: the rows the live map routes to.
    in_live_map: Option<usize>,
}

/// The live map as `status` shows it.
#[derive(Debug, Serialize)]
struct Live {
    file: String,
    /// How many servers it routes to.
    servers: usize,
    /// Its ALL, present only while the whole active set is up.
    all: Option<Vec<u16>>,
    /// Its HOST line (up, drain, down): the host's health for a front.
    host: Option<String>,
    /// Why it could not be read (it is then shown as routing nowhere).
    error: Option<String>,
    #[serde(skip)]
    map: MapFile,
}

impl Live {
    /// Reads the live map. A map that routes nowhere holds only comments
    /// (the launcher never writes an empty file).
    fn read(path: &Path) -> Live {
        let parsed = read_settled(path)
            .map_err(|e| e.to_string())
            .and_then(|(bytes, _)| match MapFile::parse(&bytes) {
                Ok(map) => Ok(map),
                Err(rejected) if rejected.has_no_entries() => Ok(MapFile::empty()),
                Err(rejected) => Err(format!("refused: {rejected}")),
            });
        let (map, error) = match parsed {
            Ok(map) => (map, None),
            Err(e) => {
                eprintln!(
                    "server-map: warning: --live-map {}: {e}; showing no server in it",
                    path.display()
                );
                (MapFile::empty(), Some(e))
            }
        };
        Live {
            file: path.display().to_string(),
            servers: map.servers().count(),
            all: map.get(ALL).map(|_| map.active_ports()),
            host: map.get(vmpool::host::HOST).map(|v| v.text().to_owned()),
            error,
            map,
        }
    }

    /// True if it routes `name` to `port`.
    fn routes(&self, name: &str, port: u16) -> bool {
        self.map.get(name).and_then(Value::port) == Some(port)
    }
}

#[derive(Debug, Serialize)]
struct Status {
    file: String,
    all: Vec<u16>,
    servers: Vec<Row>,
    summary: Summary,
    live_map: Option<Live>,
}

pub fn status(out: &mut impl Write, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let (file, pid_dir) = (&args.file, args.pid_dir.as_deref());
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
    let live = args.live_map.as_deref().map(Live::read);
    let pool = args.live_map.as_deref().and_then(|path| {
        PoolState::read(path)
            .inspect_err(|e| {
                eprintln!(
                    "server-map: warning: {}: {e}; hung and draining VMs are not shown",
                    state::path_for(path).display()
                )
            })
            .ok()
            .flatten()
    });
    let timeout = Duration::from_millis(args.timeout_ms);
    let status = survey(&name, &map, pid_dir, live, pool.as_ref(), timeout);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &status)?;
        writeln!(out)?;
    } else {
        print_table(out, &status)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Probes every server's port and reads its pid record.
fn survey(
    name: &str,
    map: &MapFile,
    pid_dir: Option<&Path>,
    live: Option<Live>,
    pool: Option<&PoolState>,
    timeout: Duration,
) -> Status {
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
            let in_live_map = live
                .as_ref()
                .map(|live| name.as_deref().is_some_and(|n| live.routes(n, port)));
            let known = pool.and_then(|pool| pool.ports.iter().find(|p| p.port == port));
            let hung = known.and_then(|p| p.hung.clone());
            let asked_to_drain = known.map(|p| p.draining);
            let taken_by_uid = known.and_then(|p| p.taken_by_uid);
            let state = if taken_by_uid.is_some() {
                "taken"
            } else if hung.is_some() {
                "hung"
            } else if asked_to_drain == Some(true) {
                "draining (asked)"
            } else {
                state(in_all, listening, age.is_some())
            };
            Row {
                name,
                port,
                in_all,
                listening,
                accept_queue: queue.map(|(q, _)| q),
                backlog: queue.map(|(_, b)| b),
                pid,
                uptime_s: age.map(|age| age.as_secs()),
                in_live_map,
                hung,
                asked_to_drain,
                launches: known.map(|p| p.launches),
                hung_kills: known.map(|p| p.hung_kills),
                taken_by_uid,
                state,
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
        in_live_map: live
            .as_ref()
            .map(|_| count(|row| row.in_live_map == Some(true))),
    };
    Status {
        file: name.to_owned(),
        all,
        servers,
        summary,
        live_map: live,
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
    // The LIVE column only with --live-map.
    let live = |cell: Option<&str>| cell.map_or(String::new(), |c| format!("{c:5}  "));
    writeln!(
        out,
        "{:width$}  {:>5}  {:6}  {:9}  {}{:>9}  {:>7}  {:>7}  STATE",
        "NAME",
        "PORT",
        "IN ALL",
        "LISTENING",
        live(status.live_map.as_ref().map(|_| "LIVE")),
        "QUEUE",
        "PID",
        "UPTIME"
    )?;
    for row in &status.servers {
        let queue = match (row.accept_queue, row.backlog) {
            (Some(_), Some(_)) if row.queue_full() => "full".to_owned(),
            (Some(q), Some(b)) => format!("{q}/{b}"),
            _ => "-".to_owned(),
        };
        writeln!(
            out,
            "{:width$}  {:>5}  {:6}  {:9}  {}{:>9}  {:>7}  {:>7}  {}",
            row.name.as_deref().unwrap_or("-"),
            row.port,
            yes(row.in_all),
            yes(row.listening),
            live(row.in_live_map.map(yes)),
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
        ..
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
    )?;
    if let Some(live) = &status.live_map {
        print_live_summary(out, live, &status.servers)?;
    }
    for row in &status.servers {
        if let Some(uid) = row.taken_by_uid {
            writeln!(
                out,
                "{} ({}): taken by uid {uid}: a socket that is not the VM's listens there; never routed to, never launched over (find it: ss -ltnpe 'sport = :{}')",
                row.name.as_deref().unwrap_or("-"),
                row.port,
                row.port
            )?;
        }
        if let Some(hung) = &row.hung {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(hung.since_unix_s);
            writeln!(
                out,
                "{} ({}): hung for {}: {} connection(s) in its accept queue, {} unread byte(s); out of the live map, stopped if ours ({} stopped hung so far)",
                row.name.as_deref().unwrap_or("-"),
                row.port,
                uptime(since),
                hung.accept_queue,
                hung.unread_bytes,
                row.hung_kills.unwrap_or(0)
            )?;
        }
    }
    Ok(())
}

/// `live map FILE: 4 servers, ALL = 3001|3002 (...)`.
fn print_live_summary(out: &mut impl Write, live: &Live, rows: &[Row]) -> io::Result<()> {
    let all = match &live.all {
        Some(ports) => {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!(
                "ALL = {} (the active set is up: new sessions need no launcher)",
                ports.join("|")
            )
        }
        None => "no ALL (a port of the active set is down: new sessions go through the launcher)"
            .to_owned(),
    };
    let unpublished = rows
        .iter()
        .filter(|row| row.name.is_some() && row.listening && row.in_live_map == Some(false))
        .count();
    let lagging = if unpublished > 0 {
        format!(
            "; {unpublished} listening but not in it (a VM that just came up, or no launcher \
             with --live-map writes it)"
        )
    } else {
        String::new()
    };
    let host = live
        .host
        .as_ref()
        .map(|h| format!("; HOST {h} (for a front: server-map drain-host status)"))
        .unwrap_or_default();
    writeln!(
        out,
        "live map {}: {} in it, {all}{lagging}{host}",
        live.file,
        plural(live.servers, "server"),
    )
}

/// `45s`, `12m05s`, `3h07m`, `2d04h`.
pub(crate) fn uptime(secs: u64) -> String {
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
