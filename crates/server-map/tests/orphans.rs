//! A new map never orphans the sessions of a listening VM in silence:
//! `switch` refuses it (naming the servers) unless `--force`, `check
//! --against` says the same beforehand, and a running map that loads one
//! by `cp` logs one warning. Real listeners on loopback stand in for VMs.
// See: issue 14, point 4.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::{ask, ask_until, run, s, start, stderr, stderr_count, stdout};

/// Three servers: `up` and `moved` have a listening VM, `down` has none.
struct Site {
    dir: tempfile::TempDir,
    live: PathBuf,
    _vms: [TcpListener; 2],
    up: u16,
    moved: u16,
    down: u16,
    spare: u16,
}

fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

fn free_port() -> u16 {
    listener().1
}

fn site() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let ((l1, up), (l2, moved)) = (listener(), listener());
    let (down, spare) = (free_port(), free_port());
    let live = dir.path().join("balance.conf");
    fs::write(
        &live,
        format!("app{up} {up}\napp{moved} {moved}\napp{down} {down}\napp{spare} {spare}\nALL {up}|{moved}\n"),
    )
    .expect("write balance.conf");
    Site {
        dir,
        live,
        _vms: [l1, l2],
        up,
        moved,
        down,
        spare,
    }
}

impl Site {
    /// balance.confB: keeps only `spare`, and names `moved` with `spare`'s
    /// port; `up` and `down` are gone.
    fn orphaning(&self) -> PathBuf {
        let (moved, spare) = (self.moved, self.spare);
        self.write(
            "balance.confB",
            &format!("app{moved} {spare}\napp{spare} {spare}\nALL {spare}\n"),
        )
    }

    /// A file that keeps every name (and adds one).
    fn keeping(&self) -> PathBuf {
        let Site {
            up,
            moved,
            down,
            spare,
            ..
        } = *self;
        self.write(
            "balance.confC",
            &format!(
                "app{up} {up}\napp{moved} {moved}\napp{down} {down}\napp{spare} {spare}\napp1 1\nALL {spare}\n"
            ),
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).expect("write");
        path
    }

    /// What the orphaning file is said to orphan: `up` and `moved`, not
    /// `down` (no VM there).
    fn assert_named(&self, text: &str) {
        let (up, moved, down) = (self.up, self.moved, self.down);
        assert!(text.contains(&format!("app{up} (port {up})")), "{text}");
        assert!(
            text.contains(&format!("app{moved} (port {moved}, now {})", self.spare)),
            "{text}"
        );
        assert!(!text.contains(&format!("app{down} ")), "{text}");
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).expect("read")
}

#[test]
fn switch_refuses_a_file_that_orphans_listening_vms_and_force_switches() {
    let site = site();
    let new = site.orphaning();
    let before = read(&site.live);
    let out = run(&["switch", s(&site.live), s(&new)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    // One line says it all (after check's warning: app<moved> names another port).
    let refusal = err.lines().last().expect("a line");
    assert!(
        refusal.starts_with("server-map: not switching: ")
            && refusal.ends_with("untouched (--force switches anyway)"),
        "{err}"
    );
    assert!(
        refusal.contains("orphan the sessions of 2 servers whose VMs listen: "),
        "{err}"
    );
    site.assert_named(refusal);
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert_eq!(read(&site.live), before, "balance.conf is untouched");

    let out = run(&["switch", "--force", s(&site.live), s(&new)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    site.assert_named(&stderr(&out));
    assert!(stdout(&out).starts_with("switched "), "{}", stdout(&out));
    assert_eq!(read(&site.live), read(&new));
}

#[test]
fn switch_goes_ahead_when_every_listening_vm_keeps_its_name() {
    let site = site();
    let new = site.keeping();
    let out = run(&["switch", s(&site.live), s(&new)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(read(&site.live), read(&new));
    // Dropping only a server without a VM is not orphaning anyone.
    let (up, moved) = (site.up, site.moved);
    let fewer = site.write(
        "balance.confD",
        &format!("app{up} {up}\napp{moved} {moved}\nALL {up}\n"),
    );
    let out = run(&["switch", s(&site.live), s(&fewer)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn check_against_the_file_in_place_shows_what_switch_would_refuse() {
    let site = site();
    let new = site.orphaning();
    let out = run(&["check", s(&new), "--against", s(&site.live)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let error = err.lines().last().expect("a line");
    assert!(
        error.starts_with(&format!(
            "{}: error: switching {} to it would orphan",
            s(&new),
            s(&site.live)
        )),
        "{err}"
    );
    site.assert_named(error);
    assert!(stdout(&out).contains(": 1 error,"), "{}", stdout(&out));
    // The same file on its own is fine.
    let out = run(&["check", s(&new)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = run(&["check", s(&site.keeping()), "--against", s(&site.live)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let missing = site.dir.path().join("nope.conf");
    let out = run(&["check", s(&new), "--against", s(&missing)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!(
            "server-map: --against {}: cannot be read",
            s(&missing)
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_running_map_that_loads_an_orphaning_file_warns_once() {
    let site = site();
    let mut map = start(&site.live);
    assert_eq!(
        ask(&mut map, &format!("app{}", site.up)),
        site.up.to_string()
    );
    // A cut-over that keeps every name: no warning.
    fs::copy(site.keeping(), &site.live).expect("cp C");
    let spare = site.spare.to_string();
    ask_until(&mut map, "ALL", common::ANSWER_WITHIN, |a| a == spare);
    // The `cp` way, with a file that drops `up` and moves `moved`.
    fs::copy(site.orphaning(), &site.live).expect("cp B");
    let gone = format!("app{}", site.up);
    ask_until(&mut map, &gone, common::ANSWER_WITHIN, |a| a == "NULL");
    let warning = "no longer routes";
    assert_eq!(stderr_count(&mut map, warning, 1), 1, "{}", map.stderr());
    for _ in 0..20 {
        ask(&mut map, &gone);
    }
    let (_, err) = map.finish(common::ANSWER_WITHIN).expect("finish");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains(warning)).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    site.assert_named(warnings[0]);
    assert!(warnings[0].contains(" WARN "), "{err}");
}
