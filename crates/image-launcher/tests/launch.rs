//! image-launcher driven exactly as Apache drives it (the real binary, an
//! empty environment, pipes), launching real `demo-vm` processes on
//! loopback ports.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmpool::listen_table::ListenTable;
use vmpool::{Liveness, PidRecord};

#[test]
fn a_listening_port_is_answered_at_once_and_nothing_is_launched() {
    let mut pool = Pool::new(2);
    let vm = pool.stand_in(pool.ports[0]);
    let l = pool.launcher(&[], &[]);
    let port = pool.ports[0].to_string();
    for _ in 0..3 {
        let (answer, took) = pool.ask(l, &port);
        assert_eq!(answer, port);
        assert!(took < Duration::from_millis(100), "{took:?}");
    }
    assert!(pool.record(pool.ports[0]).is_none(), "nothing launched");
    assert!(pool.log(pool.ports[0]).is_empty());
    drop(vm);
}

#[test]
fn a_cold_pool_launches_the_vm_and_answers_its_own_port() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let l = pool.launcher(&[], &[]);
    let (answer, _) = pool.ask(l, &port.to_string());
    assert_eq!(answer, port.to_string(), "{}", pool.stderr(l));
    let record = pool.record(port).expect("a pid record");
    assert!(matches!(
        record.liveness().expect("liveness"),
        Liveness::Running { .. }
    ));
    // The recorded process is the one that owns the listening socket.
    let mut table = ListenTable::open().expect("sock_diag");
    let socket = table
        .listeners(port)
        .expect("listeners")
        .into_iter()
        .find(|l| l.addr.port() == port)
        .expect("a listening socket");
    let owns_it = fs::read_dir(format!("/proc/{}/fd", record.pid))
        .expect("fds")
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .any(|target| target == Path::new(&format!("socket:[{}]", socket.inode)));
    assert!(
        owns_it,
        "pid {} does not own the socket on {port}",
        record.pid
    );
    let pid_file =
        fs::read_to_string(pool.pid_dir().join(format!("{port}.pid"))).expect("pid file");
    assert_eq!(
        pid_file.lines().next(),
        Some(record.pid.to_string().as_str())
    );
    wait_until("the VM's output in its log", BOUND, || {
        pool.log(port).contains("listening on")
    });
}

#[test]
fn a_warm_pool_answers_another_port_at_once_while_the_key_vm_starts() {
    let mut pool = Pool::new(2);
    let (warm, cold) = (pool.ports[0], pool.ports[1]);
    let _vm = pool.stand_in(warm);
    let l = pool.launcher(&[], &["--start-delay-ms", "3000"]);
    let (answer, took) = pool.ask(l, &cold.to_string());
    assert_eq!(answer, warm.to_string());
    assert!(took < Duration::from_millis(100), "took {took:?}");
    // Meanwhile the key's VM comes up, and is then answered for itself.
    wait_until("the key's VM", BOUND, || listening(cold));
    assert_eq!(pool.ask(l, &cold.to_string()).0, cold.to_string());
}

#[test]
fn with_wait_the_lookup_waits_for_the_key_vm() {
    let mut pool = Pool::new(2);
    let (warm, cold) = (pool.ports[0], pool.ports[1]);
    let _vm = pool.stand_in(warm);
    let l = pool.launcher(&["--wait"], &["--start-delay-ms", "500"]);
    let (answer, took) = pool.ask(l, &cold.to_string());
    assert_eq!(answer, cold.to_string(), "{}", pool.stderr(l));
    assert!(took >= Duration::from_millis(500), "took {took:?}");
}

#[test]
fn a_vm_that_exits_at_once_gets_null_and_then_backs_off() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0].to_string();
    let l = pool.launcher(&[], &["--exit-after-s", "0"]);
    let (answer, took) = pool.ask(l, &port);
    assert_eq!(answer, "NULL");
    assert!(
        took < Duration::from_secs(5),
        "NULL only after {took:?}, the timeout is 10 s"
    );
    assert!(
        pool.launchers[l].wait_stderr("before listening", BOUND),
        "{}",
        pool.stderr(l)
    );
    // Right after: no relaunch, an immediate NULL, and the backoff is said.
    let (answer, took) = pool.ask(l, &port);
    assert_eq!(answer, "NULL");
    assert!(took < Duration::from_millis(100), "took {took:?}");
    assert!(
        pool.launchers[l].wait_stderr("keeps failing to start", BOUND),
        "{}",
        pool.stderr(l)
    );
    assert_eq!(pool.starts_logged(pool.ports[0]), 1);
}

