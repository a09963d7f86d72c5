//! VMs in systemd scopes of their own (`--systemd scope`, vmpool::systemd).
//!
//! These machines have no systemd, so `systemd-run` here is a STAND-IN: a
//! shell script that records its arguments and then does to the process
//! what `systemd-run --scope` does once the scope exists: exec the command
//! after `--`, in the same process. What this verifies: the command line
//! (the unit named after the port, the slice, the properties), and the
//! chain systemd-run -> image-launcher --exec-vm -> VM in one process: the
//! pid record names the VM, which runs as its user with its groups. What it
//! cannot verify: that systemd creates the scope, that the VM then survives
//! `systemctl restart apache2`, that the properties take effect
//! (docs/operations.md says so too).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;

/// The stand-in for systemd-run (see the module doc), in the pool's
/// directory: it writes its arguments to `systemd-run.args.PID`, one per
/// line, then execs the command after `--`; or, with `fail`, says what
/// systemd-run says for a unit that exists and exits 1.
fn stand_in_systemd_run(pool: &Pool, fail: bool) -> PathBuf {
    let path = pool.dir.path().join("systemd-run");
    let tail = if fail {
        "echo 'Failed to start transient scope unit: Unit seaside-vm.scope already exists.' >&2\nexit 1\n"
    } else {
        "while [ \"$#\" -gt 0 ] && [ \"$1\" != \"--\" ]; do shift; done\nshift\nexec \"$@\"\n"
    };
    let script = format!(
        "#!/bin/sh\n# A stand-in for systemd-run --scope (no systemd here).\n\
         printf '%s\\n' \"$@\" > \"$(dirname \"$0\")/systemd-run.args.$$\"\n{tail}"
    );
    fs::write(&path, script).expect("write the stand-in");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn recorded_args(pool: &Pool, pid: u32) -> Vec<String> {
    let file = pool.dir.path().join(format!("systemd-run.args.{pid}"));
    fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_vm_runs_in_its_port_s_scope_through_systemd_run_in_one_process() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let systemd_run = stand_in_systemd_run(&pool, false);
    let options = [
        "--systemd",
        "scope",
        "--systemd-run",
        systemd_run.to_str().expect("utf-8 path"),
        "--vm-property",
        "MemoryMax=2G",
        "--vm-property",
        "CPUQuota=100%",
    ];
    let l = pool.launcher(&options, &[]);
    let (answer, _) = pool.ask(l, &port.to_string());
    assert_eq!(answer, port.to_string(), "{}", pool.stderr(l));
    assert!(
        pool.stderr(l).contains("systemd scope of its own"),
        "{}",
        pool.stderr(l)
    );

    // One process: the stand-in's pid is the VM's, as the record says.
    let vm = pool.record(port).expect("record").pid;
    let args = recorded_args(&pool, vm);
    let exe = fs::read_link(format!("/proc/{vm}/exe")).expect("exe");
    assert_eq!(exe, pool.demo_vm(), "the recorded pid runs the VM");

    let mut expected: Vec<String> = [
        "--scope".to_owned(),
        "--quiet".into(),
        "--collect".into(),
        format!("--unit=seaside-vm-{port}.scope"),
        format!("--description=seaside-pool VM on port {port}"),
        "--slice=seaside-pool.slice".into(),
        "--property=MemoryMax=2G".into(),
        "--property=CPUQuota=100%".into(),
        "--".into(),
    ]
    .into();
    if is_root() {
        // The launcher drops privileges after systemd-run, through itself.
        let nobody = nix::unistd::User::from_name("nobody")
            .expect("getpwnam")
            .expect("nobody");
        let name = std::ffi::CString::new("nobody").expect("cstring");
        let mut groups = nix::unistd::getgrouplist(&name, nobody.gid).expect("groups");
        groups.sort_unstable_by_key(|g| g.as_raw());
        groups.dedup();
        let groups: Vec<String> = groups.iter().map(ToString::to_string).collect();
        expected.extend([
            fs::canonicalize(LAUNCHER)
                .expect("launcher path")
                .display()
                .to_string(),
            "--exec-vm".into(),
            nobody.uid.to_string(),
            nobody.gid.to_string(),
            groups.join(","),
            "--".into(),
        ]);
        let status = fs::read_to_string(format!("/proc/{vm}/status")).expect("status");
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .expect("Uid line");
        assert!(
            uids.split_whitespace().all(|u| u == nobody.uid.to_string()),
            "the VM runs as nobody: {uids}"
        );
        let seen = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .expect("Groups line");
        let mut seen: Vec<&str> = seen.split_whitespace().collect();
        seen.sort_unstable_by_key(|g| g.parse::<u32>().unwrap_or(u32::MAX));
        assert_eq!(seen, groups, "the VM has its user's groups");
    } else {
        eprintln!("(not root: no privilege drop, so no dropper in the command line)");
    }
    expected.extend([
        pool.demo_vm().display().to_string(),
        "--port".into(),
        port.to_string(),
    ]);
    assert_eq!(args, expected);
}

#[test]
fn a_scope_that_cannot_be_made_is_a_failed_start_with_systemd_run_s_words_in_the_vm_log() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let systemd_run = stand_in_systemd_run(&pool, true);
    let l = pool.launcher(
        &[
            "--systemd",
            "scope",
            "--systemd-run",
            systemd_run.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let (answer, _) = pool.ask(l, &port.to_string());
    assert_eq!(answer, "NULL", "{}", pool.stderr(l));
    assert!(
        pool.log(port)
            .contains("Unit seaside-vm.scope already exists"),
        "{}",
        pool.log(port)
    );
    // The map goes on answering.
    let (again, _) = pool.ask(l, &port.to_string());
    assert_eq!(again, "NULL");
}

#[test]
fn without_systemd_auto_runs_vms_as_before() {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        eprintln!("SKIPPED: this machine runs systemd (auto would use scopes)");
        return;
    }
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let l = pool.launcher(&["--systemd", "auto"], &[]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    assert!(
        !pool.stderr(l).contains("systemd scope"),
        "{}",
        pool.stderr(l)
    );
    let vm = pool.record(port).expect("record").pid;
    let exe = fs::read_link(format!("/proc/{vm}/exe")).expect("exe");
    assert_eq!(exe, pool.demo_vm());
}
