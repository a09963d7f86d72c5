//! Measures the live map's writer: how long after a VM's death its line
//! leaves the map (p50 and max over `--kills` kills), and what the writer
//! costs at rest (CPU share of one core, with the default 100 ms check).
//!
//! ```text
//! cargo build --release -p image-launcher -p demo-vm --examples
//! target/release/examples/live_map_bench --vm target/release/demo-vm --kills 100
//! ```
//! A launcher serves a pool of two ports (both in ALL) with `--live-map`
//! in a fresh directory under `--dir` (default: the system's temp dir; put
//! it on the filesystem the site uses, since every publish is `fsync`ed),
//! as Apache runs it (pipes, empty environment); as root, VMs run as
//! `nobody`. Each kill is a `kill -9` of the first port's VM; the clock runs
//! from the kill to the first read of the map without its line. Markdown on
//! stdout.

#![allow(clippy::print_stdout)] // the report is the program's output

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use image_launcher::livemap::LiveMap;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rewritemap::client::{MapProcess, free_loopback_ports};
use vmpool::PidRecord;

#[derive(Debug, Parser)]
struct Args {
    /// The demo-vm binary.
    #[arg(long)]
    vm: PathBuf,
    /// How many kills to time.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Seconds of rest over which the launcher's CPU is sampled.
    #[arg(long, default_value_t = 10)]
    rest_s: u64,
    /// Where to make the pool's directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const BOUND: Duration = Duration::from_secs(20);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match &args.dir {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    for sub in ["pid", "log"] {
        fs::create_dir(dir.path().join(sub))?;
    }
    let vm = dir.path().join("demo-vm");
    fs::copy(&args.vm, &vm).context("copying the VM binary")?;
    let ports = free_loopback_ports(2);
    let (p1, p2) = (ports[0], ports[1]);
    let balance = dir.path().join("balance.conf");
    fs::write(
        &balance,
        format!("app{p1} {p1}\napp{p2} {p2}\nALL {p1}|{p2}\n"),
    )?;
    let live = dir.path().join("live.map");
    let pid_dir = dir.path().join("pid");
    let mut launcher_args: Vec<String> = vec![
        "--ports".into(),
        format!("{p1},{p2}"),
        "--pid-dir".into(),
        pid_dir.display().to_string(),
        "--log-dir".into(),
        dir.path().join("log").display().to_string(),
        "--balance".into(),
        balance.display().to_string(),
        "--live-map".into(),
        live.display().to_string(),
        "--min-uptime-ms".into(),
        "0".into(),
        "--log-level".into(),
        "warn".into(),
    ];
    if nix::unistd::geteuid().is_root() {
        launcher_args.extend(["--user".into(), "nobody".into()]);
    }
    launcher_args.extend([
        "--".into(),
        vm.display().to_string(),
        "--port".into(),
        "{port}".into(),
    ]);
    let launcher_bin =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/image-launcher");
    let launcher_bin = if launcher_bin.exists() {
        launcher_bin
    } else {
        std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("image-launcher"))
            .context("the image-launcher binary")?
    };
    let mut launcher = MapProcess::spawn(&launcher_bin, &launcher_args)?;
    let result = measure(&args, &mut launcher, &live, &pid_dir, p1);
    // Stop the launcher, then every VM it recorded.
    let _ = launcher.finish(Duration::from_secs(5));
    for port in [p1, p2] {
        if let Ok(Some(record)) = PidRecord::read(&pid_dir, port) {
            let _ = vmpool::kill_if_ours(&record, Duration::from_secs(2));
        }
    }
    result
}

fn measure(
    args: &Args,
    launcher: &mut MapProcess,
    live: &Path,
    pid_dir: &Path,
    p1: u16,
) -> anyhow::Result<()> {
    let map = || LiveMap::parse(&fs::read(live).unwrap_or_default());
    wait(|| map().all.is_some(), "the active set in the map")?;

    // At rest: two VMs up, no lookup, the writer checking every 100 ms.
    let before = cpu_ns(launcher.pid())?;
    let started = Instant::now();
    thread::sleep(Duration::from_secs(args.rest_s));
    let used = cpu_ns(launcher.pid())? - before;
    let at_rest = 100.0 * used as f64 / 1e9 / started.elapsed().as_secs_f64();

    let mut delays = Vec::with_capacity(args.kills);
    for n in 0..args.kills {
        // Until the first port's VM is back in the map (a lookup of that
        // port launches it).
        let deadline = Instant::now() + BOUND;
        while !map().ports().contains(&p1) {
            ensure!(
                Instant::now() < deadline,
                "kill {n}: the VM never came back"
            );
            launcher.ask(&p1.to_string(), BOUND)?;
            thread::sleep(Duration::from_millis(2));
        }
        let record = PidRecord::read(pid_dir, p1)?.context("no pid record")?;
        let killed = Instant::now();
        if kill(Pid::from_raw(record.pid as i32), Signal::SIGKILL).is_err() {
            continue; // it died already (its record was stale): next round
        }
        loop {
            if !map().ports().contains(&p1) {
                delays.push(killed.elapsed());
                break;
            }
            if killed.elapsed() > BOUND {
                bail!("kill {n}: still in the map after {BOUND:?}");
            }
            thread::sleep(Duration::from_micros(50));
        }
    }
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let fs_type = fs_type(live);
    println!("| what | value |");
    println!("|---|---:|");
    println!(
        "| VM killed (SIGKILL) -> its line out of the live map, p50 over {} kills | {:.2} ms |",
        delays.len(),
        ms(delays[delays.len() / 2])
    );
    println!(
        "| same, p90 | {:.2} ms |",
        ms(delays[delays.len() * 9 / 10])
    );
    println!("| same, max | {:.2} ms |", ms(delays[delays.len() - 1]));
    println!(
        "| the launcher at rest (2 VMs up, check every 100 ms), CPU of one core over {} s | {:.4} % |",
        args.rest_s, at_rest
    );
    println!();
    println!("Live map on {fs_type}; every publish is fsynced (file and directory).");
    Ok(())
}

fn wait(mut done: impl FnMut() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOUND;
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// CPU time of every thread of a process so far, in nanoseconds (the
/// scheduler's own count: finer than the 10 ms ticks of /proc/PID/stat).
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// The filesystem type of the directory holding `path`, from /proc/mounts.
fn fs_type(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_owned()))
        })
        .max()
        .map_or_else(|| "an unknown filesystem".into(), |(_, t)| t)
}
