//! VMs that outlive Apache's service: under systemd, each VM runs in a
//! transient scope of its own (`seaside-vm-PORT.scope`, in
//! `seaside-pool.slice`), started through `systemd-run --scope`.
//!
//! Why: Debian's `apache2.service` has `KillMode=mixed`. On `systemctl
//! restart apache2` (which `a2enmod` asks for, and package upgrades run)
//! systemd sends SIGKILL to every process left in Apache's cgroup: without
//! a unit of its own, every VM and every session would die. A VM in its own
//! scope is in its own cgroup, and lives on.
//!
//! Why a scope and not a service: `systemd-run --scope` registers the scope
//! and then execs the command in the same process. The VM stays the
//! launcher's child, with the pid and start time its pid record holds, its
//! session, its log file and its exit status, exactly as without systemd;
//! `server-map stop`, the watcher's pidfds and the exit causes need nothing
//! new. A service would be started by systemd itself: a pid to learn
//! afterwards, another privilege drop, output in the journal, exit causes
//! from systemd. What a scope does not give is a `/tmp` of its own: the VM
//! keeps Apache's mount namespace (with `PrivateTmp=true`, Apache's private
//! `/tmp`, which systemd removes when `apache2.service` stops), so VMs must
//! not keep anything in `/tmp` (docs/operations.md says so).
//!
//! The chain, in one process: the launcher's child (root, in its own
//! session, stdio and signals set up) execs `systemd-run --scope ... --
//! image-launcher --exec-vm UID GID GROUPS -- PROGRAM ARGS`; systemd-run
//! (root: a scope of the system manager needs it) registers the scope and
//! execs the dropper; the dropper ([`exec_dropped`]) drops privileges with
//! the same checked code as without systemd, and execs the VM. Per-VM
//! limits are `--property` values (`MemoryMax=2G`, `CPUQuota=100%`).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Gid, Uid};

use crate::spawn::{Identity, drop_privileges};

/// The argument that makes image-launcher the dropper ([`exec_dropped`]).
pub const EXEC_VM: &str = "--exec-vm";

/// Where systemd-run is looked for.
const SYSTEMD_RUN: [&str; 2] = ["/usr/bin/systemd-run", "/bin/systemd-run"];

/// True when systemd is the init system (its own test: `/run/systemd/system`
/// is a directory, as `sd_booted` checks).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The installed systemd-run, if any.
pub fn find_systemd_run() -> Option<PathBuf> {
    SYSTEMD_RUN.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// How to put one VM in a scope of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The systemd-run to exec.
    pub systemd_run: PathBuf,
    /// The slice the scopes go in (`seaside-pool.slice`).
    pub slice: String,
    /// `NAME=VALUE` unit properties for every VM (`MemoryMax=2G`).
    pub properties: Vec<String>,
    /// The program that drops privileges after systemd-run: image-launcher
    /// itself, run with [`EXEC_VM`].
    pub dropper: PathBuf,
}

impl Scope {
    /// The unit's name for the VM on `port`.
    pub fn unit(port: u16) -> String {
        format!("seaside-vm-{port}.scope")
    }

    /// The program to exec and its arguments, for the VM on `port` that
    /// runs `program args` as `user` (as the launcher's own user: `None`).
    pub fn command_line(
        &self,
        port: u16,
        user: Option<&Identity>,
        program: &Path,
        args: &[OsString],
    ) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            "--scope".into(),
            "--quiet".into(),
            "--collect".into(),
            format!("--unit={}", Scope::unit(port)).into(),
            format!("--description=seaside-pool VM on port {port}").into(),
            format!("--slice={}", self.slice).into(),
        ];
        argv.extend(
            self.properties
                .iter()
                .map(|p| format!("--property={p}").into()),
        );
        argv.push("--".into());
        if let Some(user) = user {
            argv.push(self.dropper.clone().into());
            argv.push(EXEC_VM.into());
            argv.push(user.uid.to_string().into());
            argv.push(user.gid.to_string().into());
            argv.push(groups_arg(&user.groups).into());
            argv.push("--".into());
        }
        argv.push(program.into());
        argv.extend(args.iter().cloned());
        argv
    }
}

