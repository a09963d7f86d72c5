//! verify-port driven exactly as Apache drives it: the real binary, an empty
//! environment, one key written on its stdin, one line read back with a
//! deadline. Listening ports are real sockets on loopback.

use std::io::Read;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rewritemap::client::MapProcess;

const BIN: &str = env!("CARGO_BIN_EXE_verify-port");
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn start(args: &[&str]) -> MapProcess {
    MapProcess::spawn(BIN, args).expect("start verify-port")
}

fn ask(map: &mut MapProcess, key: &str) -> String {
    match map.ask(key, ANSWER_WITHIN) {
        Ok((answer, _)) => answer,
        Err(e) => panic!("no answer to {key:?}: {e}\nstderr:\n{}", map.stderr()),
    }
}

/// A port on which nothing listens (bound, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn listen(addr: &str) -> (TcpListener, u16) {
    let listener = TcpListener::bind(addr).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

#[test]
fn open_and_closed_ports_on_ipv4_loopback() {
    let (_vm, open) = listen("127.0.0.1:0");
    let closed = closed_port();
    let mut map = start(&[]);
    assert_eq!(ask(&mut map, &open.to_string()), format!("open{open}"));
    assert_eq!(ask(&mut map, &closed.to_string()), "closed");
    let key = format!("127.0.0.1:{open}");
    assert_eq!(ask(&mut map, &key), format!("open{key}"));
    let key = format!("localhost:{open}");
    assert_eq!(ask(&mut map, &key), format!("open{key}"));
    assert_eq!(ask(&mut map, &format!("127.0.0.1:{closed}")), "closed");
}

#[test]
fn open_and_closed_ports_on_ipv6_loopback() {
    let Ok(vm) = TcpListener::bind(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0)) else {
        eprintln!("SKIPPED: this machine has no IPv6 loopback (binding [::1]:0 failed)");
        return;
    };
    let open = vm.local_addr().expect("addr").port();
    let mut map = start(&[]);
    let key = format!("[::1]:{open}");
    assert_eq!(ask(&mut map, &key), format!("open{key}"));
    // Listening on ::1 only: the plain key means 127.0.0.1, where nothing is.
    assert_eq!(ask(&mut map, &open.to_string()), "closed");
    drop(vm);
    assert_eq!(ask(&mut map, &key), "closed");
}

#[test]
fn the_listen_table_probe_agrees_with_connect() {
    let (_vm, open) = listen("127.0.0.1:0");
    let closed = closed_port();
    let mut map = start(&["--probe", "listen-table"]);
    assert_eq!(ask(&mut map, &open.to_string()), format!("open{open}"));
    assert_eq!(ask(&mut map, &closed.to_string()), "closed");
}

#[test]
fn the_connect_probe_costs_the_vm_an_accept_and_the_listen_table_does_not() {
    let (vm, open) = listen("127.0.0.1:0");
    vm.set_nonblocking(true).expect("nonblocking");
    let accepted = |vm: &TcpListener| std::iter::from_fn(|| vm.accept().ok()).count();

    let mut map = start(&["--probe", "listen-table"]);
    for _ in 0..5 {
        assert_eq!(ask(&mut map, &open.to_string()), format!("open{open}"));
    }
    assert_eq!(accepted(&vm), 0, "listen-table must not touch the VM");

    let mut map = start(&["--probe", "connect"]);
    for _ in 0..5 {
        assert_eq!(ask(&mut map, &open.to_string()), format!("open{open}"));
    }
    assert_eq!(accepted(&vm), 5, "each connect probe is one connection");
}

#[test]
fn a_vm_too_busy_to_accept_is_open_by_default_and_closed_to_a_connect_probe() {
    // A listener that never accepts, its queue full: a busy single-threaded VM.
    let (_vm, port) = listen("127.0.0.1:0");
    let _queued =
        vmpool::listen_table::fill_accept_queue(([127, 0, 0, 1], port).into()).expect("fill");
    let mut map = start(&[]);
    assert_eq!(ask(&mut map, &port.to_string()), format!("open{port}"));
    let mut connect = start(&["--probe", "connect", "--timeout-ms", "100"]);
    assert_eq!(ask(&mut connect, &port.to_string()), "closed");
}

