//! The demo's and the private Apache's state directory holds binaries that
//! Apache runs as root: a directory another user made or can change is
//! refused before anything is written in it (the local-root hole of a fixed
//! `/tmp` path, which a local user could create first). A symlink given as
//! STATE is resolved once and its real path is what is checked and used.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use e2e::skip::{is_root, require};
use e2e::stack::repo;
use nix::unistd::{Uid, chown};

fn nobody() -> Uid {
    nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map_or(Uid::from_raw(65534), |u| u.uid)
}

fn private_apache_init(state: &Path) -> Output {
    Command::new(repo().join("scripts/private-apache"))
        .arg("init")
        .arg(state)
        .args(["--bin", "/nonexistent"])
        .output()
        .expect("run scripts/private-apache")
}

fn refused(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted\n{stderr}");
    assert!(stderr.contains("refusing"), "{what}: {stderr}");
}

#[test]
fn a_state_dir_made_by_another_user_is_refused_and_left_untouched() {
    if !require(is_root(), "needs root to give a directory to nobody") {
        return;
    }
    let top = tempfile::tempdir().expect("tempdir");
    let planted = top.path().join("state");
    std::fs::create_dir(&planted).expect("mkdir");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    chown(&planted, Some(nobody()), None).expect("chown");
    let out = private_apache_init(&planted);
    refused(&out, "a directory of nobody");
    assert_eq!(
        std::fs::read_dir(&planted).expect("ls").count(),
        0,
        "something was written into nobody's directory"
    );

    // The demo refuses it before it builds or writes anything.
    let demo = Command::new(repo().join("scripts/demo"))
        .env("DEMO_DIR", &planted)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run scripts/demo");
    refused(&demo, "scripts/demo with DEMO_DIR of nobody");
    assert_eq!(std::fs::read_dir(&planted).expect("ls").count(), 0);
}

#[test]
fn a_state_dir_under_a_directory_of_another_user_is_refused() {
    if !require(is_root(), "needs root to give a directory to nobody") {
        return;
    }
    let top = tempfile::tempdir().expect("tempdir");
    let parent = top.path().join("parent");
    std::fs::create_dir(&parent).expect("mkdir");
    chown(&parent, Some(nobody()), None).expect("chown");
    // nobody could rename our directory away and put its own in its place.
    let out = private_apache_init(&parent.join("state"));
    refused(&out, "a parent of nobody");
    assert!(!parent.join("state").exists());
}

#[test]
fn a_state_dir_writable_by_others_is_refused_and_a_fresh_one_accepted() {
    let top = tempfile::tempdir().expect("tempdir");
    let open = top.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o775)).expect("chmod");
    refused(&private_apache_init(&open), "a group-writable directory");

    // A fresh name in a directory of our own is fine and is created 0700.
    let fresh = top.path().join("fresh");
    let out = Command::new(repo().join("scripts/private-apache"))
        .arg("check-dir")
        .arg(&fresh)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
