//! The subcommands for people: `check` a file and `switch` to another one
//! atomically here; `status` ([`crate::status`]), `stop` ([`crate::stop`]),
//! `retire` ([`crate::retire`]), `preflight` ([`crate::preflight`]) and
//! `drain-host` ([`crate::drain_host`]) from here.
//!
//! Diagnostics go to stderr as `FILE:LINE: severity: message`; the one-line
//! verdicts, the status table and `--json` go to stdout. [`run`] is the only
//! writer of stdout besides the map loop: it holds one locked handle, which
//! each subcommand writes to with `writeln!` rather than `println!`, so that
//! a reader that goes away (`server-map status FILE | head -3`) ends the
//! command quietly instead of panicking.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::drain_host::DrainHostArgs;
use crate::preflight::PreflightArgs;
use crate::retire::RetireArgs;
use crate::status::StatusArgs;
use crate::stop::StopArgs;
use anyhow::Context;
use server_map::orphans::{self, Orphan, orphans};
use server_map::{ALL, Diagnostic, MapFile, Rejected, Severity, read_settled};

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a map file: errors and warnings with line numbers; exit 0
    /// when it has no error, 1 otherwise.
    ///
    /// Errors: a file refused as a whole (empty, NUL byte, invalid UTF-8,
    /// no entry, unreadable), duplicate keys (the first wins), empty
    /// alternatives (a|b| answers NULL when picked), ports outside 1..65535,
    /// ALL listing a port no key maps to, lines Apache's own reader would
    /// cut (over 1023 bytes). Warnings: indented lines (Apache ignores them),
    /// keys without a value, text after the value, no final newline, no ALL.
    ///
    /// With --against CURRENT (the file in place, balance.conf): also an
    /// error for each server of CURRENT whose VM listens now and which FILE
    /// drops or sends to another port (its sessions would lose their route),
    /// exactly as `switch CURRENT FILE` would refuse it.
    Check {
        /// The map file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The map in place, to see whether switching to FILE would orphan
        /// the sessions of a VM that listens.
        #[arg(long, value_name = "CURRENT")]
        against: Option<PathBuf>,
    },

    /// Cut over atomically: validate NEW like `check`, copy it to a temp
    /// file next to FILE and rename it over FILE (FILE is never half
    /// written); print what changed.
    ///
    /// FILE keeps its mode and owner (a new FILE gets 0644). If NEW has an
    /// error, nothing is written and the exit status is 1. So too if NEW
    /// drops a server of FILE whose VM listens (or sends its name to another
    /// port): its sessions would lose their route; the servers are named,
    /// and --force switches anyway. A running map answers from the new file
    /// at its next lookup.
    Switch {
        /// The map file in place (balance.conf).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The file to put in its place (balance.confB).
        #[arg(value_name = "NEW")]
        new: PathBuf,
        /// Switch even if NEW leaves the sessions of a listening VM without
        /// a route.
        #[arg(long)]
        force: bool,
    },

    /// Show every server of a map file (in ALL, listening, accept queue, pid,
    /// uptime, in the live map, state) and a summary.
    ///
    /// QUEUE is the accept queue: waiting connections/most it holds, "full"
    /// for a VM that accepts nothing (busy or hung). With --pid-dir: the pid
    /// and uptime of each VM. With --live-map: whether the live map routes
    /// to it (LIVE), and a summary line for the live map (how many servers
    /// it has, whether it has ALL).
    ///
    /// A server is a key whose value is one port (app3001 3001); ALL is the
    /// active set. States: active (in ALL, listening), draining (listening,
    /// not in ALL: serving the sessions it still has), starting (a VM is
    /// running but not listening yet), stopping (the same, outside ALL),
    /// down (in ALL, nothing running: launched on the next request that needs
    /// it), stopped.
    Status(StatusArgs),

    /// Stop the pool's VMs, only ours: SIGTERM, then SIGKILL after a grace
    /// period; say what became of each.
    ///
    /// Ours: each process that a pid record of --pid-dir names, while its pid
    /// and start time still match. SIGTERM to all at once, SIGKILL to those
    /// still running after --grace-s; one line per VM, then a summary. Exit 0
    /// when every VM recorded is gone, 2 if one could not be stopped.
    ///
    /// A record whose pid now belongs to another process is left alone (and
    /// said so). Stop the site first (a2dissite and reload Apache) to keep
    /// the launcher from launching VMs again for new requests; or stop only
    /// some VMs (--ports), such as a drained set after a cut-over.
    Stop(StopArgs),

    /// Before a reload: check what the launcher will need with the arguments
    /// the site really gives it (Apache expands its configuration; each
    /// image-launcher map is run with --check). One line per check; exit 0
    /// when all pass, 1 otherwise, 2 when Apache's configuration cannot be
    /// read.
    ///
    /// Run it beside `apache2ctl configtest`: configtest checks Apache's
    /// syntax, preflight that the VM command is an absolute path the VM user
    /// can execute, the user exists and is not root, the pid and log
    /// directories are safe, the live map exists, the balance file is good
    /// and its active set within the ports.
    Preflight(PreflightArgs),

    /// A security cut-over: switch FILE to NEW and take every server outside
    /// NEW's ALL out of service at once: their names leave FILE (a cookie
    /// naming one, real or forged, gets a new session on the new set), then
    /// their VMs are stopped.
    ///
    /// NEW is checked like `switch` checks it, and every port of its ALL
    /// must listen (--force retires anyway). FILE becomes NEW without the
    /// lines of the retired servers (the servers of FILE or NEW whose port
    /// is not in NEW's ALL), written atomically. With --live-map, the VMs are
    /// stopped once the live map routes none of them. They are stopped like
    /// `stop` stops them: only ours, SIGTERM, then SIGKILL after --grace-s.
    /// Exit 0 when every retired VM is gone, 1 if NEW cannot be used, 2 if a
    /// VM could not be stopped.
    Retire(RetireArgs),
    /// Drain this whole host for a front (HAProxy) in front of several
    /// hosts, or end the drain: its sessions go on, no new one comes.
    ///
    /// on creates FILE.drain next to the live map, off removes it; the live
    /// map's writer (image-launcher) then writes HOST drain (or up, or down)
    /// in the live map, and the site's health URL answers 404 (200, 503),
    /// which the front's http-check reads. Both wait until the live map says
    /// so (exit 0), or say why it does not (exit 2: no launcher writes the
    /// live map; the flag stays). status shows the flag and what the live
    /// map says.
    DrainHost(DrainHostArgs),
}

