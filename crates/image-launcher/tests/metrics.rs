//! The metrics file, read by a real Prometheus text-format parser (the
//! `prometheus_client` Python package of Debian, as node_exporter's textfile
//! collector would read it), says what happened to the pool.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Every sample of the file, `name{labels}` -> value, through the parser.
fn parsed(path: &Path) -> Option<BTreeMap<String, f64>> {
    let program = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = {}\n\
        for family in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
        \x20   for s in family.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       out[f'{s.name}{{{labels}}}'] = s.value\n\
        print(json.dumps(out))\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", program])
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "the parser refused the file:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).ok()
}

fn parser_installed() -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_metrics_file_parses_and_counts_launches_and_exits_by_cause() {
    if !parser_or_skip("needs Debian's python3-prometheus-client (scripts/deps tests installs it)")
    {
        return;
    }
    let mut site = Site::new(2, 2);
    let metrics = site.pool.dir.path().join("pool.prom");
    let metrics_arg = metrics.display().to_string();
    site.launcher(
        &["--metrics-file", &metrics_arg, "--min-uptime-ms", "0"],
        &[],
    );
    site.wait_map("both VMs up", |map| map.all.is_some());
    let (a, b) = (site.pool.ports[0], site.pool.ports[1]);
    let sample = |map: &BTreeMap<String, f64>, key: String| map.get(&key).copied();
    wait_until("the file says both are up", BOUND, || {
        parsed(&metrics)
            .is_some_and(|m| sample(&m, "seaside_pool_active_vms{}".into()) == Some(2.0))
    });
    let vm = site.pool.record(a).expect("record");
    kill(Pid::from_raw(vm.pid as i32), Signal::SIGKILL).expect("kill");
    wait_until("the kill counted", BOUND, || {
        parsed(&metrics).is_some_and(|m| {
            sample(
                &m,
                format!("seaside_vm_exits_total{{cause=killed,port={a}}}"),
            ) == Some(1.0)
        })
    });
    let m = parsed(&metrics).expect("parsed");
    assert_eq!(
        sample(&m, format!("seaside_vm_up{{port={a}}}")),
        Some(0.0),
        "{m:?}"
    );
    assert_eq!(sample(&m, format!("seaside_vm_up{{port={b}}}")), Some(1.0));
    assert_eq!(
        sample(&m, format!("seaside_vm_launches_total{{port={a}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "seaside_pool_active_set_size{}".into()),
        Some(2.0)
    );
    assert_eq!(sample(&m, "seaside_pool_active_vms{}".into()), Some(1.0));
    assert!(sample(&m, format!("seaside_vm_uptime_seconds{{port={b}}}")).is_some());
    assert_eq!(
        sample(
            &m,
            format!("seaside_vm_exits_total{{cause=crash,port={a}}}")
        ),
        Some(0.0)
    );
}

/// True if the parser is installed; otherwise the test reports itself
/// skipped with the reason, or fails where CI runs (it installs the parser).
fn parser_or_skip(reason: &str) -> bool {
    if parser_installed() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{reason}, and CI is set");
    eprintln!("SKIPPED: {reason}");
    false
}
