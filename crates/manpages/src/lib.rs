//! The man pages of the three programs the Debian package ships
//! (`image-launcher`, `server-map` and its subcommands, `verify-port`),
//! rendered by `clap_mangen` from the very clap definitions their `--help`
//! prints, so that the pages cannot drift from the help: there is no second
//! text to keep up to date.
//!
//! `scripts/package` runs the `manpages` binary at build time; nothing of
//! this crate is installed.

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// The manual the pages belong to (the centre of each page's footer line).
const MANUAL: &str = "seaside-pool";

/// The programs, as their clap commands.
pub fn programs() -> [clap::Command; 3] {
    [
        image_launcher::config::Args::command(),
        server_map::cli::Args::command(),
        verify_port::cli::Args::command(),
    ]
}

/// Writes one section 1 page per program and per subcommand (server-map's
/// `check`, `switch`...: `server-map-check.1`) into `dir`, and returns their
/// paths. Hidden subcommands and clap's `help` subcommand get no page.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for cmd in programs() {
        let mut cmd = cmd.disable_help_subcommand(true);
        // Building gives subcommands their display name (server-map-check).
        cmd.build();
        write_with_subcommands(cmd, dir, &mut written)?;
    }
    Ok(written)
}

fn write_with_subcommands(
    cmd: clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_with_subcommands(sub.clone(), dir, written)?;
    }
    // The footer names the package and its version, also on subcommands'
    // pages (clap_mangen's default is the command's own name and version,
    // which subcommands have not).
    let page = clap_mangen::Man::new(cmd)
        .manual(MANUAL)
        .source(format!("{MANUAL} {}", env!("CARGO_PKG_VERSION")));
    written.push(page.generate_to(dir)?);
    Ok(())
}