#[test]
fn a_vm_that_crashes_later_is_relaunched_on_the_next_lookup_with_a_new_pid() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    // It ran longer than --min-uptime-ms: a crash, not a failed start.
    let l = pool.launcher(&["--min-uptime-ms", "500"], &["--exit-after-s", "1"]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    let first = pool.record(port).expect("record");
    // The launcher reaps its VM when it dies: no zombie is left.
    wait_until("the crashed VM to be reaped", BOUND, || {
        first.liveness().ok() == Some(Liveness::Gone) && !listening(port)
    });
    assert_eq!(
        pool.ask(l, &port.to_string()).0,
        port.to_string(),
        "{}",
        pool.stderr(l)
    );
    let second = pool.record(port).expect("record");
    assert_ne!(second.pid, first.pid);
    assert!(matches!(
        second.liveness().expect("liveness"),
        Liveness::Running { .. }
    ));
}

#[test]
fn a_vm_that_never_listens_is_killed_by_its_watcher_at_its_start_timeout() {
    let mut pool = Pool::new(1);
    pool.start_timeout_ms = 300;
    let port = pool.ports[0];
    let l = pool.launcher(&[], &["--start-delay-ms", "600000"]);
    assert_eq!(pool.ask(l, &port.to_string()).0, "NULL");
    let hung = pool.record(port).expect("record");
    // No further lookup: its watcher stops it once the timeout has passed.
    wait_until("the VM that never listened to be killed", BOUND, || {
        !matches!(hung.liveness(), Ok(Liveness::Running { .. }))
    });
    assert!(
        pool.launchers[l].wait_stderr("did not listen within its start timeout", BOUND),
        "{}",
        pool.stderr(l)
    );
    // After the backoff, the next lookup starts one fresh VM, never two.
    wait_until("a fresh VM after the backoff", BOUND, || {
        let _ = pool.ask(l, &port.to_string());
        pool.record(port).is_some_and(|r| r.pid != hung.pid)
    });
    // Never two alive (the fresh one may be stopped already: it never
    // listens either, and its start timeout is short).
    let vms = Pool::vms_on(port);
    assert!(vms.len() <= 1, "VMs alive on {port}: {vms:?}");
}

#[test]
fn a_stale_record_naming_an_unrelated_live_process_leaves_it_alive() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let mut stranger = Command::new("sleep").arg("60").spawn().expect("sleep");
    let real = PidRecord::of_process(stranger.id()).expect("record");
    // As if the pid had been recycled: same pid, another start time.
    PidRecord {
        start_ticks: real.start_ticks - 1,
        ..real.clone()
    }
    .write(&pool.pid_dir(), port)
    .expect("write");
    let l = pool.launcher(&[], &[]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    assert!(matches!(
        real.liveness().expect("liveness"),
        Liveness::Running { .. }
    ));
    assert!(
        pool.stderr(l).contains("leaving it alone"),
        "{}",
        pool.stderr(l)
    );
    assert_ne!(pool.record(port).expect("record").pid, stranger.id());
    // A bare pid (the original launcher's format) is not trusted either.
    let _ = stranger.kill();
    let _ = stranger.wait();
}

