//! `server-map preflight`, on the site as Apache expands it: a mistake in
//! what the launcher needs is found before a reload, not by the visitors.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use e2e::skip::{is_root, require};
use e2e::stack::{binaries, repo};

/// A private Apache's configuration from the shipped site (not started).
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(repo().join("scripts/private-apache"))
        .arg("init")
        .arg(dir.path())
        .arg("--bin")
        .arg(binaries())
        .output()
        .expect("private-apache init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn preflight(state: &Path) -> Output {
    Command::new(state.join("bin/server-map"))
        .arg("preflight")
        .arg("--conf")
        .arg(state.join("conf/httpd.conf"))
        .output()
        .expect("server-map preflight")
}

/// Changes the value of one Define of the site, as an operator edits it.
fn define(state: &Path, name: &str, value: &str) {
    let path = state.join("conf/seaside-pool.conf");
    let text = fs::read_to_string(&path).expect("site");
    let edited: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with(&format!("Define {name} ")) {
                format!("Define {name} \"{value}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    fs::write(&path, edited.join("\n") + "\n").expect("write site");
}

fn failed_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("FAILED"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_shipped_site_passes_and_each_mistake_is_one_failed_line() {
    if !require(
        is_root(),
        "the site's launcher runs VMs as www-data: needs root",
    ) {
        return;
    }
    let state = site();
    let good = preflight(state.path());
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    let said = String::from_utf8_lossy(&good.stdout);
    assert!(said.contains("all 8 checks passed"), "{said}");
    // Whether VMs outlive apache2.service is said too.
    assert!(
        said.contains("no systemd: VMs run in sessions of their own")
            || said.contains("systemd scope of its own"),
        "{said}"
    );

    // A relative command: Apache gives map programs no PATH.
    define(
        state.path(),
        "SEASIDE_VM_CMD",
        "squeak app.image port {port}",
    );
    let out = preflight(state.path());
    assert_eq!(out.status.code(), Some(1));
    let failed = failed_lines(&out);
    assert!(
        failed.len() == 1 && failed[0].contains("not an absolute path"),
        "{failed:?}"
    );

    // A command the VM user cannot reach.
    let hidden = state.path().join("private");
    fs::create_dir(&hidden).expect("mkdir");
    fs::set_permissions(&hidden, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    fs::copy(state.path().join("bin/demo-vm"), hidden.join("vm")).expect("copy");
    define(
        state.path(),
        "SEASIDE_VM_CMD",
        &format!("{} --port {{port}}", hidden.join("vm").display()),
    );
    let failed = failed_lines(&preflight(state.path()));
    assert!(
        failed.len() == 1 && failed[0].contains("www-data cannot enter"),
        "{failed:?}"
    );

    // A user that does not exist.
    define(
        state.path(),
        "SEASIDE_VM_CMD",
        &format!(
            "{} --port {{port}}",
            state.path().join("bin/demo-vm").display()
        ),
    );
    define(state.path(), "SEASIDE_VM_USER", "no-such-user");
    let failed = failed_lines(&preflight(state.path()));
    assert!(
        failed.len() == 1 && failed[0].contains("no-such-user"),
        "{failed:?}"
    );

    // A pid directory another user could write in.
    define(state.path(), "SEASIDE_VM_USER", "www-data");
    let pids = state.path().join("run/pids");
    nix::unistd::chown(&pids, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    let failed = failed_lines(&preflight(state.path()));
    assert!(
        failed.len() == 1 && failed[0].contains("--pid-dir") && failed[0].contains("uid 65534"),
        "{failed:?}"
    );
}
