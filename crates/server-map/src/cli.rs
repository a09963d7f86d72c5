//! The command line of `server-map`: the map's arguments, the subcommands
//! for people and their arguments, with the help `--help` prints. Here, in
//! the library, so that the man pages (`crates/manpages`) are generated from
//! the very definitions `--help` prints; the program (`main.rs`) runs them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use rewritemap::CommonArgs;
use vmpool::PortSpec;

/// Apache RewriteMap program for balance.conf: answers the value of KEY
/// (one alternative at random for a|b|c), or NULL; re-reads FILE when it
/// changes.
#[derive(Debug, Parser)]
#[command(
    name = "server-map",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_long_help = HELP_APACHE
)]
pub struct Args {
    /// A subcommand for people, instead of serving the map.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The map file (balance.conf). A file named like a subcommand must be
    /// given with a path: ./check
    #[arg(value_name = "FILE", required = true)]
    pub file: Option<PathBuf>,

    /// Answer these keys and exit (0 when every key is found), instead of
    /// reading keys from stdin.
    #[arg(value_name = "KEY")]
    pub keys: Vec<OsString>,

    /// The options every map program has (--log-level).
    #[command(flatten)]
    pub common: CommonArgs,
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

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a map file: errors and warnings with line numbers; exit 0
    /// when it has no error, 1 otherwise.
    ///
    /// Errors: a file refused as a whole (empty, NUL byte, invalid UTF-8,
    /// no entry, unreadable), duplicate keys (the first wins), empty
    /// alternatives (a|b| answers NULL when picked), ports outside 1..65535,
    /// ALL listing a port no key maps to, lines Apache's own reader would
    /// cut (over 1023 bytes). Warnings: indented lines (Apache ignores them),
    /// keys without a value, text after the value, no final newline, no ALL.
    ///
    /// With --against CURRENT (the file in place, balance.conf): also an
    /// error for each server of CURRENT whose VM listens now and which FILE
    /// drops or sends to another port (its sessions would lose their route),
    /// exactly as `switch CURRENT FILE` would refuse it.
    Check {
        /// The map file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The map in place, to see whether switching to FILE would orphan
        /// the sessions of a VM that listens.
        #[arg(long, value_name = "CURRENT")]
        against: Option<PathBuf>,
    },

    /// Cut over atomically: validate NEW like `check`, copy it to a temp
    /// file next to FILE and rename it over FILE (FILE is never half
    /// written); print what changed.
    ///
    /// FILE keeps its mode and owner (a new FILE gets 0644). If NEW has an
    /// error, nothing is written and the exit status is 1. So too if NEW
    /// drops a server of FILE whose VM listens (or sends its name to another
    /// port): its sessions would lose their route; the servers are named,
    /// and --force switches anyway. A running map answers from the new file
    /// at its next lookup.
    Switch {
        /// The map file in place (balance.conf).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The file to put in its place (balance.confB).
        #[arg(value_name = "NEW")]
        new: PathBuf,
        /// Switch even if NEW leaves the sessions of a listening VM without
        /// a route.
        #[arg(long)]
        force: bool,
    },

    /// Show every server of a map file (in ALL, listening, accept queue, pid,
    /// uptime, in the live map, state) and a summary.
    ///
    /// QUEUE is the accept queue: waiting connections/most it holds, "full"
    /// for a VM that accepts nothing (busy or hung). With --pid-dir: the pid
    /// and uptime of each VM. With --live-map: whether the live map routes
    /// to it (LIVE), and a summary line for the live map (how many servers
    /// it has, whether it has ALL).
    ///
    /// A server is a key whose value is one port (app3001 3001); ALL is the
    /// active set. States: active (in ALL, listening), draining (listening,
    /// not in ALL: serving the sessions it still has), starting (a VM is
    /// running but not listening yet), stopping (the same, outside ALL),
    /// down (in ALL, nothing running: launched on the next request that needs
    /// it), stopped.
    Status(StatusArgs),

    /// Stop the pool's VMs, only ours: SIGTERM, then SIGKILL after a grace
    /// period; say what became of each.
    ///
    /// Ours: each process that a pid record of --pid-dir names, while its pid
    /// and start time still match. SIGTERM to all at once, SIGKILL to those
    /// still running after --grace-s; one line per VM, then a summary. Exit 0
    /// when every VM recorded is gone, 2 if one could not be stopped.
    ///
    /// A record whose pid now belongs to another process is left alone (and
    /// said so). Stop the site first (a2dissite and reload Apache) to keep
    /// the launcher from launching VMs again for new requests; or stop only
    /// some VMs (--ports), such as a drained set after a cut-over.
    Stop(StopArgs),

    /// Before a reload: check what the launcher will need with the arguments
    /// the site really gives it (Apache expands its configuration; each
    /// image-launcher map is run with --check). One line per check; exit 0
    /// when all pass, 1 otherwise, 2 when Apache's configuration cannot be
    /// read.
    ///
    /// Run it beside `apache2ctl configtest`: configtest checks Apache's
    /// syntax, preflight that the VM command is an absolute path the VM user
    /// can execute, the user exists and is not root, the pid and log
    /// directories are safe, the live map exists, the balance file is good
    /// and its active set within the ports.
    Preflight(PreflightArgs),

