//! The command line of `verify-port`: its flags, their help, and the Apache
//! example that `--help` (and the man page) ends with.

use std::ffi::OsString;

use clap::Parser;
use rewritemap::CommonArgs;
use vmpool::{PortSpec, ProbeMethod};

/// Apache RewriteMap program: answers openKEY when a VM listens on the port
/// of KEY, else closed.
#[derive(Debug, Parser)]
#[command(name = "verify-port", version, after_long_help = HELP_APACHE)]
pub struct Args {
    /// Give up on a connect (other hosts, or --probe connect) after this long.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub timeout_ms: u64,

    /// Also allow probing this host (IP literal or name, resolved at start).
    /// localhost, 127.0.0.1 and ::1 are always allowed.
    #[arg(long, value_name = "HOST")]
    pub allow_host: Vec<String>,

    /// Only these ports may be probed (e.g. 3001-3010); others are closed.
    #[arg(long, value_name = "SPEC")]
    pub ports: Option<PortSpec>,

    /// A loopback port is open only when its listener belongs to this user
    /// (the VMs' user): a socket another local user bound on a pool port is
    /// closed, so it never gets a session. Checked in the kernel's table
    /// (a connect cannot tell who listens).
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,

    /// How to learn that a loopback port listens: listen-table (the kernel's
    /// table of listening sockets: the VM sees nothing, and a VM too busy to
    /// accept still counts as up) or connect (a TCP connect per lookup: a
    /// connection each VM must accept, and a VM whose accept queue is full
    /// reads as closed). Other hosts are always probed by connecting.
    #[arg(long, value_name = "HOW", default_value_t = ProbeMethod::ListenTable)]
    pub probe: ProbeMethod,

    /// The options every map program has (--log-level).
    #[command(flatten)]
    pub common: CommonArgs,

    /// Answer these keys and exit (0 when all are open), instead of reading
    /// keys from stdin.
    #[arg(value_name = "KEY")]
    pub keys: Vec<OsString>,
}

const HELP_APACHE: &str = "\
Apache writes one key per line on stdin and reads one answer line:
  3001 -> open3001 | closed      [::1]:3002 -> open[::1]:3002 | closed

Apache 2.4:
  RewriteMap PORTS \"prg:/usr/local/bin/verify-port --ports 3001-3010\"
  RewriteCond %{HTTP_COOKIE} \"server=(app[0-9]+)\"
  RewriteCond ${PORTS:${SERVERS:%1}} ^open([0-9]+)$
  RewriteRule ^/app(.*)$ http://127.0.0.1:%1/app$1 [P,L]

By hand: verify-port 3001 3002   (exit status 0 when every port is open)";
