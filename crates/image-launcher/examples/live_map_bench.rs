//! Measures the live map's writer: what it costs (CPU share of one core,
//! at rest and while the VMs are under load), how long after a VM's death
//! its line leaves the map, and how long after a VM hangs.
//!
//! ```text
//! cargo build --release -p image-launcher -p demo-vm --examples
//! target/release/examples/live_map_bench --vm target/release/demo-vm --dir /var/tmp
//! ```
//! A launcher serves a pool of `--vms` ports, all in ALL, with `--live-map`
//! in a fresh directory under `--dir` (default: the system's temp dir; put
//! it on the filesystem the site uses), as Apache runs it (pipes, empty
//! environment); as root, VMs run as `nobody`.
//! - At rest: no request, the writer checking every 100 ms.
//! - Under load: one client thread per VM sends requests back to back on a
//!   kept-alive connection (the writer samples every VM's queues).
//! - Kills: `kill -9` of the first VM; the clock runs from the kill to the
//!   first read of the map without its line.
//! - Hangs: SIGSTOP of the first VM and one request sent to it; the clock
//!   runs from the request to the map without its line (the hang timeout,
//!   `--hang-timeout-s`, is most of it).
//!
//! Markdown on stdout.

#![allow(clippy::print_stdout)] // the report is the program's output

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// VMs in the pool.
    #[arg(long, default_value_t = 10)]
    vms: usize,
    /// How many kills to time.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// How many hangs to time.
    #[arg(long, default_value_t = 20)]
    hangs: usize,
    /// The launcher's --hang-timeout-s.
    #[arg(long, default_value_t = 2)]
    hang_timeout_s: u64,
    /// Seconds over which the launcher's CPU is sampled (at rest, under load).
    #[arg(long, default_value_t = 10)]
    sample_s: u64,
    /// Where to make the pool's directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const BOUND: Duration = Duration::from_secs(30);

struct Pool {
    launcher: MapProcess,
    live: PathBuf,
    pid_dir: PathBuf,
    ports: Vec<u16>,
}

impl Pool {
    fn map(&self) -> LiveMap {
        LiveMap::parse(&fs::read(&self.live).unwrap_or_default())
    }