/// Runs a subcommand: 0 all well, 1 the file is not good, 2 a failure.
pub fn run(command: Command) -> ExitCode {
    let out = &mut io::stdout().lock();
    let result = match command {
        Command::Check { file, against } => check(out, &file, against.as_deref()),
        Command::Switch { file, new, force } => switch(out, &file, &new, force),
        Command::Status(args) => crate::status::status(out, &args),
        Command::Stop(args) => crate::stop::stop(out, &args),
        Command::Preflight(args) => crate::preflight::preflight(out, &args),
        Command::Retire(args) => crate::retire::retire(out, &args),
        Command::DrainHost(args) => crate::drain_host::drain_host(out, &args),
    };
    let result = result.and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server-map: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// A file read and parsed, or every reason it cannot be used.
pub struct Loaded {
    pub bytes: Vec<u8>,
    pub map: MapFile,
}

pub fn load(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    let whole = |message: String| Diagnostic::new(None, Severity::Error, "cannot be read", message);
    let (bytes, _) = read_settled(path).map_err(|e| vec![whole(e.to_string())])?;
    let map = MapFile::parse(&bytes).map_err(|rejected| rejected.0)?;
    Ok(Loaded { bytes, map })
}

pub fn print_diagnostics(name: &str, diagnostics: &[Diagnostic]) {
    for diag in diagnostics {
        eprintln!("{}", diag.display_in(name));
    }
}

pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn check(out: &mut impl Write, file: &Path, against: Option<&Path>) -> anyhow::Result<ExitCode> {
    let name = file.display().to_string();
    let current = match against {
        None => None,
        Some(path) => match load(path) {
            Ok(current) => Some(current),
            Err(why) => anyhow::bail!(
                "--against {}: {}; give the map file in place",
                path.display(),
                Rejected(why)
            ),
        },
    };
    match load(file) {
        Err(diagnostics) => {
            print_diagnostics(&name, &diagnostics);
            writeln!(
                out,
                "{name}: refused as a whole (a running server-map keeps its last good map)"
            )?;
            Ok(ExitCode::FAILURE)
        }
        Ok(Loaded { map, .. }) => {
            print_diagnostics(&name, map.diagnostics());
            let mut errors = map.count(Severity::Error);
            if let (Some(current), Some(against)) = (&current, against) {
                let found = orphans(&current.map, &map, &mut orphans::prober());
                if !found.is_empty() {
                    errors += 1;
                    eprintln!(
                        "{name}: error: switching {} to it {}; `switch` refuses it without --force",
                        against.display(),
                        orphaning(&found)
                    );
                }
            }
            let warnings = map.count(Severity::Warning);
            let verdict = match (errors, warnings) {
                (0, 0) => "ok".to_owned(),
                (0, w) => format!("ok, {}", plural(w, "warning")),
                (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
            };
            writeln!(
                out,
                "{name}: {verdict} ({}, {})",
                plural(map.servers().count(), "server"),
                map.summary()
            )?;
            Ok(if errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `would orphan the sessions of 2 servers whose VMs listen: app3001 (port
/// 3001), app3002 (port 3002, now 3006)`.
fn orphaning(found: &[Orphan]) -> String {
    let one = found.len() == 1;
    format!(
        "would orphan the sessions of {} whose {}: {}",
        plural(found.len(), "server"),
        if one { "VM listens" } else { "VMs listen" },
        orphans::list(found),
    )
}

fn switch(out: &mut impl Write, file: &Path, new: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let (file_name, new_name) = (file.display().to_string(), new.display().to_string());
    let next = match load(new) {
        Ok(next) => next,
        Err(diagnostics) => {
            print_diagnostics(&new_name, &diagnostics);
            eprintln!(
                "server-map: not switching: {new_name} cannot be used; {file_name} is untouched"
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    print_diagnostics(&new_name, next.map.diagnostics());
    let errors = next.map.count(Severity::Error);
    if errors > 0 {
        eprintln!(
            "server-map: not switching: {new_name} has {}; {file_name} is untouched",
            plural(errors, "error")
        );
        return Ok(ExitCode::FAILURE);
    }
    let before = load(file).ok();
    if before.as_ref().is_some_and(|old| old.bytes == next.bytes) {
        writeln!(out, "{file_name} already holds {new_name}; nothing to do")?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(old) = &before {
        let found = orphans(&old.map, &next.map, &mut orphans::prober());
        if !found.is_empty() && !force {
            eprintln!(
                "server-map: not switching: {new_name} {}; {file_name} is untouched \
                 (--force switches anyway)",
                orphaning(&found)
            );
            return Ok(ExitCode::FAILURE);
        }
        if !found.is_empty() {
            eprintln!(
                "server-map: warning: switching anyway (--force): {new_name} {}",
                orphaning(&found)
            );
        }
    }
    replace(file, &next.bytes)?;
    writeln!(out, "switched {file_name} to {new_name}")?;
    for line in changes(before.as_ref().map(|old| &old.map), &next.map) {
        writeln!(out, "  {line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to a temp file in `file`'s directory and renames it over
/// `file`: a reader sees the old file or the new one, never a mix.
pub fn replace(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let base = file
        .file_name()
        .with_context(|| format!("{} names no file", file.display()))?;
    let old = fs::metadata(file).ok();
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", base.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("writing {}", temp.path().display()))?;
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    temp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .context("setting the temp file's mode")?;
    if let Some(old) = &old
        && let Err(e) = std::os::unix::fs::fchown(temp.as_file(), Some(old.uid()), Some(old.gid()))
    {
        eprintln!(
            "server-map: warning: cannot give the new {} the old owner {}:{}: {e}",
            file.display(),
            old.uid(),
            old.gid()
        );
    }
    temp.persist(file)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the temp file over {}", file.display()))?;
    // The rename is durable once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// `KEY: before -> after` for every key whose value changed, ALL first.
fn changes(before: Option<&MapFile>, after: &MapFile) -> Vec<String> {
    let value = |map: Option<&MapFile>, key: &str| {
        map.and_then(|m| m.get(key))
            .map_or("(none)".to_owned(), |v| v.text().to_owned())
    };
    let mut keys: Vec<&str> = vec![ALL];
    let others = before
        .into_iter()
        .flat_map(MapFile::entries)
        .chain(after.entries())
        .map(|(key, _)| key);
    for key in others {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .filter_map(|key| {
            let (old, new) = (value(before, key), value(Some(after), key));
            (old != new).then(|| format!("{key}: {old} -> {new}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_list_all_first_then_keys_in_file_order() {
        let a = MapFile::parse(b"app1 1\napp2 2\nALL 1\n").expect("a");
        let b = MapFile::parse(b"app1 1\napp3 3\nALL 3\n").expect("b");
        assert_eq!(
            changes(Some(&a), &b),
            ["ALL: 1 -> 3", "app2: 2 -> (none)", "app3: (none) -> 3"]
        );
        assert_eq!(changes(None, &a)[0], "ALL: (none) -> 1");
    }
}