#[test]
fn a_bare_pid_file_of_the_original_launcher_is_never_trusted() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let mut stranger = Command::new("sleep").arg("60").spawn().expect("sleep");
    fs::write(
        pool.pid_dir().join(format!("{port}.pid")),
        format!("{}\n", stranger.id()),
    )
    .expect("write");
    let l = pool.launcher(&[], &[]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    assert!(
        stranger.try_wait().expect("try_wait").is_none(),
        "the stranger was killed"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
}

#[test]
fn the_pid_record_of_a_dead_process_is_replaced() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let mut gone = Command::new("true").spawn().expect("true");
    let record = PidRecord::of_process(gone.id()).expect("record");
    gone.wait().expect("reap");
    record.write(&pool.pid_dir(), port).expect("write");
    let l = pool.launcher(&[], &[]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    let now = pool.record(port).expect("record");
    assert_ne!(now, record);
    assert!(matches!(
        now.liveness().expect("liveness"),
        Liveness::Running { .. }
    ));
}

#[test]
fn eight_launchers_asked_at_once_for_one_closed_port_start_one_vm() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let launchers: Vec<usize> = (0..8)
        .map(|_| pool.launcher(&[], &["--start-delay-ms", "200"]))
        .collect();
    let key = format!("{port}\n");
    for &l in &launchers {
        // Written to all eight before any answer is read.
        pool.launchers[l].send(key.trim().as_bytes()).expect("send");
    }
    for &l in &launchers {
        let answer = pool.launchers[l].read_line(BOUND).expect("answer");
        assert_eq!(answer, port.to_string(), "{}", pool.stderr(l));
    }
    std::thread::sleep(Duration::from_millis(300));
    let vms = Pool::vms_on(port);
    assert_eq!(vms.len(), 1, "VMs on {port}: {vms:?}");
    assert_eq!(pool.record(port).expect("record").pid, vms[0]);
}

#[test]
fn shell_metacharacters_in_arguments_stay_arguments() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let witness = pool.dir.path().join("pwned");
    let mut args = pool.args(&[]);
    args.extend([
        "--".into(),
        "/bin/echo".into(),
        format!("{{port}};touch {}", witness.display()).into(),
        format!("$(touch {})", witness.display()).into(),
    ]);
    let l = pool.launcher_with(args);
    assert_eq!(pool.ask(l, &port.to_string()).0, "NULL");
    wait_until("echo's output", BOUND, || pool.log(port).contains("touch"));
    assert!(!witness.exists(), "a shell ran the arguments");
    assert!(
        pool.log(port)
            .contains(&format!("{port};touch {}", witness.display())),
        "{}",
        pool.log(port)
    );
}

#[test]
fn keys_outside_the_pool_and_garbage_get_null_and_launch_nothing() {
    let mut pool = Pool::new(1);
    let outside = free_port();
    let l = pool.launcher(&[], &[]);
    let in_pool = pool.ports[0];
    for key in [
        outside.to_string(),
        format!("{in_pool}|{outside}"),
        String::new(),
        "garbage".into(),
        format!("+{in_pool}"),
        format!("{in_pool};reboot"),
        "0".into(),
        "99999".into(),
    ] {
        let (answer, took) = pool.ask(l, &key);
        assert_eq!(answer, "NULL", "{key:?}");
        assert!(took < Duration::from_millis(100), "{key:?} took {took:?}");
    }
    assert!(pool.record(in_pool).is_none());
    assert!(pool.log(in_pool).is_empty());
    assert!(Pool::vms_on(outside).is_empty() && Pool::vms_on(in_pool).is_empty());
}

#[test]
fn the_vm_outlives_its_launcher_and_holds_none_of_its_pipes() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let l = pool.launcher(&[], &[]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    let launcher_pid = pool.launchers[l].pid();
    let link = |pid: u32, fd: &str| fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
    let (stdin, stdout) = (
        link(launcher_pid, "0").expect("stdin"),
        link(launcher_pid, "1").expect("stdout"),
    );
    let vm = pool.record(port).expect("record").pid;
    let vm_fds: Vec<(String, PathBuf)> = fs::read_dir(format!("/proc/{vm}/fd"))
        .expect("fds")
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                fs::read_link(e.path()).ok()?,
            ))
        })
        .collect();
    for (fd, target) in &vm_fds {
        assert!(
            target != &stdin && target != &stdout,
            "VM fd {fd} is the launcher's pipe {target:?}"
        );
        assert!(
            !target.to_string_lossy().starts_with("pipe:"),
            "VM fd {fd} is a pipe"
        );
    }
    assert_eq!(link(vm, "0"), Some(PathBuf::from("/dev/null")));
    let log = pool.dir.path().join("log").join(format!("{port}.log"));
    assert_eq!(link(vm, "1").as_deref(), Some(log.as_path()));
    assert_eq!(link(vm, "2").as_deref(), Some(log.as_path()));
    // End of input: the launcher exits 0; the VM goes on listening.
    let launcher = pool.launchers.remove(l);
    let (status, stderr) = launcher.finish(BOUND).expect("finish");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert!(listening(port), "the VM died with its launcher");
    assert!(matches!(
        PidRecord::read(&pool.pid_dir(), port)
            .expect("r")
            .expect("r")
            .liveness()
            .expect("l"),
        Liveness::Running { .. }
    ));
}

