//! The command line, and its validation into a [`Config`] the launcher can
//! trust: directories checked, the user resolved, the command absolute.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use rewritemap::CommonArgs;
use vmpool::safedir::SafeDir;
use vmpool::systemd::{self, Scope};
use vmpool::{Identity, PortSpec, ProbeMethod};

use crate::supervise::command_problem;

/// The placeholder replaced by the port in CMD, its arguments and `--env`
/// values.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// Apache RewriteMap program: answers a port whose VM is listening,
/// launching the VM on demand.
#[derive(Debug, Parser)]
#[command(version, after_long_help = HELP_APACHE)]
pub struct Args {
    /// The pool: the ports this launcher may launch VMs on, e.g. 3001-3010
    /// or 3001,3005,3007-3009.
    #[arg(long, value_name = "SPEC")]
    pub ports: PortSpec,

    /// Where pid records (PORT.pid) and lock files (PORT.lock) live;
    /// created if missing. Must be owned by root or by the launcher's user,
    /// and not world-writable without the sticky bit.
    #[arg(long, value_name = "DIR")]
    pub pid_dir: PathBuf,

    /// Where each VM's stdout and stderr are appended (PORT.log). Same
    /// ownership rules as --pid-dir.
    #[arg(long, value_name = "DIR")]
    pub log_dir: PathBuf,

    /// Run VMs as this user (and its groups), or USER:GROUP. Required when
    /// the launcher runs as root: VMs never run as root.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// How long a VM may take from launch to listening. Until then it is
    /// "starting" (never killed, never launched twice); after it, a VM that
    /// does not listen is killed and relaunched. Also the longest a lookup
    /// waits in a cold pool.
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub start_timeout_ms: u64,

    /// A VM that exits sooner than this after its launch (even after it
    /// listened) counts as a failed start: its port backs off (1 s, doubling
    /// up to 60 s), so a broken image is not relaunched in a loop.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub min_uptime_ms: u64,

    /// Always wait for the key's own VM (the original launcher's behaviour),
    /// instead of answering another listening port while it starts.
    #[arg(long)]
    pub wait: bool,

    /// The server map (balance.conf). When given, a port answered while the
    /// key's VM starts is taken from the active set, its ALL entry, so that
    /// after a cut-over new sessions land on the new set as soon as one of
    /// its VMs is up; and the key ALL stands for a random port of it.
    #[arg(long, value_name = "FILE")]
    pub balance: Option<PathBuf>,

    /// Keep FILE equal to the truth about the pool, in Apache's txt/rnd
    /// syntax, for `RewriteMap LIVE "rnd:FILE"`: `NAME PORT` for each server
    /// of --balance whose VM is up, `ALL P1|P2|...` when the whole active set
    /// is up. One launcher at a time writes it (FILE.lock); a port is answered
    /// for a new session only once it is in FILE. Its directory must belong
    /// to root or to the launcher's user.
    #[arg(long, value_name = "FILE", requires = "balance")]
    pub live_map: Option<PathBuf>,

    /// How often the live map's writer checks the pool in the kernel's
    /// table, besides the changes it is told of at once (VM exits, launches,
    /// balance.conf): the longest a change nobody reports (a VM that closes
    /// its socket and lives on) takes to reach the map.
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub check_every_ms: u64,

    /// With --live-map: a VM is hung when work has waited for it (a
    /// connection in its accept queue, unread bytes on a connection it
    /// accepted) and it has taken none of it (accepted nothing, read nothing)
    /// for this long. It then leaves the live map at once and, if its pid
    /// record proves it is ours, is killed, to be relaunched on demand. Read
    /// from the kernel's queues: no request is sent to the VM. Choose it
    /// longer than any honest request (a quiet VM is never hung, and a
    /// request longer than this holding others up is).
    #[arg(long, value_name = "S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hang_timeout_s: u64,

    /// With --live-map: ask each VM that is up GET PATH every
    /// --health-every-s; an answer DYING (the body, with any status) puts the
    /// VM in drain: no new session (out of ALL), its sessions stay. No
    /// answer is not a verdict (a busy VM cannot answer). Without it, no
    /// request is ever sent to a VM.
    #[arg(long, value_name = "PATH", requires = "live_map")]
    pub health_path: Option<String>,

    /// With --live-map: write the pool's metrics to FILE (Prometheus text
    /// format, for node_exporter's textfile collector, e.g.
    /// /var/lib/prometheus/node-exporter/seaside-pool.prom), atomically, on
    /// every change and at least every 15 s.
    #[arg(long, value_name = "FILE", requires = "live_map")]
    pub metrics_file: Option<PathBuf>,

