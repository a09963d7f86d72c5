//! The pool's metrics, for node_exporter's textfile collector: the live map's
//! writer renders them in the Prometheus text format (0.0.4) and writes
//! `--metrics-file` atomically (temp file, rename) whenever something but the
//! uptimes changes, and at least every [`REFRESH`].
//!
//! Written by hand rather than with the `prometheus-client` crate: that crate
//! encodes OpenMetrics only (`# EOF`, its own suffixes), and the textfile
//! collector reads the Prometheus text format; a dozen gauges and counters
//! are simpler to write than to adapt.
//!
//! ```text
//! seaside_pool_active_vms 2                      VMs of the active set that are up
//! seaside_vm_up{port="3001"} 1                   listening, not hung
//! seaside_vm_exits_total{port="3001",cause="crash"} 1
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest the file goes without a rewrite (its uptimes age).
pub const REFRESH: Duration = Duration::from_secs(15);

/// Why a VM's life ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitCause {
    /// Stopped by the launcher (start timeout, hung) or by `server-map stop`.
    Stopped,
    /// Exited by itself with status 0 (idle, done, drained).
    Clean,
    /// Exited with another status after a good start.
    Crash,
    /// Killed by a signal nobody here sent.
    Killed,
    /// Exited before listening or within `--min-uptime-ms`.
    FailedStart,
    /// A VM of an earlier launcher: its status cannot be known.
    Unknown,
}

impl ExitCause {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ExitCause::Stopped => "stopped",
            ExitCause::Clean => "clean",
            ExitCause::Crash => "crash",
            ExitCause::Killed => "killed",
            ExitCause::FailedStart => "failed_start",
            ExitCause::Unknown => "unknown",
        }
    }

    /// Every cause, for the zero rows.
    pub const ALL: [ExitCause; 6] = [
        ExitCause::Stopped,
        ExitCause::Clean,
        ExitCause::Crash,
        ExitCause::Killed,
        ExitCause::FailedStart,
        ExitCause::Unknown,
    ];
}

/// One port at one check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortMetrics {
    /// A socket of the VM's user listens.
    pub listening: bool,
    /// Listening and not hung.
    pub up: bool,
    /// In the live map.
    pub in_live_map: bool,
    /// In the active set (ALL of balance.conf).
    pub in_active_set: bool,
    /// Hung.
    pub hung: bool,
    /// Asked to drain.
    pub draining: bool,
    /// Connections waiting in its listener's accept queue.
    pub accept_queue: u32,
    /// VMs launched on it by this launcher.
    pub launches: u64,
    /// Exits counted by cause.
    pub exits: BTreeMap<ExitCause, u64>,
    /// Seconds of backoff left before the next launch.
    pub backoff_s: f64,
    /// Seconds since its VM started, if one runs.
    pub uptime_s: Option<u64>,
}

/// The pool at one check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Per port.
    pub ports: BTreeMap<u16, PortMetrics>,
}

impl Metrics {
    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let active = self.ports.values().filter(|p| p.in_active_set).count();
        let active_up = self
            .ports
            .values()
            .filter(|p| p.in_active_set && p.up)
            .count();
        gauge(
            &mut out,
            "seaside_pool_active_set_size",
            "Ports in the active set (ALL of balance.conf).",
        );
        let _ = writeln!(out, "seaside_pool_active_set_size {active}");
        gauge(
            &mut out,
            "seaside_pool_active_vms",
            "VMs of the active set that are up (listening, not hung).",
        );
        let _ = writeln!(out, "seaside_pool_active_vms {active_up}");
        let per_port: [Gauge; 8] = [
            (
                "seaside_vm_listening",
                "1 if a socket of the VM's user listens on the port.",
                |p| bit(p.listening),
            ),
            (
                "seaside_vm_up",
                "1 if the VM listens and is not hung.",
                |p| bit(p.up),
            ),
            (
                "seaside_vm_in_live_map",
                "1 if Apache routes to the VM through the live map.",
                |p| bit(p.in_live_map),
            ),
            (
                "seaside_vm_hung",
                "1 if work waits for the VM and it takes none.",
                |p| bit(p.hung),
            ),
            (
                "seaside_vm_draining",
                "1 if the VM asked to drain (DYING).",
                |p| bit(p.draining),
            ),
            (
                "seaside_vm_accept_queue",
                "Connections waiting for the VM to accept them.",
                |p| p.accept_queue.to_string(),
            ),
            (
                "seaside_vm_backoff_seconds",
                "Seconds before the port's VM may be launched again.",
                |p| format!("{:.3}", p.backoff_s),
            ),
            (
                "seaside_vm_uptime_seconds",
                "Seconds since the port's VM started (0: none runs).",
                |p| p.uptime_s.unwrap_or(0).to_string(),
            ),
        ];
        for (name, help, value) in per_port {
            gauge(&mut out, name, help);
            for (port, p) in &self.ports {
                let _ = writeln!(out, "{name}{{port=\"{port}\"}} {}", value(p));
            }
        }
        let _ = writeln!(
            out,
            "# HELP seaside_vm_launches_total VMs launched on the port by the launcher that writes the live map."
        );
        let _ = writeln!(out, "# TYPE seaside_vm_launches_total counter");
        for (port, p) in &self.ports {
            let _ = writeln!(
                out,
                "seaside_vm_launches_total{{port=\"{port}\"}} {}",
                p.launches
            );
        }
        let _ = writeln!(
            out,
            "# HELP seaside_vm_exits_total VM exits on the port, by cause (stopped, clean, crash, killed, failed_start, unknown)."
        );
        let _ = writeln!(out, "# TYPE seaside_vm_exits_total counter");
        for (port, p) in &self.ports {
            for cause in ExitCause::ALL {
                let n = p.exits.get(&cause).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "seaside_vm_exits_total{{port=\"{port}\",cause=\"{}\"}} {n}",
                    cause.label()
                );
            }
        }
        out
    }

    /// `self` with the uptimes left out: what makes a rewrite worth it.
    fn without_uptimes(&self) -> Metrics {
        let mut copy = self.clone();
        for port in copy.ports.values_mut() {
            port.uptime_s = port.uptime_s.map(|_| 0);
            port.backoff_s = port.backoff_s.ceil();
        }
        copy
    }
}