    /// A security cut-over: switch FILE to NEW and take every server outside
    /// NEW's ALL out of service at once: their names leave FILE (a cookie
    /// naming one, real or forged, gets a new session on the new set), then
    /// their VMs are stopped.
    ///
    /// NEW is checked like `switch` checks it, and every port of its ALL
    /// must listen (--force retires anyway). FILE becomes NEW without the
    /// lines of the retired servers (the servers of FILE or NEW whose port
    /// is not in NEW's ALL), written atomically. With --live-map, it waits
    /// until the live map routes none of them; then until no request to them
    /// is in flight (at most --grace-s). They are stopped like `stop` stops
    /// them: only ours, SIGTERM, then SIGKILL after --grace-s. Exit 0 when
    /// every retired VM is gone, 1 if NEW cannot be used, 2 if a VM could
    /// not be stopped.
    Retire(RetireArgs),

    /// Drain this whole host for a front (HAProxy) in front of several
    /// hosts, or end the drain: its sessions go on, no new one comes.
    ///
    /// on creates FILE.drain next to the live map, off removes it; the live
    /// map's writer (image-launcher) then writes HOST drain (or up, or down)
    /// in the live map, and the site's health URL answers 404 (200, 503),
    /// which the front's http-check reads. Both wait until the live map says
    /// so (exit 0), or say why it does not (exit 2: no launcher writes the
    /// live map; the flag stays). status shows the flag and what the live
    /// map says.
    DrainHost(DrainHostArgs),
}

/// `status`'s arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The map file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// image-launcher's pid directory, to show each VM's pid and uptime.
    #[arg(long, value_name = "DIR")]
    pub pid_dir: Option<PathBuf>,
    /// image-launcher's live map (its --live-map, Apache's LIVE map), to
    /// show which servers Apache routes to without asking a program, and
    /// whether it has ALL (the whole active set is up).
    #[arg(long, value_name = "FILE")]
    pub live_map: Option<PathBuf>,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Give up on a connect probe after this long.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub timeout_ms: u64,
}

/// `stop`'s arguments.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// image-launcher's pid directory (its --pid-dir): every `<port>.pid`
    /// in it names a VM.
    #[arg(long, value_name = "DIR")]
    pub pid_dir: PathBuf,
    /// Only the VMs of these ports (3001-3010, or 3001,3005,3007-3009);
    /// by default every VM with a pid record.
    #[arg(long, value_name = "SPEC")]
    pub ports: Option<PortSpec>,
    /// How long a VM has to exit after SIGTERM before it gets SIGKILL.
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub grace_s: u64,
}

/// `retire`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RetireArgs {
    /// The map file in place (balance.conf).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The file whose active set takes over (balance.confB): FILE becomes
    /// this file without the servers outside its ALL.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    /// image-launcher's pid directory (its --pid-dir): the retired VMs'
    /// records.
    #[arg(long, value_name = "DIR")]
    pub pid_dir: PathBuf,
    /// The live map (the file of the LIVE map): the VMs are stopped only
    /// once it routes none of them (waited for 5 s at most).
    #[arg(long, value_name = "FILE")]
    pub live_map: Option<PathBuf>,
    /// How long to wait for requests in flight to the retired VMs, and how
    /// long a VM has to exit after SIGTERM before it gets SIGKILL.
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub grace_s: u64,
    /// Retire even if a port of NEW's active set does not listen (new
    /// sessions then wait for its VM to start).
    #[arg(long)]
    pub force: bool,
}

/// `preflight`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    /// The Apache binary.
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/apache2")]
    pub apache: PathBuf,
    /// A shell file of environment variables Apache's configuration needs,
    /// read first when it exists (Debian's apache2ctl reads it too).
    #[arg(long, value_name = "FILE", default_value = "/etc/apache2/envvars")]
    pub envvars: PathBuf,
    /// Apache's main configuration file (-f), when not its default.
    #[arg(long, value_name = "FILE")]
    pub conf: Option<PathBuf>,
}

/// `drain-host`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DrainHostArgs {
    /// on: drain the host (no new session; its sessions go on); off: end
    /// the drain; status: what the flag and the live map say.
    #[arg(value_enum, value_name = "ACTION")]
    pub action: Action,
    /// image-launcher's live map (its --live-map, the site's
    /// SEASIDE_LIVE_MAP); the flag is FILE.drain, next to it.
    #[arg(long, value_name = "FILE")]
    pub live_map: PathBuf,
    /// How long on and off wait for the live map to say so.
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub wait_s: u64,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[expect(
    missing_docs,
    reason = "a variant's doc comment would become --help text; DrainHostArgs::action says what each does"
)]
pub enum Action {
    On,
    Off,
    Status,
}
