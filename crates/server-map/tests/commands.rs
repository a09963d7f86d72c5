//! The subcommands for people, run as a person runs them: exit codes, what
//! goes to stdout and stderr, and what `switch` leaves on disk.

mod common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command};

use common::{ALL_B, ask, fixture, live_copy, run, s, start, stderr, stdout};
use vmpool::PidRecord;

#[test]
fn check_exit_codes_and_messages_for_every_fixture() {
    let cases: &[(&str, i32, &[&str])] = &[
        ("balance.confA", 0, &[]),
        ("balance.confB", 0, &[]),
        ("comments.conf", 0, &[]),
        ("blank-lines.conf", 0, &[]),
        ("crlf.conf", 0, &[]),
        (
            "leading-whitespace.conf",
            0,
            &[":2: warning: line starts with whitespace"],
        ),
        (
            "extra-tokens.conf",
            0,
            &[":2: warning: text after the value"],
        ),
        (
            "key-without-value.conf",
            0,
            &[":2: warning: key \"app3002\" has no value"],
        ),
        (
            "no-final-newline.conf",
            0,
            &[":2: warning: no newline at end of file"],
        ),
        (
            "name-port-mismatch.conf",
            0,
            &[":4: warning: app3003 maps to port 3004"],
        ),
        (
            "duplicate-keys.conf",
            1,
            &[":4: error: duplicate key \"app3001\" (lines 1 and 4)"],
        ),
        (
            "empty-alternative.conf",
            1,
            &[":3: error: ALL = \"3001||3002|\" has an empty alternative"],
        ),
        ("long-line.conf", 1, &[":4: error: line is 2000 bytes long"]),
        (
            "all-unnamed-port.conf",
            1,
            &[":3: error: ALL lists port 3011, which no key maps to"],
        ),
        (
            "port-out-of-range.conf",
            1,
            &[
                ":2: error: app0: \"0\" is not a port",
                ":3: error: app70000",
            ],
        ),
        ("nul-byte.conf", 1, &[":2: error: holds a NUL byte"]),
        ("invalid-utf8.conf", 1, &[":2: error: is not valid UTF-8"]),
        ("empty.conf", 1, &["empty.conf: error: is empty"]),
        ("only-comments.conf", 1, &["error: holds no entries"]),
    ];
    for &(name, code, needles) in cases {
        let file = fixture(name);
        let out = run(&["check", s(&file)]);
        let (out_text, err_text) = (stdout(&out), stderr(&out));
        assert_eq!(
            out.status.code(),
            Some(code),
            "{name}:\n{out_text}{err_text}"
        );
        for needle in needles {
            assert!(
                err_text.contains(needle),
                "{name}: no {needle:?} in:\n{err_text}"
            );
        }
        // One verdict line on stdout, naming the file.
        assert_eq!(out_text.lines().count(), 1, "{name}: {out_text}");
        assert!(out_text.starts_with(s(&file)), "{name}: {out_text}");
        if code == 0 && needles.is_empty() {
            assert!(err_text.is_empty(), "{name}: {err_text}");
            assert!(out_text.contains(": ok ("), "{name}: {out_text}");
        }
    }
    let out = run(&["check", s(&fixture("balance.confA"))]);
    assert!(
        stdout(&out).ends_with(": ok (10 servers, 11 keys, ALL = 3001|3002|3003|3004|3005)\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_of_a_missing_file_or_a_directory_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.conf");
    let out = run(&["check", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot be read"), "{}", stderr(&out));
    let out = run(&["check", s(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn switch_renames_a_validated_copy_over_the_file_and_says_what_changed() {
    let (dir, live) = live_copy("balance.confA");
    fs::set_permissions(&live, fs::Permissions::from_mode(0o604)).expect("chmod"); // readable by others: a map file holds no secret
    let inode = fs::metadata(&live).expect("stat").ino();
    let new = dir.path().join("balance.confB");
    fs::copy(fixture("balance.confB"), &new).expect("copy B");
    let mut map = start(&live);
    assert_eq!(ask(&mut map, "app3001"), "3001");

    let out = run(&["switch", s(&live), s(&new)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "switched {} to {}\n  ALL: 3001|3002|3003|3004|3005 -> 3006|3007|3008|3009|3010\n",
            s(&live),
            s(&new)
        )
    );
    assert_eq!(
        fs::read(&live).expect("read"),
        fs::read(&new).expect("read")
    );
    let meta = fs::metadata(&live).expect("stat");
    assert_ne!(meta.ino(), inode, "a new file was renamed in");
    assert_eq!(meta.mode() & 0o7777, 0o604, "the old mode is kept");
    assert_eq!(
        entries(dir.path()),
        ["balance.conf", "balance.confB"],
        "no temp file left"
    );
    // The running map answers from the new file at once.
    let all = ask(&mut map, "ALL");
    assert!(ALL_B.contains(&all.as_str()), "{all}\n{}", map.stderr());

    let out = run(&["switch", s(&live), s(&new)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
}

#[test]
fn switch_refuses_a_new_file_with_errors_and_leaves_the_file_alone() {
    for (name, needle) in [
        ("duplicate-keys.conf", "duplicate key"),
        ("empty-alternative.conf", "empty alternative"),
        ("all-unnamed-port.conf", "3011"),
        ("empty.conf", "is empty"),
        ("nul-byte.conf", "NUL"),
        ("does-not-exist.conf", "cannot be read"),
    ] {
        let (dir, live) = live_copy("balance.confA");
        let before = fs::read(&live).expect("read");
        let inode = fs::metadata(&live).expect("stat").ino();
        let out = run(&["switch", s(&live), s(&fixture(name))]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle), "{name}: {err}");
        assert!(
            err.contains("not switching") && err.contains("untouched"),
            "{name}: {err}"
        );
        assert!(stdout(&out).is_empty(), "{name}: {}", stdout(&out));
        assert_eq!(fs::read(&live).expect("read"), before, "{name}");
        assert_eq!(fs::metadata(&live).expect("stat").ino(), inode, "{name}");
        assert_eq!(entries(dir.path()), ["balance.conf"], "{name}");
    }
}

#[test]
fn switch_with_warnings_goes_ahead_and_shows_them() {
    let (_dir, live) = live_copy("balance.confA");
    // --force: extra-tokens.conf drops app3004, and whatever listens on 3004
    // on this machine is not what this test is about (see tests/orphans.rs).
    let out = run(&[
        "switch",
        "--force",
        s(&live),
        s(&fixture("extra-tokens.conf")),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: text after the value"),
        "{}",
        stderr(&out)
    );
    let changes = stdout(&out);
    assert!(
        changes.contains("  ALL: 3001|3002|3003|3004|3005 -> 3001|3002|3003\n"),
        "{changes}"
    );
    assert!(changes.contains("  app3004: 3004 -> (none)\n"), "{changes}");
}

#[test]
fn switch_creates_a_missing_file_readable_by_all_and_fails_without_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("balance.conf");
    let out = run(&["switch", s(&live), s(&fixture("balance.confA"))]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ALL: (none) -> 3001|3002|3003|3004|3005"));
    assert_eq!(fs::metadata(&live).expect("stat").mode() & 0o7777, 0o644);

    let nowhere = dir.path().join("no-such-dir/balance.conf");
    let out = run(&["switch", s(&nowhere), s(&fixture("balance.confA"))]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("server-map: creating a temp file"),
        "{}",
        stderr(&out)
    );
}

/// A child process killed and reaped when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

/// A map with four servers: active (listening, in ALL), down (in ALL,
/// nothing there), draining (listening, not in ALL), stopped.
struct Pool {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    pid_dir: std::path::PathBuf,
    _listeners: [TcpListener; 2],
    active: u16,
    down: u16,
    draining: u16,
    stopped: u16,
    vm: Reaped,
}

fn pool() -> Pool {
    let dir = tempfile::tempdir().expect("tempdir");
    let (l1, active) = listener();
    let (l2, draining) = listener();
    let (down, stopped) = (free_port(), free_port());
    let file = dir.path().join("balance.conf");
    fs::write(
        &file,
        format!(
            "app{active} {active}\napp{down} {down}\napp{draining} {draining}\n\
             app{stopped} {stopped}\nALL {active}|{down}\n"
        ),
    )
    .expect("write map");
    let pid_dir = dir.path().join("pids");
    fs::create_dir(&pid_dir).expect("mkdir");
    let vm = Reaped(Command::new("sleep").arg("30").spawn().expect("sleep"));
    PidRecord::of_process(vm.0.id())
        .and_then(|record| record.write(&pid_dir, active))
        .expect("pid record");
    // A record of a process that is gone: no pid is shown for it.
    let mut gone = Command::new("true").spawn().expect("true");
    let record = PidRecord::of_process(gone.id());
    gone.wait().expect("reap");
    if let Ok(record) = record {
        record.write(&pid_dir, stopped).expect("pid record");
    }
    Pool {
        _dir: dir,
        file,
        pid_dir,
        _listeners: [l1, l2],
        active,
        down,
        draining,
        stopped,
        vm,
    }
}

#[test]
fn status_shows_one_row_per_server_and_a_summary() {
    let pool = pool();
    let out = run(&["status", s(&pool.file), "--pid-dir", s(&pool.pid_dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATE"),
        "{table}"
    );
    let row = |port: u16| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("app{port} ")))
            .unwrap_or_else(|| panic!("no row for {port}:\n{table}"))
            .split_whitespace()
            .collect()
    };
    let pid = pool.vm.0.id().to_string();
    let active = row(pool.active);
    // QUEUE: connections waiting / the listen backlog, from the kernel.
    assert_eq!(
        &active[1..4],
        [&pool.active.to_string(), "yes", "yes"],
        "{table}"
    );
    assert!(active[4].starts_with("0/"), "queue {:?}", active[4]);
    assert_eq!(active[5], pid);
    assert_eq!(active[7], "active");
    assert!(active[6].ends_with('s'), "uptime {:?}", active[6]);
    assert_eq!(
        row(pool.down)[2..],
        ["yes", "no", "-", "-", "-", "down"],
        "{table}"
    );
    let draining = row(pool.draining);
    assert_eq!(draining[2..4], ["no", "yes"], "{table}");
    assert_eq!(draining[5..], ["-", "-", "draining"], "{table}");
    assert_eq!(
        row(pool.stopped)[2..],
        ["no", "no", "-", "-", "-", "stopped"],
        "{table}"
    );
    assert_eq!(
        lines[5],
        "4 servers, 2 in ALL (active set), 2 listening, 1 listening outside ALL (draining)"
    );
}

#[test]
fn status_json_is_for_scripts() {
    let pool = pool();
    let out = run(&[
        "status",
        s(&pool.file),
        "--pid-dir",
        s(&pool.pid_dir),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["all"], serde_json::json!([pool.active, pool.down]));
    assert_eq!(
        json["summary"],
        serde_json::json!({"servers": 4, "in_all": 2, "listening": 2, "draining": 1, "queue_full": 0, "in_live_map": null})
    );
    let servers = json["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 4);
    let active = &servers[0];
    assert_eq!(active["name"], format!("app{}", pool.active));
    assert_eq!(active["port"], pool.active);
    assert_eq!(active["in_all"], true);
    assert_eq!(active["listening"], true);
    assert_eq!(active["pid"], pool.vm.0.id());
    assert!(
        active["uptime_s"].as_u64().is_some_and(|s| s < 60),
        "{active}"
    );
    assert_eq!(active["state"], "active");
    assert_eq!(active["accept_queue"], 0);
    assert!(
        active["backlog"].as_u64().is_some_and(|b| b > 0),
        "{active}"
    );
    let states: Vec<&str> = servers
        .iter()
        .map(|s| s["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["active", "down", "draining", "stopped"]);
    assert!(
        servers[1..]
            .iter()
            .all(|s| s["pid"].is_null() && s["uptime_s"].is_null())
    );
}

#[test]
fn status_without_pid_dir_shows_no_pids_and_fails_on_a_bad_file_or_dir() {
    let pool = pool();
    let out = run(&["status", s(&pool.file), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        json["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .all(|s| s["pid"].is_null())
    );

    let out = run(&["status", s(&pool.file), "--pid-dir", "/nonexistent/pids"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));

    let out = run(&["status", s(&fixture("nul-byte.conf"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NUL"), "{}", stderr(&out));
}

#[test]
fn status_shows_a_port_all_lists_without_a_name() {
    let out = run(&["status", s(&fixture("all-unnamed-port.conf")), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 error; see server-map check"),
        "{}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let last = json["servers"]
        .as_array()
        .and_then(|s| s.last())
        .expect("rows")
        .clone();
    assert_eq!(last["port"], 3011);
    assert!(last["name"].is_null());
}

#[test]
fn status_shows_a_vm_whose_accept_queue_is_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A VM that accepts nothing: its queue fills up.
    let stuck = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = stuck.local_addr().expect("addr").port();
    let queued =
        vmpool::listen_table::fill_accept_queue(([127, 0, 0, 1], port).into()).expect("fill");
    let file = dir.path().join("balance.conf");
    std::fs::write(&file, format!("app{port} {port}\nALL {port}\n")).expect("write");
    let out = run(&["status", s(&file)]);
    let table = stdout(&out);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&format!("app{port} ")))
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(row[3..5], ["yes", "full"], "{table}");
    assert!(table.contains("1 with a full accept queue"), "{table}");
    drop(queued);
}

// See: issue 8, point 6.
#[test]
fn status_with_the_live_map_shows_which_servers_apache_routes_to_and_whether_all_is_there() {
    let pool = pool();
    let live = pool.file.with_file_name("live.map");
    // As image-launcher writes it: `active` is up and published, `draining`
    // listens but is not in it, ALL is missing (`down` is down).
    let (active, draining) = (pool.active, pool.draining);
    fs::write(
        &live,
        format!("# image-launcher (pid 1) writes this file\napp{active} {active}\n"),
    )
    .expect("write live map");
    let out = run(&["status", s(&pool.file), "--live-map", s(&live)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 7, "{table}");
    let head: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(head[4..6], ["LISTENING", "LIVE"], "{table}");
    let live_cell = |port: u16| -> String {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("app{port} ")))
            .unwrap_or_else(|| panic!("no row for {port}:\n{table}"));
        row.split_whitespace().nth(4).expect("LIVE").to_owned()
    };
    assert_eq!(live_cell(active), "yes", "{table}");
    for port in [pool.down, draining, pool.stopped] {
        assert_eq!(live_cell(port), "no", "{port}: {table}");
    }
    assert_eq!(
        lines[6],
        format!(
            "live map {}: 1 server in it, no ALL (a port of the active set is down: new sessions \
             go through the launcher); 1 listening but not in it (a VM that just came up, or no \
             launcher with --live-map writes it)",
            s(&live)
        )
    );

    // The whole active set up: ALL is there.
    let down = pool.down;
    fs::write(
        &live,
        format!("app{active} {active}\napp{down} {down}\napp{draining} {draining}\nALL {active}|{down}\nHOST up\n"),
    )
    .expect("write live map");
    let out = run(&["status", s(&pool.file), "--live-map", s(&live), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        json["live_map"],
        serde_json::json!({"file": s(&live), "servers": 3, "all": [active, down], "host": "up", "error": null})
    );
    assert_eq!(json["summary"]["in_live_map"], 3);
    let in_live: Vec<bool> = json["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|row| row["in_live_map"].as_bool().expect("bool"))
        .collect();
    assert_eq!(in_live, [true, true, true, false]);
}

#[test]
fn status_with_a_live_map_that_routes_nowhere_or_is_missing() {
    let pool = pool();
    let live = pool.file.with_file_name("live.map");
    // Nothing up: the launcher writes only its header.
    fs::write(&live, "# image-launcher writes this file\n").expect("write");
    let out = run(&["status", s(&pool.file), "--live-map", s(&live), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["live_map"]["servers"], 0);
    assert!(json["live_map"]["all"].is_null() && json["live_map"]["error"].is_null());
    assert_eq!(json["summary"]["in_live_map"], 0);

    fs::remove_file(&live).expect("rm");
    let out = run(&["status", s(&pool.file), "--live-map", s(&live), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!(
            "server-map: warning: --live-map {}: cannot be read",
            s(&live)
        )),
        "{}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(json["live_map"]["error"].is_string(), "{json}");

    // Without --live-map: no such column or field.
    let out = run(&["status", s(&pool.file), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(json["live_map"].is_null() && json["servers"][0]["in_live_map"].is_null());
}

#[test]
fn status_shows_hung_and_draining_vms_from_the_launchers_state_file() {
    let pool = pool();
    let live = pool.file.with_file_name("live.map");
    let (active, draining) = (pool.active, pool.draining);
    fs::write(
        &live,
        format!("app{draining} {draining}\nDRAINING {draining}\n"),
    )
    .expect("write");
    let ten_minutes_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 600;
    vmpool::state::PoolState {
        writer_pid: 1,
        ports: vec![
            vmpool::state::PortState {
                port: active,
                listening: true,
                hung: Some(vmpool::state::Hung {
                    since_unix_s: ten_minutes_ago,
                    accept_queue: 3,
                    unread_bytes: 120,
                }),
                launches: 2,
                hung_kills: 1,
                ..Default::default()
            },
            vmpool::state::PortState {
                port: draining,
                listening: true,
                in_map: true,
                draining: true,
                ..Default::default()
            },
        ],
    }
    .write(&live)
    .expect("state");
    let out = run(&["status", s(&pool.file), "--live-map", s(&live)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    let row = |port: u16| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("app{port} ")))
            .unwrap_or_else(|| panic!("no row for {port}:\n{table}"))
            .to_owned()
    };
    assert!(row(active).ends_with("hung"), "{table}");
    assert!(row(draining).ends_with("draining (asked)"), "{table}");
    assert!(
        table.contains(&format!(
            "app{active} ({active}): hung for 10m00s: 3 connection(s) in its accept queue, 120 unread byte(s)"
        )) || table.contains(&format!("app{active} ({active}): hung for 10m01s")),
        "{table}"
    );
    let out = run(&["status", s(&pool.file), "--live-map", s(&live), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let first = &json["servers"][0];
    assert_eq!(first["hung"]["accept_queue"], 3, "{json}");
    assert_eq!(
        (first["launches"].as_u64(), first["hung_kills"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(json["servers"][2]["asked_to_drain"], true, "{json}");
}
