//! `server-map retire`: the security cut-over. Where `switch` lets the old
//! set drain (its sessions go on, on the old code, until they expire),
//! `retire` takes the old set out of service at once, for a fix that must
//! reach every user now:
//!
//! 1. NEW is checked like `switch` checks it, and its active set must be up
//!    (else new sessions would wait for it: `--force` retires anyway).
//! 2. FILE is replaced, atomically, by NEW without the lines of the retired
//!    servers: every server of FILE or NEW whose port is not in NEW's `ALL`.
//!    Their names then route nowhere: a cookie that names one, real or
//!    forged, gets a new session on the new set, as a visitor without a
//!    cookie does. (The live map's writer drops them within milliseconds;
//!    with the classic rules, `server-map` reads the file at its next
//!    lookup.)
//! 3. With `--live-map`, it waits (a few seconds at most) until the live map
//!    routes no retired name, so that no request is sent to a VM being
//!    stopped.
//! 4. It waits (at most the grace period) until, for [`QUIET`], no
//!    connection to the retired ports has owed an answer: requests routed
//!    there just before get it. (Idle keep-alive connections of Apache's
//!    pool do not count.)
//! 5. The retired VMs are stopped as `server-map stop` stops them: only
//!    ours, SIGTERM, then SIGKILL after the grace period.
//!
//! Nothing launches a retired port again: the launcher is asked only for the
//! active set, and no name routes to it any more.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use server_map::cli::RetireArgs;
use server_map::{MapFile, Severity, orphans, read_settled};
use vmpool::listen_table::{Connection, ListenTable};

use crate::commands::{load, plural, print_diagnostics, replace};
use crate::stop::stop_ports;

/// How long to wait for the live map to drop the retired names.
const LIVE_MAP_WAIT: Duration = Duration::from_secs(5);
/// How long the retired ports must have no connection before their VMs are
/// stopped (more than the time between a lookup and its proxy's connect).
const QUIET: Duration = Duration::from_millis(100);

