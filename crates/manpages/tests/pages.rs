//! The pages `manpages` writes: one per program and per subcommand, each a
//! roff page that carries every option and the closing help of its command,
//! as `--help` shows them.

use std::fs;
use std::path::Path;

use clap::Command;

/// Every page written, by file name.
fn written() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let paths = manpages::write_all(dir.path()).expect("pages written");
    let mut names: Vec<String> = paths
        .iter()
        .map(|p| {
            assert_eq!(
                p.parent(),
                Some(dir.path()),
                "{} outside the dir",
                p.display()
            );
            p.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    (dir, names)
}

#[test]
fn one_page_per_program_and_subcommand_and_none_for_help() {
    let (_dir, names) = written();
    assert_eq!(
        names,
        [
            "image-launcher.1",
            "server-map-check.1",
            "server-map-drain-host.1",
            "server-map-preflight.1",
            "server-map-retire.1",
            "server-map-status.1",
            "server-map-stop.1",
            "server-map-switch.1",
            "server-map.1",
            "verify-port.1",
        ]
    );
}

/// The page of `cmd` in `dir` holds its title, every long option and the
/// text after the options (the Apache example).
fn assert_page_matches(dir: &Path, file: &str, cmd: &Command) {
    let page = fs::read_to_string(dir.join(file)).expect("the page");
    let title = format!(
        "\n.TH {} 1  \"seaside-pool {}\" seaside-pool\n",
        file.trim_end_matches(".1"),
        env!("CARGO_PKG_VERSION")
    );
    assert!(page.contains(&title), "{file}: no title line {title:?}");
    assert!(page.contains("\n.SH NAME\n"), "{file}: no NAME section");
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            // roff escapes the dashes: \-\-pid\-dir
            let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
            assert!(page.contains(&escaped), "{file}: --{long} is missing");
        }
    }
    if let Some(after) = cmd.get_after_long_help() {
        let first = after.to_string();
        let first = first.lines().next().expect("a line");
        assert!(
            page.contains(first),
            "{file}: the closing help is missing: {first}"
        );
    }
}

#[test]
fn every_page_has_every_option_of_its_command() {
    let (dir, _) = written();
    for cmd in manpages::programs() {
        let name = cmd.get_name().to_owned();
        assert_page_matches(dir.path(), &format!("{name}.1"), &cmd);
        for sub in cmd.get_subcommands() {
            let file = format!("{name}-{}.1", sub.get_name());
            assert_page_matches(dir.path(), &file, sub);
        }
    }
}

#[test]
fn the_binary_writes_the_pages_and_refuses_a_missing_dir() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let bin = env!("CARGO_BIN_EXE_manpages");
    let ok = std::process::Command::new(bin)
        .arg(dir.path())
        .output()
        .expect("ran");
    assert!(ok.status.success(), "{ok:?}");
    assert!(dir.path().join("image-launcher.1").is_file());
    let missing = std::process::Command::new(bin)
        .arg(dir.path().join("missing"))
        .output()
        .expect("ran");
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    let usage = std::process::Command::new(bin).output().expect("ran");
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}