#[test]
fn a_disallowed_host_is_closed_at_once_without_a_connection() {
    let mut map = start(&["--timeout-ms", "3000"]);
    // 192.0.2.1 (TEST-NET-1) would take the full timeout if it were tried.
    for key in ["192.0.2.1:80", "example.invalid:80", "[2001:db8::1]:80"] {
        let (answer, took) = map.ask(key, ANSWER_WITHIN).expect("answer");
        assert_eq!(answer, "closed", "{key}");
        assert!(took < Duration::from_millis(100), "{key} took {took:?}");
    }
    assert!(
        map.wait_stderr("not allowed", ANSWER_WITHIN),
        "{}",
        map.stderr()
    );
}

#[test]
fn ports_outside_the_spec_are_closed_even_when_listening() {
    let (_vm, open) = listen("127.0.0.1:0");
    let other = if open == 65535 { open - 1 } else { open + 1 };
    let spec = format!("{other}");
    let mut map = start(&["--ports", &spec]);
    assert_eq!(ask(&mut map, &open.to_string()), "closed");
    assert!(map.wait_stderr("not in --ports", ANSWER_WITHIN));
}

#[test]
fn malformed_keys_are_closed_and_logged() {
    let (_vm, open) = listen("127.0.0.1:0");
    let mut map = start(&[]);
    for key in [
        "0",
        "65536",
        "+3001",
        "-1",
        "30 01",
        "3001;touch /tmp/x",
        "$(id)",
        "3001|3002",
        "`reboot`",
        "",
    ] {
        assert_eq!(ask(&mut map, key), "closed", "{key:?}");
    }
    assert_eq!(
        ask(&mut map, &format!(" {open}\t\r")),
        format!("open{open}")
    );
    assert!(map.wait_stderr("rejected", ANSWER_WITHIN));
}

#[test]
fn a_one_mebibyte_line_then_a_lookup() {
    let (_vm, open) = listen("127.0.0.1:0");
    let mut map = start(&[]);
    let huge = vec![b'9'; 1 << 20];
    let (answer, _) = map.ask_bytes(&huge, ANSWER_WITHIN).expect("answer");
    assert_eq!(answer, "closed");
    assert_eq!(ask(&mut map, &open.to_string()), format!("open{open}"));
    assert!(map.wait_stderr("longer than 4096", ANSWER_WITHIN));
}

#[test]
fn invalid_utf8_and_nul_are_closed() {
    let (_vm, open) = listen("127.0.0.1:0");
    let mut map = start(&[]);
    for bad in [&b"\xff\xfe"[..], b"30\xc3", b"30\x0001", b"\x00"] {
        let (answer, _) = map.ask_bytes(bad, ANSWER_WITHIN).expect("answer");
        assert_eq!(answer, "closed", "{bad:?}");
    }
    assert_eq!(ask(&mut map, &open.to_string()), format!("open{open}"));
}

