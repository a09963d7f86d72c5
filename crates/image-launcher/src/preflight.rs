//! `image-launcher --check ...`: what a launch will need, checked now, with
//! the very arguments the site gives the launcher (`server-map preflight`
//! finds them in Apache's configuration and runs this). One line per check
//! on stdout, `ok` or `FAILED` with what to fix; exit status 1 on any
//! failure. Nothing is created, launched or written.
//!
//! At run time a launcher never exits for what this finds wrong with the
//! VM command: it answers `NULL` and logs why. The preflight is how an
//! operator learns it before a reload, not from the first visitors' 503s.

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use server_map::{MapFile, Severity};
use vmpool::Identity;
use vmpool::files::checked_dir;
use vmpool::systemd;

use crate::config::{Args, SystemdMode};

/// The outcome of one check.
struct Check {
    ok: bool,
    what: String,
}

/// Runs every check and prints one line each; 0 when all pass.
pub fn run(args: &Args) -> ExitCode {
    let mut checks = Vec::new();
    let user = check_user(args.user.as_deref(), &mut checks);
    check_command(args, user.as_ref(), &mut checks);
    for (flag, dir) in [("--pid-dir", &args.pid_dir), ("--log-dir", &args.log_dir)] {
        checks.push(check_dir(flag, dir));
    }
    if let Some(live) = &args.live_map {
        checks.push(check_live_map(live));
    }
    if let Some(balance) = &args.balance {
        checks.push(check_balance(balance, args));
    }
    checks.push(check_systemd(args));
    let mut out = io::stdout().lock();
    for check in &checks {
        let _ = writeln!(
            out,
            "{} {}",
            if check.ok { "ok     " } else { "FAILED " },
            check.what
        );
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    let _ = writeln!(
        out,
        "{}",
        if failed == 0 {
            format!("all {} checks passed", checks.len())
        } else {
            format!("{failed} of {} checks FAILED", checks.len())
        }
    );
    let _ = out.flush();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Whether the VMs will outlive apache2.service (`--systemd`).
fn check_systemd(args: &Args) -> Check {
    let booted = systemd::booted();
    let root = nix::unistd::geteuid().is_root();
    let systemd_run = args.systemd_run.clone().or_else(systemd::find_systemd_run);
    let runnable = systemd_run.as_deref().is_some_and(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
    });
    let scopes = format!(
        "each VM in a systemd scope of its own (seaside-vm-PORT.scope in {}), through {}: VMs outlive apache2.service",
        args.systemd_slice,
        systemd_run
            .as_deref()
            .map_or("?".into(), |p| p.display().to_string())
    );
    match (args.systemd, booted) {
        (SystemdMode::Off, true) => ok(
            "--systemd off: VMs stay in Apache's service; systemctl restart apache2 ends them (reload keeps them)"
                .into(),
        ),
        (SystemdMode::Off | SystemdMode::Auto, false) => {
            ok("no systemd: VMs run in sessions of their own, as always".into())
        }
        (SystemdMode::Scope, false) => failed(
            "--systemd scope, but systemd does not run here: every launch would fail".into(),
        ),
        (SystemdMode::Auto, true) if !root => {
            ok("--systemd auto: not root, so no scopes; VMs stay in Apache's service".into())
        }
        (_, true) if runnable => ok(scopes),
        (_, true) => failed(format!(
            "no executable systemd-run ({}): VMs would die with apache2.service; give --systemd-run, or --systemd off",
            systemd_run
                .as_deref()
                .map_or("none found".into(), |p| p.display().to_string())
        )),
    }
}

fn ok(what: String) -> Check {
    Check { ok: true, what }
}

fn failed(what: String) -> Check {
    Check { ok: false, what }
}

/// The VM user: it exists, is not root, and neither is its group.
fn check_user(spec: Option<&str>, checks: &mut Vec<Check>) -> Option<Identity> {
    let root = nix::unistd::geteuid().is_root();
    let Some(spec) = spec else {
        checks.push(if root {
            failed("no --user: as root the launcher refuses to start VMs (give e.g. --user seaside-vm)".into())
        } else {
            ok("VMs run as the launcher's own user".into())
        });
        return None;
    };
    match Identity::lookup(spec) {
        Err(e) => {
            checks.push(failed(format!(
                "--user {spec}: {e} (create it: adduser --system --group {spec})"
            )));
            None
        }
        Ok(user) if user.uid.is_root() => {
            checks.push(failed(format!("--user {spec}: VMs never run as root")));
            None
        }
        Ok(user) if user.groups.iter().any(|g| g.as_raw() == 0) || user.gid.as_raw() == 0 => {
            checks.push(failed(format!(
                "--user {spec}: its groups include group 0 (root's): give it a group of its own"
            )));
            None
        }
        Ok(user) => {
            checks.push(ok(format!(
                "--user {spec}: uid {}, gid {}",
                user.uid, user.gid
            )));
            Some(user)
        }
    }
}

/// The VM command: absolute, a regular file, executable by the VM user,
/// through directories the VM user can enter; and the working directory.
fn check_command(args: &Args, user: Option<&Identity>, checks: &mut Vec<Check>) {
    let Some(program) = args.command.first().map(PathBuf::from) else {
        checks.push(failed("no VM command after --".into()));
        return;
    };
    let shown = program.display();
    checks.push(
        if let Some(problem) = crate::supervise::command_problem(&program) {
            failed(problem)
        } else if let Some(user) = user
            && let Err(why) = reachable(&program, user, 0o1)
        {
            failed(format!("the VM command {shown}: {why}"))
        } else {
            ok(format!("the VM command {shown}: executable"))
        },
    );
    let mentions_port = args
        .command
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .chain(args.env.iter().cloned())
        .any(|a| a.contains("{port}"));
    if !mentions_port {
        checks.push(failed(
            "the VM command has no {port} in its arguments or --env: every VM would get the same command line"
                .to_owned(),
        ));
    }
    let workdir = &args.workdir;
    checks.push(match (workdir.is_dir(), user) {
        (false, _) => failed(format!("--workdir {}: not a directory", workdir.display())),
        (true, Some(user)) => match reachable(workdir, user, 0o1) {
            Ok(()) => ok(format!("--workdir {}", workdir.display())),
            Err(why) => failed(format!("--workdir {}: {why}", workdir.display())),
        },
        (true, None) => ok(format!("--workdir {}", workdir.display())),
    });
}

/// True if `user` may reach `path` (search permission on every directory
/// above it) and has the permission `bits` (as in `0o1` for execute) on it,
/// by its mode bits (ACLs aside).
fn reachable(path: &Path, user: &Identity, bits: u32) -> Result<(), String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    for dir in canonical.ancestors().skip(1) {
        if !permits(dir, user, 0o1)? {
            return Err(format!(
                "{} cannot enter {} (chmod o+x, or put the file elsewhere)",
                user.name,
                dir.display()
            ));
        }
    }
    if permits(&canonical, user, bits)? {
        Ok(())
    } else {
        Err(format!("not executable by {}", user.name))
    }
}