#[test]
fn vms_run_as_the_user_with_its_groups() {
    if !is_root() {
        eprintln!("SKIPPED: dropping privileges needs root");
        return;
    }
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let l = pool.launcher(&[], &[]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    let vm = pool.record(port).expect("record").pid;
    let status = fs::read_to_string(format!("/proc/{vm}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("getpwnam")
        .expect("nobody");
    let uid = nobody.uid.to_string();
    assert_eq!(field("Uid"), [uid.as_str(); 4]);
    let gid = nobody.gid.to_string();
    assert_eq!(field("Gid"), [gid.as_str(); 4]);
    let name = std::ffi::CString::new("nobody").expect("cstring");
    let mut groups: Vec<String> = nix::unistd::getgrouplist(&name, nobody.gid)
        .expect("groups")
        .iter()
        .map(|g| g.to_string())
        .collect();
    groups.sort();
    groups.dedup();
    let mut seen: Vec<String> = field("Groups").into_iter().map(str::to_owned).collect();
    seen.sort();
    assert_eq!(seen, groups);
}

#[test]
fn root_without_user_is_refused_with_exit_code_2() {
    if !is_root() {
        eprintln!("SKIPPED: only root must give --user");
        return;
    }
    let pool = Pool::new(1);
    let out = Command::new(LAUNCHER)
        .env_clear()
        .args(["--ports", &pool.spec(), "--pid-dir"])
        .arg(pool.pid_dir())
        .arg("--log-dir")
        .arg(pool.dir.path().join("log"))
        .arg("--")
        .arg(pool.demo_vm())
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--user"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_vm_user_with_group_0_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: only root can name another user");
        return;
    }
    let pool = Pool::new(1);
    for user in ["nobody:0", "nobody:root"] {
        let out = Command::new(LAUNCHER)
            .env_clear()
            .args(["--ports", &pool.spec(), "--user", user, "--pid-dir"])
            .arg(pool.pid_dir())
            .arg("--log-dir")
            .arg(pool.dir.path().join("log"))
            .arg("--")
            .arg(pool.demo_vm())
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{user}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("group 0"), "{user}: {stderr}");
    }
}

#[test]
fn an_unsafe_pid_dir_is_refused() {
    let mut pool = Pool::new(1);
    // World-writable, sticky or not: any user could plant a lock or a
    // symlinked record.
    for mode in [0o777, 0o1777] {
        fs::set_permissions(pool.pid_dir(), fs::Permissions::from_mode(mode)).expect("chmod");
        let l = pool.launcher(&[], &[]);
        let status = pool.launchers[l].wait_exit(BOUND).expect("wait");
        assert_eq!(status.and_then(|s| s.code()), Some(2), "mode {mode:o}");
        assert!(
            pool.launchers[l].wait_stderr("writable by others", BOUND),
            "{}",
            pool.stderr(l)
        );
    }
}

#[test]
fn a_pid_dir_under_a_directory_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to give a directory to nobody");
        return;
    }
    let mut pool = Pool::new(1);
    // nobody owns the directory above the pid directory: it could rename
    // the pid directory away and put its own in its place.
    let theirs = pool.dir.path().join("theirs");
    fs::create_dir_all(theirs.join("pid")).expect("mkdir");
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    let mut args = pool.args(&[]);
    let at = args
        .iter()
        .position(|a| a == "--pid-dir")
        .expect("--pid-dir")
        + 1;
    args[at] = theirs.join("pid").into();
    args.extend([
        "--".into(),
        pool.demo_vm().into(),
        "--port".into(),
        "{port}".into(),
    ]);
    let l = pool.launcher_with(args);
    let status = pool.launchers[l].wait_exit(BOUND).expect("wait");
    assert_eq!(status.and_then(|s| s.code()), Some(2));
    assert!(
        pool.launchers[l].wait_stderr(&format!("refusing {}", theirs.display()), BOUND),
        "{}",
        pool.stderr(l)
    );
}