    /// How often --health-path is asked.
    #[arg(long, value_name = "S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub health_every_s: u64,

    /// At most this many VMs starting at once by this launcher (for new
    /// sessions, and when the active set is started after a boot or a
    /// cut-over); 0 means the number of CPUs. `--wait` lookups do not count.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_starting: usize,

    /// How to learn that a port listens: listen-table (the kernel's table of
    /// listening sockets) or connect; see verify-port --help.
    #[arg(long, value_name = "HOW", default_value_t = ProbeMethod::ListenTable)]
    pub probe: ProbeMethod,

    /// The VM's working directory.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub workdir: PathBuf,

    /// Run each VM in a systemd scope of its own (seaside-vm-PORT.scope),
    /// so that it outlives apache2.service (systemctl restart apache2, and
    /// package upgrades, kill every process left in Apache's cgroup): auto
    /// (when systemd runs and the launcher is root), scope (always; fails
    /// every launch without systemd) or off.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = SystemdMode::Auto)]
    pub systemd: SystemdMode,

    /// The slice the VMs' scopes go in: limits for the whole pool are one
    /// `systemctl set-property SLICE MemoryMax=...`.
    #[arg(long, value_name = "SLICE", default_value = "seaside-pool.slice")]
    pub systemd_slice: String,

    /// A property of every VM's scope (systemd.resource-control), e.g.
    /// MemoryMax=2G or CPUQuota=100%; repeat for more. Only with a scope.
    #[arg(long = "vm-property", value_name = "NAME=VALUE")]
    pub vm_properties: Vec<String>,

    /// The systemd-run to use [default: /usr/bin/systemd-run].
    #[arg(long, value_name = "PATH")]
    pub systemd_run: Option<PathBuf>,

    /// Add KEY=VALUE to the VM's environment ({port} is replaced). The VM
    /// gets PATH, HOME, USER and LOGNAME of its user, and these.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Check what a launch will need with these arguments (the VM command
    /// and user, the directories, the live map, the balance file), print one
    /// line per check and exit: 0 when all pass. Nothing is launched.
    /// `server-map preflight` runs it with the site's own arguments.
    #[arg(long)]
    pub check: bool,

    /// Answer these keys and exit (0 when every key got a port), instead of
    /// reading keys from stdin. For trying the launcher by hand.
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<OsString>,

    #[command(flatten)]
    pub common: CommonArgs,

    /// The VM's command: an absolute path and its arguments; {port} is
    /// replaced by the port. Run directly, never through a shell.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

const HELP_APACHE: &str = "\
Apache writes one key per line on stdin: ALL (a random port of the active
set of --balance) or a port; it reads one answer line: a port whose VM is
up, or NULL. Up: the VM listens and, with --live-map, the port is in it.
  up              -> that port, at once; nothing launched
  not up          -> its VM is launched in the background (its old process
                     killed only if it is still ours) and another port that
                     is up is answered at once: of the active set, or else
                     (just after a cut-over to a set not started yet) of the
                     rest of the pool; only when nothing is up (a cold pool),
                     or with --wait, the lookup waits for a VM, at most
                     --start-timeout-ms, else NULL
  outside --ports -> NULL; nothing launched, nothing killed

Apache 2.4, with the live map (the hot path asks no prg: map):
  RewriteMap LIVE \"rnd:/var/lib/seaside/live.map\"
  RewriteMap VMS \"prg:/usr/local/bin/image-launcher --ports 3001-3010 \\
      --balance /etc/seaside/balance.conf --live-map /var/lib/seaside/live.map \\
      --pid-dir /run/seaside --log-dir /var/log/seaside --user seaside-vm \\
      -- /usr/bin/squeak -headless /srv/app.image port {port}\"
  RewriteCond %{HTTP_COOKIE} \"server=(app[0-9]+)\"
  RewriteCond ${LIVE:%1} ^([0-9]+)$
  RewriteRule ^/app(.*)$ http://127.0.0.1:%1/app$1 [P,L]
  RewriteCond ${LIVE:ALL} ^([0-9]+)$
  RewriteRule ^/app(.*)$ http://127.0.0.1:%1/app$1 [P,L]
  RewriteCond ${VMS:ALL} ^([0-9]+)$
  RewriteRule ^/app(.*)$ http://127.0.0.1:%1/app$1 [P,L]