fn permits(path: &Path, user: &Identity, bits: u32) -> Result<bool, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    let shift = if meta.uid() == user.uid.as_raw() {
        6
    } else if meta.gid() == user.gid.as_raw()
        || user.groups.iter().any(|g| g.as_raw() == meta.gid())
    {
        3
    } else {
        0
    };
    Ok((mode >> shift) & bits == bits)
}

/// A directory the launcher writes in: safe as it is, or creatable (its
/// parent exists and is safe).
fn check_dir(flag: &str, dir: &Path) -> Check {
    if dir.exists() {
        return match checked_dir(dir) {
            Ok(dir) => ok(format!("{flag} {}", dir.display())),
            Err(e) => failed(format!("{flag}: {e}")),
        };
    }
    match dir.parent().map(checked_dir) {
        Some(Ok(parent)) => ok(format!(
            "{flag} {}: missing, the launcher creates it in {} (mode 0755)",
            dir.display(),
            parent.display()
        )),
        Some(Err(e)) => failed(format!(
            "{flag} {}: missing, and its parent: {e}",
            dir.display()
        )),
        None => failed(format!("{flag} {}: not a directory path", dir.display())),
    }
}

/// Apache refuses to start without the live map's file.
fn check_live_map(path: &Path) -> Check {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Err(e) = checked_dir(dir) {
        return failed(format!("--live-map {}: its directory: {e}", path.display()));
    }
    if path.is_file() {
        ok(format!("--live-map {}", path.display()))
    } else {
        failed(format!(
            "--live-map {}: missing: Apache refuses to start without it (the install creates it; or: printf '# live map\\n' > {})",
            path.display(),
            path.display()
        ))
    }
}

/// The balance file: good, and its active set within `--ports`.
fn check_balance(path: &Path, args: &Args) -> Check {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return failed(format!("--balance {}: {e}", path.display())),
    };
    let map = match MapFile::parse(&bytes) {
        Ok(map) => map,
        Err(rejected) => {
            return failed(format!(
                "--balance {}: {rejected} (server-map check {} explains)",
                path.display(),
                path.display()
            ));
        }
    };
    let errors = map.count(Severity::Error);
    if errors > 0 {
        return failed(format!(
            "--balance {}: {errors} error(s): run server-map check {}",
            path.display(),
            path.display()
        ));
    }
    let active = map.active_ports();
    let outside: Vec<u16> = active
        .iter()
        .copied()
        .filter(|&p| !args.ports.contains(p))
        .collect();
    if active.is_empty() {
        failed(format!(
            "--balance {}: no ALL entry: no active set",
            path.display()
        ))
    } else if !outside.is_empty() {
        failed(format!(
            "--balance {}: ALL lists {outside:?}, outside --ports {}",
            path.display(),
            args.ports
        ))
    } else {
        ok(format!(
            "--balance {}: {}; ports {}",
            path.display(),
            map.summary(),
            args.ports
        ))
    }
}
