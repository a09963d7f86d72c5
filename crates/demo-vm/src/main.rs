//! `demo-vm`: a Seaside-like app server standing in for a Squeak VM in the
//! demo, the launcher's tests, the Apache end-to-end tests and the benchmarks.
//! One process per port; sessions live in memory; the `server` cookie names
//! the VM so that Apache's sticky routing follows it; it exits when idle, as
//! the original Seaside images did.
//!
//! # Protocol
//! HTTP/1.1 on `--bind`:`--port`, keep-alive, one thread per connection. Any
//! method and path; the answer is one `text/plain` line:
//! `port=<port> session=<id> hits=<n> new=<true|false> path=<path>`.
//! A request without a live `session` cookie of this VM gets a new session
//! (`Set-Cookie: session=<16 hex>`); a request whose `server` cookie is
//! missing or names another VM gets `Set-Cookie: server=app<port>` (unless
//! `--no-route-cookie`).
//! `?sleep_ms=N` (at most 10000) delays the answer (a long honest request);
//! `?status=NNN` gives it that status (an application's own error page).
//! A path ending in `/health` answers `OK`, or `DYING` with a 503 once the VM
//! wants no new session (`--dying-after N` requests, or SIGUSR1); one ending
//! in `/hang` makes the VM hang for real: nothing is accepted or read any
//! more (see `control`).
//!
//! # Files
//! None. Logs go to stderr: a `listening on ADDR (pid N)` line once the port
//! listens, and one line saying why it exits.
//!
//! # Failure modes
//! Exit 0: `--idle-exit-s` elapsed without a live session. Exit 1: the
//! simulated crash of `--exit-after-s`. Exit 2: bad flags or the port cannot
//! be bound. SIGTERM keeps its default action (the process dies at once).
//! A malformed request gets a 4xx and its connection is closed; nothing a
//! client sends stops the server.

mod control;
mod http;
mod server;
mod sessions;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::control::Control;
use crate::server::{Config, LOG};

/// A Seaside-like demo app server: one per port, sessions in memory, a
/// `server=app<PORT>` cookie for Apache's sticky routing, idle exit.
#[derive(Debug, Parser)]
#[command(version, after_long_help = HELP_BODY)]
struct Args {
    /// Port to listen on; the VM is named after it (app3001 on 3001; 0 picks a free port).
    #[arg(long, value_name = "PORT")]
    port: u16,

    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    bind: IpAddr,

    /// Wait this long before listening (a slow VM start; huge = never listens).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    start_delay_ms: u64,

    /// Exit with status 0 once no session has been live for this long
    /// (counted from the moment the port listens if no session ever existed).
    /// Without it the VM never exits on its own.
    #[arg(long, value_name = "S")]
    idle_exit_s: Option<u64>,

    /// Simulate a crash: exit with status 1 this long after start
    /// (0 = at once, before listening).
    #[arg(long, value_name = "S")]
    exit_after_s: Option<u64>,

    /// A session expires this long after its last request.
    #[arg(long, value_name = "S", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    session_ttl_s: u64,

    /// Listen, but never accept a connection: a VM that has hung with its
    /// socket open (its accept queue fills up, then connects time out).
    #[arg(long)]
    never_accept: bool,

    /// Serve one connection at a time, as a single-threaded VM does: the
    /// others wait in the kernel's accept queue meanwhile.
    #[arg(long)]
    serial: bool,

    /// Answer DYING on the health path after this many requests (SIGUSR1
    /// does it at any time).
    #[arg(long, value_name = "N")]
    dying_after: Option<u64>,

    /// Never set the `server` cookie: an application that knows nothing of
    /// the pool (the site's SEASIDE_SET_ROUTE_COOKIE makes Apache set it).
    #[arg(long)]
    no_route_cookie: bool,
}

const HELP_BODY: &str = "\
Every answer is one line of text/plain:
  port=3001 session=5f0c2a9e81d4b7c3 hits=2 new=false path=/app/x

As the VM command of image-launcher ({port} becomes each port):
  image-launcher --ports 3001-3010 ... -- demo-vm --port {port} --idle-exit-s 600";

impl Args {
    fn into_config(self) -> Config {
        Config {
            addr: SocketAddr::new(self.bind, self.port),
            start_delay: Duration::from_millis(self.start_delay_ms),
            idle_exit: self.idle_exit_s.map(Duration::from_secs),
            exit_after: self.exit_after_s.map(Duration::from_secs),
            session_ttl: Duration::from_secs(self.session_ttl_s),
            never_accept: self.never_accept,
            serial: self.serial,
            no_route_cookie: self.no_route_cookie,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let control: &'static Control = Box::leak(Box::new(Control::new(args.dying_after)));
    let config = args.into_config();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    if let Err(e) = control::dying_on_sigusr1(control) {
        tracing::warn!(target: LOG, "SIGUSR1 will not turn the VM DYING: {e}");
    }
    match server::run(&config, control) {
        Ok(never) => match never {},
        Err(e) => {
            tracing::error!(target: LOG, "exiting (status 2): {e:#}");
            ExitCode::from(2)
        }
    }
}