By hand: image-launcher ... --key 3001 -- CMD ARGS";

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The pool.
    pub ports: PortSpec,
    /// The pid directory, checked and held open.
    pub pid_dir: SafeDir,
    /// The log directory, checked and held open.
    pub log_dir: SafeDir,
    /// The VMs' user; `None`: the launcher's own (it is not root).
    pub user: Option<Identity>,
    /// The uid a VM's listener must belong to: the VMs' user's.
    pub vm_uid: u32,
    /// Launch to listening, at most.
    pub start_timeout: Duration,
    /// A VM that exits sooner after launch is a failed start.
    pub min_uptime: Duration,
    /// Always wait for the key's own VM.
    pub wait: bool,
    /// The server map whose ALL entry is the active set.
    pub balance: Option<PathBuf>,
    /// The live map to keep (its directory checked).
    pub live_map: Option<PathBuf>,
    /// The writer's periodic check.
    pub check_every: Duration,
    /// At most this many of our VMs starting at once.
    pub max_starting: usize,
    /// No progress with work waiting for this long: hung.
    pub hang_timeout: Duration,
    /// The VMs' health path (`/...`), if asked.
    pub health_path: Option<String>,
    /// How often it is asked.
    pub health_every: Duration,
    /// Where the metrics go, if anywhere.
    pub metrics_file: Option<PathBuf>,
    /// The probe.
    pub probe: ProbeMethod,
    /// The VM's working directory.
    pub workdir: PathBuf,
    /// The VM's environment, with placeholders.
    pub env: Vec<(OsString, OsString)>,
    /// The VM's program (absolute).
    pub program: PathBuf,
    /// Its arguments, with placeholders.
    pub args: Vec<OsString>,
    /// Under systemd: each VM's scope.
    pub scope: Option<Scope>,
}

/// When the VMs get a systemd scope of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SystemdMode {
    /// When systemd runs and the launcher is root.
    Auto,
    /// Always.
    Scope,
    /// Never.
    Off,
}

impl Config {
    /// Checks everything that can be checked before the first lookup.
    pub fn from_args(args: Args) -> anyhow::Result<Config> {
        let user = resolve_user(args.user.as_deref())?;
        let pid_dir = ensure_dir(&args.pid_dir).context("--pid-dir")?;
        let log_dir = ensure_dir(&args.log_dir).context("--log-dir")?;
        let live_map = args
            .live_map
            .as_deref()
            .map(live_map_path)
            .transpose()
            .context("--live-map")?;
        if let Some(path) = &args.health_path {
            ensure!(
                path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic()),
                "--health-path {path:?}: must start with / and hold no space or control character"
            );
        }
        let mut command = args.command.into_iter();
        let program = PathBuf::from(command.next().context("no CMD after --")?);
        // Not fatal: a launcher that exits leaves Apache's map dead until the
        // next restart. Every launch checks again, so a fixed command is
        // picked up at once.
        if let Some(problem) = command_problem(&program) {
            tracing::error!(
                "{problem}: every launch fails (new sessions get NULL) until it is fixed; no restart needed"
            );
        }
        let args_vec: Vec<OsString> = command.collect();
        let env = vm_environment(user.as_ref(), &args.env)?;
        let mentions_port = args_vec
            .iter()
            .chain(env.iter().map(|(_, v)| v))
            .any(contains_placeholder);
        if !mentions_port {
            tracing::warn!(
                "{PORT_PLACEHOLDER} appears in no argument or --env value: every VM gets the same command line"
            );
        }
        let vm_uid = user
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |u| u.uid.as_raw());
        let scope = systemd_scope(
            args.systemd,
            args.systemd_run,
            args.systemd_slice,
            args.vm_properties,
        )?;
        Ok(Config {
            vm_uid,
            ports: args.ports,
            pid_dir,
            log_dir,
            user,
            start_timeout: Duration::from_millis(args.start_timeout_ms),
            min_uptime: Duration::from_millis(args.min_uptime_ms),
            wait: args.wait,
            balance: args.balance,
            live_map,
            check_every: Duration::from_millis(args.check_every_ms),
            hang_timeout: Duration::from_secs(args.hang_timeout_s),
            health_path: args.health_path,
            health_every: Duration::from_secs(args.health_every_s),
            metrics_file: args.metrics_file,
            max_starting: match args.max_starting {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            },
            probe: args.probe,
            workdir: args.workdir,
            env,
            program,
            args: args_vec,
            scope,
        })
    }
}

