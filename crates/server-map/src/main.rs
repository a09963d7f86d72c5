//! `server-map`: a `RewriteMap prg:` serving `balance.conf` (Apache's
//! `txt:`/`rnd:` syntax), re-read when it changes, plus `check`, `switch`,
//! `status`, `stop`, `retire`, `preflight` and `drain-host` for the people
//! who run the site.
//!
//! # Protocol
//! `server-map FILE`: one key per line on stdin, one answer line on stdout.
//! `app3001` -> `3001`, `ALL` -> one alternative of `3001|3002|...` at
//! random, anything else -> `NULL`. See the library docs for the file syntax
//! and the reload rules.
//!
//! # Files
//! FILE, the map (read only, re-read when it changes); `switch` writes a temp
//! file next to it and renames it over it; `status --pid-dir DIR` reads
//! image-launcher's `DIR/<port>.pid`, and `stop --pid-dir DIR` signals the
//! processes they name while these are still the ones launched (`retire`
//! too, after writing FILE); `status
//! --live-map FILE` reads image-launcher's live map; `drain-host on|off
//! --live-map FILE` creates or removes `FILE.drain`, the host's drain flag.
//!
//! # Failure modes
//! Nothing ends the map but end of input, a closed stdout or SIGTERM; a bad
//! file keeps the last good map (logged once per change); a file that
//! leaves a listening VM's sessions without a route is served and logged
//! as one warning (`switch` refuses it without `--force`). The subcommands
//! exit 0 when all is well, 1 when the file is not good, 2 when they could
//! not do their job.

mod commands;
mod drain_host;
mod preflight;
mod retire;
mod status;
mod stop;

use std::borrow::Cow;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rewritemap::{BadKey, CommonArgs, MapProgram};
use server_map::cli::Args;
use server_map::{MapFile, OrphanWatch, ReloadingMap};

const MAP: MapProgram = MapProgram {
    name: "server-map",
    no: "NULL",
    example_key: "ALL",
};

fn main() -> ExitCode {
    let args = Args::parse();
    match (args.command, args.file) {
        (Some(command), _) => commands::run(command),
        (None, Some(file)) => serve(file, &args.keys, &args.common),
        // clap requires FILE when there is no subcommand.
        (None, None) => ExitCode::from(2),
    }
}

fn serve(file: PathBuf, keys: &[OsString], common: &CommonArgs) -> ExitCode {
    if let Err(e) = MAP.start(common) {
        tracing::error!("cannot start: {e}");
        return ExitCode::from(2);
    }
    let mut map = ReloadingMap::new(file);
    let mut watch = OrphanWatch::new(&map);
    let mut rng = fastrand::Rng::new();
    MAP.run(keys, |key| {
        let current = watch.current(&mut map);
        Ok::<_, BadKey>(answer(current, &mut rng, key))
    })
}

/// The value for `key` (one alternative at random), or `NULL`.
fn answer(map: &MapFile, rng: &mut fastrand::Rng, key: &str) -> Cow<'static, str> {
    match map.lookup(key, rng) {
        Some(value) => Cow::Owned(value.to_owned()),
        None => Cow::Borrowed(MAP.no),
    }
}