#[test]
fn sigterm_ends_a_launcher_waiting_in_a_cold_pool_within_a_second() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let l = pool.launcher(&[], &["--start-delay-ms", "8000"]);
    pool.launchers[l]
        .send(port.to_string().as_bytes())
        .expect("send");
    wait_until("the launch", BOUND, || pool.record(port).is_some());
    let sent = Instant::now();
    kill(
        Pid::from_raw(pool.launchers[l].pid() as i32),
        Signal::SIGTERM,
    )
    .expect("kill");
    let status = pool.launchers[l]
        .wait_exit(Duration::from_secs(1))
        .expect("wait");
    assert!(status.is_some(), "still running 1 s after SIGTERM");
    assert!(sent.elapsed() < Duration::from_secs(1));
}

#[test]
fn with_balance_a_starting_vm_is_covered_by_the_active_set_once_one_is_up() {
    let mut pool = Pool::new(4);
    let (old, active, key1, key2) = (pool.ports[0], pool.ports[1], pool.ports[2], pool.ports[3]);
    // A VM of the old set listens; the active set is active|key1|key2.
    let _old_vm = pool.stand_in(old);
    let balance = pool.dir.path().join("balance.conf");
    let names: String = pool.ports.iter().map(|p| format!("app{p} {p}\n")).collect();
    fs::write(&balance, format!("{names}ALL {active}|{key1}|{key2}\n")).expect("write");
    let balance_arg = balance.display().to_string();
    let l = pool.launcher(&["--balance", &balance_arg], &["--start-delay-ms", "300"]);
    // Nothing of the active set listens, the old set does (a cut-over to a
    // set not yet started): the old set's VM takes the new session at once
    // rather than a 503 or a stall, while the key's VM starts.
    let (answer, took) = pool.ask(l, &key1.to_string());
    assert_eq!(answer, old.to_string(), "{}", pool.stderr(l));
    assert!(took < Duration::from_millis(100), "{took:?}");
    wait_until("the key's VM", BOUND, || listening(key1));
    assert_eq!(pool.ask(l, &key1.to_string()).0, key1.to_string());
    // Once VMs of the active set listen, they cover for a starting one; the
    // old set's VM never does.
    let _active_vm = pool.stand_in(active);
    for _ in 0..10 {
        let (answer, took) = pool.ask(l, &key2.to_string());
        if answer == key2.to_string() {
            break; // its VM is up already
        }
        assert!(
            answer == active.to_string() || answer == key1.to_string(),
            "answered {answer}"
        );
        assert!(took < Duration::from_millis(100), "{took:?}");
    }
}

#[test]
fn a_vm_whose_socket_listens_is_never_killed_even_when_it_accepts_nothing() {
    let mut pool = Pool::new(1);
    pool.start_timeout_ms = 300;
    let port = pool.ports[0];
    let l = pool.launcher(&["--probe", "connect"], &["--never-accept"]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    let vm = pool.record(port).expect("record");
    // Its accept queue fills up: to a connect probe, it is now down.
    let queued =
        vmpool::listen_table::fill_accept_queue(([127, 0, 0, 1], port).into()).expect("fill");
    // Past its start timeout, a lookup must not kill it: its socket listens.
    std::thread::sleep(Duration::from_millis(400));
    let _ = pool.ask(l, &port.to_string());
    assert!(
        pool.launchers[l].wait_stderr("left alone", BOUND),
        "{}",
        pool.stderr(l)
    );
    assert!(
        matches!(vm.liveness().expect("liveness"), Liveness::Running { .. }),
        "the busy VM was killed"
    );
    assert_eq!(
        pool.record(port).expect("record").pid,
        vm.pid,
        "a second VM was launched"
    );
    drop(queued);
}

#[test]
fn missing_pid_and_log_dirs_are_created_as_after_a_reboot() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    fs::remove_dir(pool.pid_dir()).expect("rmdir");
    fs::remove_dir(pool.dir.path().join("log")).expect("rmdir");
    let l = pool.launcher(&[], &[]);
    assert_eq!(
        pool.ask(l, &port.to_string()).0,
        port.to_string(),
        "{}",
        pool.stderr(l)
    );
    let mode = fs::metadata(pool.pid_dir())
        .expect("pid dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
    assert!(pool.record(port).is_some());
    wait_until("the VM's log", BOUND, || {
        pool.log(port).contains("listening on")
    });
}

#[test]
fn a_symlink_planted_as_a_vm_log_is_never_followed() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let target = pool.dir.path().join("precious");
    fs::write(&target, "do not touch\n").expect("write");
    std::os::unix::fs::symlink(
        &target,
        pool.dir.path().join("log").join(format!("{port}.log")),
    )
    .expect("symlink");
    let l = pool.launcher(&[], &[]);
    assert_eq!(pool.ask(l, &port.to_string()).0, "NULL");
    assert!(
        pool.launchers[l].wait_stderr("is a symlink", BOUND),
        "{}",
        pool.stderr(l)
    );
    assert_eq!(fs::read_to_string(&target).expect("read"), "do not touch\n");
    assert!(Pool::vms_on(port).is_empty(), "a VM was started anyway");
}