/// The VMs' scope, if they get one (see [`SystemdMode`]).
fn systemd_scope(
    mode: SystemdMode,
    systemd_run: Option<PathBuf>,
    slice: String,
    properties: Vec<String>,
) -> anyhow::Result<Option<Scope>> {
    for property in &properties {
        ensure!(
            property.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric())
            }),
            "--vm-property {property:?}: give NAME=VALUE (MemoryMax=2G)"
        );
    }
    ensure!(
        slice.ends_with(".slice")
            && slice
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "--systemd-slice {slice:?}: give a unit name ending in .slice"
    );
    let systemd_run = systemd_run.or_else(systemd::find_systemd_run);
    let use_scope = match mode {
        SystemdMode::Off => false,
        SystemdMode::Scope => true,
        SystemdMode::Auto => {
            systemd::booted() && nix::unistd::geteuid().is_root() && systemd_run.is_some()
        }
    };
    if !use_scope {
        if !properties.is_empty() {
            tracing::warn!("--vm-property is ignored: the VMs get no systemd scope (--systemd)");
        }
        return Ok(None);
    }
    let systemd_run =
        systemd_run.context("--systemd scope: no systemd-run found (--systemd-run)")?;
    let dropper = std::env::current_exe().context("--systemd scope: the launcher's own path")?;
    tracing::info!(
        "each VM runs in a systemd scope of its own (seaside-vm-PORT.scope in {slice}): it outlives apache2.service"
    );
    Ok(Some(Scope {
        systemd_run,
        slice,
        properties,
        dropper,
    }))
}

/// The live map's path with its directory checked (and created if missing,
/// mode 0755): the map is replaced by rename there, and its lock lives
/// there.
fn live_map_path(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    Ok(ensure_dir(dir)?.path().join(name))
}

/// Creates `dir` (mode 0755) if it is missing, as after a reboot empties
/// `/run`; checks it component by component and holds it open.
fn ensure_dir(dir: &std::path::Path) -> anyhow::Result<SafeDir> {
    Ok(SafeDir::open_or_create(dir)?)
}

/// As root, `--user` is required and must not be root; otherwise VMs run as
/// the launcher's user, and `--user` may only name that user.
fn resolve_user(spec: Option<&str>) -> anyhow::Result<Option<Identity>> {
    let root = nix::unistd::geteuid().is_root();
    match spec {
        None if root => bail!(
            "refusing to run as root without --user: VMs must not run as root (give e.g. --user www-data)"
        ),
        None => Ok(None),
        Some(spec) => {
            let identity = Identity::lookup(spec).with_context(|| format!("--user {spec}"))?;
            ensure!(
                !identity.uid.is_root(),
                "--user {spec}: refusing to run VMs as root"
            );
            ensure!(
                identity.gid.as_raw() != 0 && identity.groups.iter().all(|g| g.as_raw() != 0),
                "--user {spec}: refusing to run VMs with group 0 (root's group, which owns files a VM must not write): give the VM user a group of its own"
            );
            if !root {
                ensure!(
                    identity.uid == nix::unistd::geteuid(),
                    "--user {spec}: only root can switch users; run the launcher as root or drop --user"
                );
                return Ok(None);
            }
            Ok(Some(identity))
        }
    }
}

fn vm_environment(
    user: Option<&Identity>,
    extra: &[String],
) -> anyhow::Result<Vec<(OsString, OsString)>> {
    let me = match user {
        Some(user) => user.clone(),
        None => Identity::current().context("looking up the launcher's own user")?,
    };
    let mut env: Vec<(OsString, OsString)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), me.home.into_os_string()),
        ("USER".into(), me.name.clone().into()),
        ("LOGNAME".into(), me.name.into()),
    ];
    for pair in extra {
        let (key, value) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--env {pair:?}: expected KEY=VALUE"))?;
        env.retain(|(k, _)| k != key);
        env.push((key.into(), value.into()));
    }
    Ok(env)
}

fn contains_placeholder(text: &OsString) -> bool {
    text.as_bytes()
        .windows(PORT_PLACEHOLDER.len())
        .any(|w| w == PORT_PLACEHOLDER.as_bytes())
}

/// `text` with every `{port}` replaced by `port`.
pub fn fill_port(text: &OsString, port: u16) -> OsString {
    if !contains_placeholder(text) {
        return text.clone();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    let placeholder = PORT_PLACEHOLDER.as_bytes();
    while !rest.is_empty() {
        if rest.starts_with(placeholder) {
            out.extend_from_slice(port.to_string().as_bytes());
            rest = &rest[placeholder.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    <OsString as std::os::unix::ffi::OsStringExt>::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_fills_every_placeholder_and_nothing_else() {
        let filled = fill_port(&OsString::from("port={port};x{port}{"), 3001);
        assert_eq!(filled, OsString::from("port=3001;x3001{"));
        let filled = fill_port(&OsString::from("{port};touch /tmp/x"), 3002);
        assert_eq!(filled, OsString::from("3002;touch /tmp/x"));
        assert_eq!(
            fill_port(&OsString::from("plain"), 1),
            OsString::from("plain")
        );
    }
}