#[test]
fn ten_thousand_random_garbage_lines_then_a_correct_lookup() {
    let (_vm, open) = listen("127.0.0.1:0");
    let mut map = start(&["--timeout-ms", "50"]);
    let mut rng = fastrand::Rng::with_seed(0x05ea_51de);
    for i in 0..10_000 {
        let len = rng.usize(0..120);
        let line: Vec<u8> = std::iter::repeat_with(|| rng.u8(..))
            .filter(|&b| b != b'\n')
            .take(len)
            .collect();
        let (answer, _) = map
            .ask_bytes(&line, ANSWER_WITHIN)
            .unwrap_or_else(|e| panic!("line {i} {line:?}: {e}\n{}", map.stderr()));
        assert!(
            answer == "closed" || answer.starts_with("open"),
            "line {i}: {answer:?}"
        );
    }
    assert_eq!(ask(&mut map, &open.to_string()), format!("open{open}"));
    let (status, stderr) = map.finish(ANSWER_WITHIN).expect("finish");
    assert!(status.expect("exited").success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Garbage is logged, but rate-limited: not 10,000 lines.
    assert!(
        stderr.lines().count() < 100,
        "{} log lines",
        stderr.lines().count()
    );
}

#[test]
fn end_of_input_exits_zero() {
    let map = start(&[]);
    let (status, stderr) = map.finish(ANSWER_WITHIN).expect("finish");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
}

#[test]
fn a_closed_stdout_exits_zero_without_a_panic() {
    let mut map = start(&[]);
    map.close_stdout();
    map.send(b"3001").expect("send");
    let status = map.wait_exit(ANSWER_WITHIN).expect("wait");
    let (_, stderr) = map.finish(ANSWER_WITHIN).expect("finish");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert!(!stderr.contains("panic"), "{stderr}");
}

#[test]
fn sigterm_ends_it_within_a_second() {
    let mut map = start(&[]);
    // Make sure it is up and blocked reading stdin.
    assert_eq!(ask(&mut map, "1"), "closed");
    let sent = Instant::now();
    kill(Pid::from_raw(map.pid() as i32), Signal::SIGTERM).expect("kill");
    let status = map.wait_exit(Duration::from_secs(1)).expect("wait");
    assert!(status.is_some(), "still running 1 s after SIGTERM");
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(sent.elapsed() < Duration::from_secs(1));
}

#[test]
fn keys_as_arguments_answer_each_and_exit_zero_only_when_all_are_open() {
    let (_vm, open) = listen("127.0.0.1:0");
    let closed = closed_port();
    let run = |args: &[String]| {
        let out = Command::new(BIN)
            .args(args)
            .env_clear()
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = run(&[open.to_string(), format!("localhost:{open}")]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout, format!("open{open}\nopenlocalhost:{open}\n"));
    let (code, stdout) = run(&[open.to_string(), closed.to_string(), "nonsense".into()]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, format!("open{open}\nclosed\nclosed\n"));
}

#[test]
fn a_terminal_on_stdin_gets_a_one_line_hint_on_stderr() {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let mut child = Command::new(BIN)
        .env_clear()
        .stdin(Stdio::from(slave))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Ctrl-D on the terminal ends the input.
    nix::unistd::write(&pty.master, b"\x04").expect("write EOF");
    let mut stderr = String::new();
    let deadline = Instant::now() + ANSWER_WITHIN;
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    let hints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("one key per line"))
        .collect();
    assert_eq!(hints.len(), 1, "{stderr}");
    assert!(hints[0].starts_with("verify-port: "), "{stderr}");
}

#[test]
fn with_owner_a_listener_of_another_user_is_closed() {
    let (_vm, port) = listen("127.0.0.1:0");
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .expect("my user")
        .name;
    let other = if me == "nobody" { "root" } else { "nobody" };
    let mut mine = start(&["--owner", &me]);
    assert_eq!(ask(&mut mine, &port.to_string()), format!("open{port}"));
    // Another user's listener: a stranger on a pool port gets no session.
    let mut theirs = start(&["--owner", other]);
    assert_eq!(ask(&mut theirs, &port.to_string()), "closed");
    // An unknown owner is a start-up error, not a silent pass.
    let out = Command::new(BIN)
        .args(["--owner", "no-such-user-here", &port.to_string()])
        .env_clear()
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_map_is_not_dumpable_its_own_user_cannot_read_its_environment() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED: needs root to run the map as nobody");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("nobody");
    let as_nobody = |command: &mut Command| {
        command.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    };
    let read_environ = |pid: u32| {
        let mut cat = Command::new("cat");
        cat.arg(format!("/proc/{pid}/environ"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_nobody(&mut cat);
        cat.status().expect("cat").success()
    };
    // The control: an ordinary process of nobody is readable by nobody.
    let mut plain = Command::new("sleep");
    plain.arg("30");
    as_nobody(&mut plain);
    let mut plain = plain.spawn().expect("sleep");
    assert!(
        read_environ(plain.id()),
        "the control cannot be read: the test proves nothing"
    );
    let _ = plain.kill();
    let _ = plain.wait();

    let mut command = Command::new(BIN);
    as_nobody(&mut command);
    let mut map = MapProcess::spawn_command(command).expect("verify-port as nobody");
    let port = closed_port();
    assert_eq!(ask(&mut map, &port.to_string()), "closed", "it serves");
    assert!(
        !read_environ(map.pid()),
        "nobody read the map's environment"
    );
}