/// `10,20,30`, or `-` for none.
fn groups_arg(groups: &[Gid]) -> String {
    if groups.is_empty() {
        return "-".to_owned();
    }
    groups
        .iter()
        .map(Gid::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The dropper: `UID GID GROUPS -- PROGRAM ARGS...` (the arguments after
/// [`EXEC_VM`]). Drops privileges (supplementary groups, gid, uid, then
/// proof that root cannot be regained) and execs PROGRAM with the
/// environment as it is. Returns only on failure.
pub fn exec_dropped(args: &[OsString]) -> io::Error {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{EXEC_VM}: {what} (UID GID GROUPS -- PROGRAM ARGS)"),
        )
    };
    let text = |a: &OsStr| a.to_str().map(str::to_owned);
    let (Some(uid), Some(gid), Some(groups), Some(dashes)) = (
        args.first().and_then(|a| text(a)?.parse::<u32>().ok()),
        args.get(1).and_then(|a| text(a)?.parse::<u32>().ok()),
        args.get(2).and_then(|a| text(a)),
        args.get(3),
    ) else {
        return invalid("bad ids");
    };
    if dashes != "--" || args.len() < 5 {
        return invalid("no program");
    }
    let groups: Option<Vec<Gid>> = if groups == "-" {
        Some(Vec::new())
    } else {
        groups
            .split(',')
            .map(|g| g.parse::<u32>().ok().map(Gid::from_raw))
            .collect()
    };
    let Some(groups) = groups else {
        return invalid("bad groups");
    };
    let program = Path::new(&args[4]);
    if !program.is_absolute() {
        return invalid("the program must be an absolute path");
    }
    if uid == 0 || gid == 0 || groups.iter().any(|g| g.as_raw() == 0) {
        return invalid("refusing root or group 0");
    }
    if let Err(e) = drop_privileges(Uid::from_raw(uid), Gid::from_raw(gid), &groups) {
        return e;
    }
    Command::new(program).args(&args[5..]).exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope {
            systemd_run: PathBuf::from("/usr/bin/systemd-run"),
            slice: "seaside-pool.slice".into(),
            properties: vec!["MemoryMax=2G".into(), "CPUQuota=100%".into()],
            dropper: PathBuf::from("/usr/bin/image-launcher"),
        }
    }

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_vm_of_another_user_runs_through_the_dropper_in_its_port_s_scope() {
        let user = Identity {
            name: "seaside-vm".into(),
            uid: Uid::from_raw(998),
            gid: Gid::from_raw(997),
            groups: vec![Gid::from_raw(997), Gid::from_raw(44)],
            home: PathBuf::from("/nonexistent"),
        };
        let argv = scope().command_line(
            3001,
            Some(&user),
            Path::new("/usr/bin/squeak"),
            &["app.image".into(), "port".into(), "3001".into()],
        );
        assert_eq!(
            strings(&argv),
            [
                "--scope",
                "--quiet",
                "--collect",
                "--unit=seaside-vm-3001.scope",
                "--description=seaside-pool VM on port 3001",
                "--slice=seaside-pool.slice",
                "--property=MemoryMax=2G",
                "--property=CPUQuota=100%",
                "--",
                "/usr/bin/image-launcher",
                "--exec-vm",
                "998",
                "997",
                "997,44",
                "--",
                "/usr/bin/squeak",
                "app.image",
                "port",
                "3001",
            ]
        );
    }

    #[test]
    fn without_a_user_the_vm_is_run_directly() {
        let argv = scope().command_line(3002, None, Path::new("/bin/vm"), &[]);
        let argv = strings(&argv);
        assert_eq!(argv[argv.len() - 2..], ["--", "/bin/vm"]);
        assert!(!argv.contains(&EXEC_VM.to_owned()));
    }

    #[test]
    fn the_dropper_refuses_what_it_cannot_do_safely() {
        let args = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        for bad in [
            args(&["x", "1", "-", "--", "/bin/true"]),
            args(&["1", "1", "-", "/bin/true"]),
            args(&["1", "1", "-", "--"]),
            args(&["1", "1", "1,x", "--", "/bin/true"]),
            args(&["1", "1", "-", "--", "true"]),
            args(&["0", "1", "-", "--", "/bin/true"]),
            args(&["1", "0", "-", "--", "/bin/true"]),
            args(&["1", "1", "5,0", "--", "/bin/true"]),
        ] {
            let e = exec_dropped(&bad);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {e}");
        }
    }
}