pub fn retire(out: &mut impl Write, args: &RetireArgs) -> anyhow::Result<ExitCode> {
    let (file_name, new_name) = (
        args.file.display().to_string(),
        args.new.display().to_string(),
    );
    let refuse = |why: String| {
        eprintln!("server-map: not retiring: {why}; {file_name} is untouched");
        Ok(ExitCode::FAILURE)
    };
    let next = match load(&args.new) {
        Ok(next) => next,
        Err(diagnostics) => {
            print_diagnostics(&new_name, &diagnostics);
            return refuse(format!("{new_name} cannot be used"));
        }
    };
    print_diagnostics(&new_name, next.map.diagnostics());
    let errors = next.map.count(Severity::Error);
    if errors > 0 {
        return refuse(format!("{new_name} has {}", plural(errors, "error")));
    }
    let keep = next.map.active_ports();
    if keep.is_empty() {
        return refuse(format!(
            "{new_name} has no ALL: no set would take new sessions"
        ));
    }
    let mut prober = orphans::prober();
    let down: Vec<u16> = keep
        .iter()
        .copied()
        .filter(|&p| !prober.is_listening(SocketAddr::from((Ipv4Addr::LOCALHOST, p))))
        .collect();
    if !down.is_empty() {
        let ports = join(&down);
        if !args.force {
            return refuse(format!(
                "port(s) {ports} of {new_name}'s active set do not listen: start them first \
                 (docs/operations.md, \"A security cut-over\"), or --force"
            ));
        }
        eprintln!(
            "server-map: warning: retiring anyway (--force): port(s) {ports} of the new active set do not listen"
        );
    }

    let before = load(&args.file).ok();
    let retired = retired_servers(before.as_ref().map(|b| &b.map), &next.map, &keep);
    if retired.is_empty() {
        writeln!(
            out,
            "nothing to retire: every server of {file_name} and {new_name} is in the new active set"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let names: BTreeSet<&str> = retired.iter().map(|(name, _)| name.as_str()).collect();
    let ports: BTreeSet<u16> = retired.iter().map(|&(_, port)| port).collect();
    let listed = retired
        .iter()
        .map(|(name, port)| format!("{name} ({port})"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = without_servers(&next.bytes, &names, &new_name, &listed);
    match MapFile::parse(&text) {
        Ok(map) if map.count(Severity::Error) == 0 => {}
        _ => {
            return refuse(format!(
                "{new_name} without the retired servers is not a good map"
            ));
        }
    }
    replace(&args.file, &text)?;
    writeln!(
        out,
        "retired {}: {listed}; {file_name} now holds {new_name} without them, ALL = {}",
        plural(retired.len(), "server"),
        join(&keep)
    )?;

    if let Some(live_map) = &args.live_map {
        let started = Instant::now();
        if wait_out_of_live_map(live_map, &ports) {
            writeln!(
                out,
                "the live map routes none of them ({} ms)",
                started.elapsed().as_millis()
            )?;
        } else {
            eprintln!(
                "server-map: warning: {} still routes some of them after {} s (is an image-launcher \
                 with --live-map running?); stopping their VMs anyway",
                live_map.display(),
                LIVE_MAP_WAIT.as_secs()
            );
        }
    }
    let started = Instant::now();
    let grace = Duration::from_secs(args.grace_s);
    let ports: Vec<u16> = ports.into_iter().collect();
    if wait_for_quiet(&ports, grace) {
        writeln!(
            out,
            "no request in flight to them ({} ms)",
            started.elapsed().as_millis()
        )?;
    } else {
        writeln!(
            out,
            "requests to them still in flight after {} s: stopping them anyway",
            args.grace_s
        )?;
    }
    out.flush()?;
    stop_ports(out, &args.pid_dir, Some(ports), grace)
}

/// Waits until no connection to `ports` has owed an answer (in the
/// kernel's table: [`Connection::owes_an_answer`]) for [`QUIET`]; false if some remain after `bound`. Without the kernel's
/// table, waits [`QUIET`] only.
fn wait_for_quiet(ports: &[u16], bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    let Ok(mut table) = ListenTable::open() else {
        std::thread::sleep(QUIET);
        return true;
    };
    let mut quiet_since = Instant::now();
    loop {
        let busy = table
            .connections_on(ports)
            .map_or(true, |c| c.iter().any(Connection::owes_an_answer));
        let now = Instant::now();
        if busy {
            quiet_since = now;
        } else if now.duration_since(quiet_since) >= QUIET {
            return true;
        }
        if now >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every server (name, port) of `before` or `next` whose port is not in
/// `keep`, each name once, in file order (`before` first).
fn retired_servers(before: Option<&MapFile>, next: &MapFile, keep: &[u16]) -> Vec<(String, u16)> {
    let mut retired: Vec<(String, u16)> = Vec::new();
    for (name, port) in before
        .into_iter()
        .flat_map(MapFile::servers)
        .chain(next.servers())
    {
        if !keep.contains(&port) && !retired.iter().any(|(n, _)| n == name) {
            retired.push((name.to_owned(), port));
        }
    }
    retired
}

/// `bytes` (a map file) without the entry lines whose key is in `names`,
/// under a comment that says what was retired.
fn without_servers(bytes: &[u8], names: &BTreeSet<&str>, from: &str, listed: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut kept = format!(
        "# Written by server-map retire from {from}, without the retired servers {listed}.\n"
    );
    for line in text.split_inclusive('\n') {
        let key = entry_key(line);
        if key.is_some_and(|key| names.contains(key)) {
            continue;
        }
        kept.push_str(line);
    }
    kept.into_bytes()
}

/// The key of an entry line, as Apache reads it: none for a comment, a
/// blank or an indented line.
fn entry_key(line: &str) -> Option<&str> {
    let first = *line.as_bytes().first()?;
    if first == b'#' || first.is_ascii_whitespace() {
        return None;
    }
    line.split_ascii_whitespace().next()
}

/// Waits until the live map at `path` routes none of `ports`; false if it
/// still does after [`LIVE_MAP_WAIT`].
fn wait_out_of_live_map(path: &Path, ports: &BTreeSet<u16>) -> bool {
    let deadline = Instant::now() + LIVE_MAP_WAIT;
    loop {
        let routes_one = read_settled(path)
            .ok()
            .and_then(|(bytes, _)| MapFile::parse(&bytes).ok())
            .is_some_and(|map| map.servers().any(|(_, port)| ports.contains(&port)));
        if !routes_one {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> MapFile {
        MapFile::parse(text.as_bytes()).expect("map")
    }

    #[test]
    fn the_retired_are_the_servers_of_either_file_outside_the_new_active_set() {
        let before = map("app3001 3001\napp3002 3002\nold 3009\nALL 3001|3002\n");
        let next = map("app3001 3001\napp3002 3002\napp3003 3003\nALL 3002|3003\n");
        let retired = retired_servers(Some(&before), &next, &next.active_ports());
        assert_eq!(
            retired,
            [("app3001".to_owned(), 3001), ("old".to_owned(), 3009)]
        );
    }

    #[test]
    fn only_entry_lines_of_retired_names_are_dropped() {
        let text =
            b"# set B\napp3001 3001\n  app3001 3001\napp3002 3002 # b\napp3001x 3001\nALL 3002\n";
        let names = BTreeSet::from(["app3001"]);
        let out = without_servers(text, &names, "confB", "app3001 (3001)");
        let out = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            out,
            "# Written by server-map retire from confB, without the retired servers app3001 (3001).\n\
             # set B\n  app3001 3001\napp3002 3002 # b\napp3001x 3001\nALL 3002\n"
        );
    }
}