/// A per-port gauge: its name, its help, and its value for a port.
type Gauge = (&'static str, &'static str, fn(&PortMetrics) -> String);

fn gauge(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

fn bit(b: bool) -> String {
    u8::from(b).to_string()
}

/// Writes the metrics file when it is worth it.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    last: Option<Metrics>,
    written_at: Option<Instant>,
    failed: bool,
}

impl MetricsFile {
    /// The file at `path`.
    pub fn new(path: PathBuf) -> MetricsFile {
        MetricsFile {
            path,
            last: None,
            written_at: None,
            failed: false,
        }
    }

    /// Writes `metrics` if they changed (uptimes aside) or the file is
    /// [`REFRESH`] old.
    pub fn update(&mut self, metrics: &Metrics) {
        let significant = metrics.without_uptimes();
        let stale = self.written_at.is_none_or(|at| at.elapsed() >= REFRESH);
        if !stale && self.last.as_ref() == Some(&significant) {
            return;
        }
        match write_atomically(&self.path, metrics.render().as_bytes()) {
            Ok(()) => {
                self.last = Some(significant);
                self.written_at = Some(Instant::now());
                self.failed = false;
            }
            Err(e) => {
                if !self.failed {
                    tracing::warn!("--metrics-file {}: cannot write: {e}", self.path.display());
                }
                self.failed = true;
            }
        }
    }
}

/// Temp file in the same directory (created new, never through a symlink),
/// mode 0644, then rename: the collector reads a whole file or the last one.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "metrics".into(), |n| n.to_string_lossy().into_owned());
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp);
    let written =
        vmpool::files::write_new(&temp, bytes, 0o644).and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_type_and_a_row_per_port() {
        let mut metrics = Metrics::default();
        metrics.ports.insert(
            3001,
            PortMetrics {
                listening: true,
                up: true,
                in_active_set: true,
                launches: 2,
                exits: BTreeMap::from([(ExitCause::Crash, 1)]),
                uptime_s: Some(42),
                ..PortMetrics::default()
            },
        );
        metrics.ports.insert(3002, PortMetrics::default());
        let text = metrics.render();
        assert!(text.contains("seaside_pool_active_vms 1\n"), "{text}");
        assert!(text.contains("seaside_vm_up{port=\"3001\"} 1\n"));
        assert!(text.contains("seaside_vm_up{port=\"3002\"} 0\n"));
        assert!(text.contains("seaside_vm_exits_total{port=\"3001\",cause=\"crash\"} 1\n"));
        assert!(text.contains("seaside_vm_uptime_seconds{port=\"3001\"} 42\n"));
        let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(
            families,
            text.lines().filter(|l| l.starts_with("# HELP")).count()
        );
        assert_eq!(families, 12);
    }

    #[test]
    fn the_file_is_rewritten_on_a_change_not_for_an_uptime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pool.prom");
        let mut file = MetricsFile::new(path.clone());
        let mut metrics = Metrics::default();
        metrics.ports.insert(
            3001,
            PortMetrics {
                uptime_s: Some(1),
                ..PortMetrics::default()
            },
        );
        file.update(&metrics);
        let first = fs::read_to_string(&path).expect("written");
        metrics.ports.get_mut(&3001).expect("port").uptime_s = Some(2);
        file.update(&metrics);
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            first,
            "an uptime alone"
        );
        metrics.ports.get_mut(&3001).expect("port").up = true;
        file.update(&metrics);
        assert_ne!(fs::read_to_string(&path).expect("read"), first);
        assert_eq!(
            fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp file left"
        );
    }
}