#[test]
fn a_vm_that_crashes_right_after_listening_backs_off() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    // It listens at once and exits after 1 s: sooner than the default
    // --min-uptime-ms (10 s), so it is a failed start.
    let l = pool.launcher(&[], &["--exit-after-s", "1"]);
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    let first = pool.record(port).expect("record");
    wait_until("the crash", BOUND, || {
        first.liveness().ok() == Some(Liveness::Gone)
    });
    assert!(
        pool.launchers[l].wait_stderr("sooner than --min-uptime-ms", BOUND),
        "{}",
        pool.stderr(l)
    );
    // Right after: no relaunch (a tight loop is what the backoff prevents).
    let (answer, took) = pool.ask(l, &port.to_string());
    assert_eq!(answer, "NULL");
    assert!(took < Duration::from_millis(100), "{took:?}");
    assert_eq!(pool.starts_logged(port), 1);
    // After the pause, it is launched again; the next pause is longer.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(pool.ask(l, &port.to_string()).0, port.to_string());
    assert!(
        pool.launchers[l].wait_stderr("next launch in 2s", BOUND),
        "{}",
        pool.stderr(l)
    );
}

#[test]
fn a_wait_for_another_launchers_vm_ends_when_that_vm_dies() {
    let mut pool = Pool::new(1);
    let port = pool.ports[0];
    let a = pool.launcher(&[], &["--start-delay-ms", "5000"]);
    let b = pool.launcher(&[], &["--start-delay-ms", "5000"]);
    pool.launchers[a]
        .send(port.to_string().as_bytes())
        .expect("send");
    wait_until("A's launch", BOUND, || pool.record(port).is_some());
    let vm = pool.record(port).expect("record");
    // B finds A's VM starting: it waits for it, without launching another.
    let asked = Instant::now();
    pool.launchers[b]
        .send(port.to_string().as_bytes())
        .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    kill_and_reap(vm.pid);
    let answer = pool.launchers[b].read_line(BOUND).expect("B's answer");
    assert_eq!(answer, "NULL");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "B waited {:?}",
        asked.elapsed()
    );
    assert_eq!(
        pool.launchers[a].read_line(BOUND).expect("A's answer"),
        "NULL"
    );
    assert_eq!(pool.starts_logged(port), 1, "B launched a VM");
}

#[test]
fn in_a_cold_pool_a_port_that_backs_off_is_replaced_by_another() {
    let mut pool = Pool::new(2);
    let (broken, healthy) = (pool.ports[0], pool.ports[1]);
    // The VM of one port cannot start; the other's can.
    let script = format!(
        "if [ \"$1\" = {broken} ]; then exit 1; fi; exec {} --port \"$1\"",
        pool.demo_vm().display()
    );
    let mut args = pool.args(&[]);
    args.extend(["--", "/bin/sh", "-c", &script, "vm", "{port}"].map(OsString::from));
    let l = pool.launcher_with(args);
    assert_eq!(pool.ask(l, &broken.to_string()).0, "NULL");
    // The broken port backs off; a new session is not refused for that:
    // the healthy port is launched instead, and answered.
    let (answer, _) = pool.ask(l, &broken.to_string());
    assert_eq!(answer, healthy.to_string(), "{}", pool.stderr(l));
    assert!(
        pool.stderr(l)
            .contains(&format!("launching {healthy} instead")),
        "{}",
        pool.stderr(l)
    );
}
