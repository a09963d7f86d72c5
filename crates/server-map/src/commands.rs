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
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use server_map::cli::Command;
use server_map::orphans::{self, Orphan, orphans};
use server_map::{ALL, Diagnostic, MapFile, Rejected, Severity, read_settled};

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
