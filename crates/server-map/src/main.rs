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
use server_map::{MapFile, OrphanWatch, ReloadingMap};

use crate::commands::Command;

const MAP: MapProgram = MapProgram {
    name: "server-map",
    no: "NULL",
    example_key: "ALL",
};

/// Apache RewriteMap program for balance.conf: answers the value of KEY
/// (one alternative at random for a|b|c), or NULL; re-reads FILE when it
/// changes.
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_long_help = HELP_APACHE
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// The map file (balance.conf). A file named like a subcommand must be
    /// given with a path: ./check
    #[arg(value_name = "FILE", required = true)]
    file: Option<PathBuf>,

    /// Answer these keys and exit (0 when every key is found), instead of
    /// reading keys from stdin.
    #[arg(value_name = "KEY")]
    keys: Vec<OsString>,

    #[command(flatten)]
    common: CommonArgs,
}

const HELP_APACHE: &str = "\
Apache writes one key per line on stdin and reads one answer line:
  app3001 -> 3001     ALL -> 3002 (one of 3001|3002|3003, at random)     app9 -> NULL

balance.conf (Apache txt/rnd syntax; `server-map check` explains every rule):
  # name     port
  app3001    3001
  app3002    3002
  ALL        3001|3002

Apache 2.4:
  RewriteMap SERVERS \"prg:/usr/local/bin/server-map /etc/seaside/balance.conf\"
  RewriteCond %{HTTP_COOKIE} \"server=(app[0-9]+)\"
  RewriteCond ${PORTS:${SERVERS:%1}} ^open([0-9]+)$
  RewriteRule ^/app(.*)$ http://127.0.0.1:%1/app$1 [P,L]
  RewriteCond ${VMS:${SERVERS:ALL}} ^([0-9]+)$
  RewriteRule ^/app(.*)$ http://127.0.0.1:%1/app$1 [P,L]

The file is re-read at the first lookup after it changes. Cut over with
  server-map switch /etc/seaside/balance.conf /etc/seaside/balance.confB

By hand: server-map balance.conf ALL app3001   (exit status 0 when every key is found)
A map file named check, switch, status, stop, drain-host or help must be given as ./check etc.";

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
