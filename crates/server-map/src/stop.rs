//! `server-map stop`: stops the pool's VMs, and only ours: each process a
//! pid record in image-launcher's pid directory names, while its pid *and*
//! start time still match (`vmpool::kill_if_ours`). SIGTERM to each at
//! once, then SIGKILL for those still running after the grace period; one
//! line per VM says what became of it.
//!
//! A record whose pid now belongs to another process is left alone and
//! reported. Records are only read: a launcher that runs on (Apache still
//! serving the site) launches a VM again at the next request that needs
//! one, with a record of its own.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use server_map::cli::StopArgs;
use vmpool::safedir::SafeDir;
use vmpool::{PidRecord, Stopped, kill_if_ours, parse_port};

use crate::commands::plural;

/// What became of one record's process.
struct Outcome {
    port: u16,
    record: PidRecord,
    result: io::Result<Stopped>,
    took: Duration,
}

pub fn stop(out: &mut impl Write, args: &StopArgs) -> anyhow::Result<ExitCode> {
    stop_ports(
        out,
        &args.pid_dir,
        args.ports.as_ref().map(|spec| spec.ports().to_vec()),
        Duration::from_secs(args.grace_s),
    )
}

/// Stops the VMs of `ports` (every VM with a record in `pid_dir` when
/// `None`) and says what became of each: exit 0 when every one recorded is
/// gone, 2 if one could not be stopped.
pub fn stop_ports(
    out: &mut impl Write,
    pid_dir: &Path,
    ports: Option<Vec<u16>>,
    grace: Duration,
) -> anyhow::Result<ExitCode> {
    // A record names the process root will signal: only a directory that
    // no one else can write in is trusted.
    let held =
        SafeDir::open(pid_dir).with_context(|| format!("--pid-dir {}", pid_dir.display()))?;
    let dir = held.path().to_path_buf();
    let ports = match ports {
        Some(ports) => ports,
        None => recorded_ports(&dir)?,
    };
    let mut failed = 0;
    let mut records = Vec::new();
    for port in ports {
        match PidRecord::read_in(&held, port) {
            Ok(Some(record)) => records.push((port, record)),
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                writeln!(
                    out,
                    "port {port}: pid record unreadable ({e}); nothing done"
                )?;
            }
        }
    }
    let outcomes = stop_all(&held, records, grace);
    let mut counts = [0usize; 4];
    for outcome in &outcomes {
        let Outcome {
            port,
            record,
            result,
            took,
        } = outcome;
        let pid = record.pid;
        let took = format!("{:.1} s", took.as_secs_f64());
        match result {
            Ok(Stopped::Terminated) => {
                counts[0] += 1;
                writeln!(out, "port {port}: pid {pid} stopped by SIGTERM in {took}")?;
            }
            Ok(Stopped::Killed) => {
                counts[1] += 1;
                writeln!(
                    out,
                    "port {port}: pid {pid} killed: still running {}s after SIGTERM, SIGKILL",
                    grace.as_secs()
                )?;
            }
            Ok(Stopped::NotOurs) => {
                counts[2] += 1;
                writeln!(
                    out,
                    "port {port}: left alone: the record names pid {pid}, which is another process now"
                )?;
            }
            Ok(Stopped::AlreadyGone) => counts[3] += 1,
            Err(e) => {
                failed += 1;
                writeln!(out, "port {port}: pid {pid} could not be stopped: {e}")?;
            }
        }
    }
    let [terminated, killed, not_ours, gone] = counts;
    writeln!(
        out,
        "stopped {} ({killed} needed SIGKILL) in {}; {not_ours} left alone (not ours); \
         {gone} had already exited{}",
        plural(terminated + killed, "VM"),
        dir.display(),
        if failed > 0 {
            format!("; {failed} FAILED")
        } else {
            String::new()
        }
    )?;
    Ok(if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The ports with a pid record in `dir` (`<port>.pid`), in order.
fn recorded_ports(dir: &Path) -> anyhow::Result<Vec<u16>> {
    let entries = dir
        .read_dir()
        .with_context(|| format!("reading {}", dir.display()))?;
    let mut ports = Vec::new();
    for entry in entries {
        let name = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .file_name();
        if let Some(port) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".pid"))
            .and_then(parse_port)
        {
            ports.push(port);
        }
    }
    ports.sort_unstable();
    Ok(ports)
}

/// Stops every recorded process at once (one thread each), so that the
/// grace periods run side by side: the whole pool takes one grace period,
/// not one per VM.
fn stop_all(dir: &SafeDir, records: Vec<(u16, PidRecord)>, grace: Duration) -> Vec<Outcome> {
    thread::scope(|scope| {
        let running: Vec<_> = records
            .iter()
            .map(|(port, record)| {
                scope.spawn(move || {
                    // For the launcher's log: this exit is an operator's stop.
                    let _ = vmpool::stopmark::write(dir, *port, record.pid);
                    let start = Instant::now();
                    (kill_if_ours(record, grace), start.elapsed())
                })
            })
            .collect();
        running
            .into_iter()
            .zip(&records)
            .map(|(thread, (port, record))| {
                let (result, took) = thread.join().unwrap_or_else(|_| {
                    (Err(io::Error::other("its thread panicked")), Duration::ZERO)
                });
                Outcome {
                    port: *port,
                    record: record.clone(),
                    result,
                    took,
                }
            })
            .collect()
    })
}