    fn wait_map(&self, what: &str, done: impl Fn(&LiveMap) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + BOUND;
        while !done(&self.map()) {
            ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Waits until the map lacks `port`; the time it took from `since`.
    fn time_out_of_map(&self, port: u16, since: Instant) -> anyhow::Result<Duration> {
        loop {
            if !self.map().ports().contains(&port) {
                return Ok(since.elapsed());
            }
            if since.elapsed() > BOUND {
                bail!("port {port} still in the map after {BOUND:?}");
            }
            thread::sleep(Duration::from_micros(50));
        }
    }

    /// Asks the launcher for `port` until its VM is back in the map.
    fn bring_back(&mut self, port: u16) -> anyhow::Result<PidRecord> {
        let deadline = Instant::now() + BOUND;
        while !self.map().ports().contains(&port) {
            ensure!(Instant::now() < deadline, "port {port} never came back");
            self.launcher.ask(&port.to_string(), BOUND)?;
            thread::sleep(Duration::from_millis(5));
        }
        PidRecord::read(&self.pid_dir, port)?.context("no pid record")
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.vms >= 2, "--vms: at least 2");
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
    let ports = free_loopback_ports(args.vms);
    let names: String = ports.iter().map(|p| format!("app{p} {p}\n")).collect();
    let all: Vec<String> = ports.iter().map(u16::to_string).collect();
    let balance = dir.path().join("balance.conf");
    fs::write(&balance, format!("{names}ALL {}\n", all.join("|")))?;
    let live = dir.path().join("live.map");
    let pid_dir = dir.path().join("pid");
    let mut launcher_args: Vec<String> = vec![
        "--ports".into(),
        all.join(","),
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
        "--hang-timeout-s".into(),
        args.hang_timeout_s.to_string(),
        "--max-starting".into(),
        args.vms.to_string(),
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
    let launcher_bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("image-launcher"))
        .context("the image-launcher binary")?;
    let launcher = MapProcess::spawn(&launcher_bin, &launcher_args)?;
    let mut pool = Pool {
        launcher,
        live,
        pid_dir,
        ports,
    };
    let result = measure(&args, &mut pool, &fs_type(dir.path()))
        .with_context(|| format!("the launcher said:\n{}", pool.launcher.stderr()));
    // Stop the launcher, then every VM it recorded.
    let Pool {
        launcher,
        pid_dir,
        ports,
        ..
    } = pool;
    let _ = launcher.finish(Duration::from_secs(5));
    for port in ports {
        if let Ok(Some(record)) = PidRecord::read(&pid_dir, port) {
            let _ = kill(Pid::from_raw(record.pid as i32), Signal::SIGCONT);
            let _ = vmpool::kill_if_ours(&record, Duration::from_secs(2));
        }
    }
    result
}

fn measure(args: &Args, pool: &mut Pool, fs_type: &str) -> anyhow::Result<()> {
    pool.wait_map("the active set in the map", |map| map.all.is_some())?;
    let sample = Duration::from_secs(args.sample_s);
    let at_rest = cpu_share(pool.launcher.pid(), sample, || Ok(()))?;
    let (under_load, requests) = under_load(pool, sample)?;

    let first = pool.ports[0];
    let mut kills = Vec::new();
    for _ in 0..args.kills {
        let record = pool.bring_back(first)?;
        let killed = Instant::now();
        if kill(Pid::from_raw(record.pid as i32), Signal::SIGKILL).is_err() {
            continue; // it died already (its record was stale): next round
        }
        kills.push(pool.time_out_of_map(first, killed)?);
    }
    let mut hangs = Vec::new();
    for _ in 0..args.hangs {
        let record = pool.bring_back(first)?;
        kill(Pid::from_raw(record.pid as i32), Signal::SIGSTOP)?;
        let sent = Instant::now();
        let mut waiting = TcpStream::connect(("127.0.0.1", first))?;
        waiting.write_all(b"GET /app/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
        hangs.push(pool.time_out_of_map(first, sent)?);
        // The launcher stops it; the next round relaunches it.
        let deadline = Instant::now() + BOUND;
        while matches!(record.liveness(), Ok(vmpool::Liveness::Running { .. })) {
            ensure!(Instant::now() < deadline, "the hung VM was never stopped");
            thread::sleep(Duration::from_millis(5));
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!("| what | value |");
    println!("|---|---:|");
    println!(
        "| writer at rest ({} VMs up, check every 100 ms), CPU of one core | {at_rest:.3} % |",
        args.vms
    );
    println!(
        "| writer with the {} VMs under load ({requests:.0} requests/s, one keep-alive client each), CPU of one core | {under_load:.3} % |",
        args.vms
    );
    println!(
        "| VM killed (SIGKILL) -> out of the live map, p50 / p90 / max over {} kills | {:.2} / {:.2} / {:.2} ms |",
        kills.len(),
        ms(pct(&mut kills, 50)),
        ms(pct(&mut kills, 90)),
        ms(pct(&mut kills, 100))
    );
    println!(
        "| VM hung (SIGSTOP, one request waiting) -> out of the live map, p50 / max over {} hangs, hang timeout {} s | {:.0} / {:.0} ms |",
        hangs.len(),
        args.hang_timeout_s,
        ms(pct(&mut hangs, 50)),
        ms(pct(&mut hangs, 100))
    );
    println!();
    println!(
        "Live map on {fs_type}; queues sampled every {} ms for a {} s hang timeout.",
        (args.hang_timeout_s * 1000 / 10).clamp(100, 1000),
        args.hang_timeout_s
    );
    Ok(())
}

/// The launcher's CPU share of one core over `span` while `during` runs.
fn cpu_share(
    pid: u32,
    span: Duration,
    during: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let before = cpu_ns(pid)?;
    let started = Instant::now();
    during()?;
    let left = span.saturating_sub(started.elapsed());
    thread::sleep(left);
    let used = cpu_ns(pid)? - before;
    Ok(100.0 * used as f64 / 1e9 / started.elapsed().as_secs_f64())
}

/// One client thread per VM, requests back to back on a kept-alive
/// connection, for `span`: the launcher's CPU share, and requests/s.
fn under_load(pool: &Pool, span: Duration) -> anyhow::Result<(f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = pool
        .ports
        .iter()
        .map(|&port| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            thread::spawn(move || -> anyhow::Result<()> {
                let mut stream = TcpStream::connect(("127.0.0.1", port))?;
                let mut reader = BufReader::new(stream.try_clone()?);
                while !stop.load(Ordering::SeqCst) {
                    stream.write_all(b"GET /app/load HTTP/1.1\r\nHost: b\r\n\r\n")?;
                    read_response(&mut reader)?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let started = Instant::now();
    let share = cpu_share(pool.launcher.pid(), span, || Ok(()))?;
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    Ok((share, rate))
}

/// Reads one HTTP/1.1 response with a Content-Length.
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<()> {
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        ensure!(reader.read_line(&mut line)? > 0, "connection closed");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
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

/// The filesystem type of `path`, from /proc/mounts.
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
