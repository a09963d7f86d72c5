//! `manpages DIR`: writes the man pages of image-launcher, server-map (and
//! its subcommands) and verify-port into DIR, generated from their clap
//! definitions. Run by `scripts/package`; see the library.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next().map(PathBuf::from), args.next()) else {
        eprintln!("usage: manpages DIR   (writes the man pages into DIR, which must exist)");
        return ExitCode::from(2);
    };
    match manpages::write_all(&dir) {
        Ok(pages) => {
            eprintln!(
                "manpages: {} pages written in {}",
                pages.len(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("manpages: {}: {e}", dir.display());
            ExitCode::from(2)
        }
    }
}
