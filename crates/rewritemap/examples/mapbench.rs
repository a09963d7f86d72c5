//! `mapbench`: measures a `RewriteMap prg:` program the way Apache uses it.
//!
//! Apache writes one key, waits for exactly one answer line, and only then
//! writes the next key, all under one global mutex; so what matters is the
//! latency of one round trip, not throughput. This driver starts PROGRAM like
//! Apache does ([`rewritemap::client::MapProcess`]: empty environment, pipes),
//! asks `--warmup` keys, then `--lookups` keys one at a time (cycling over
//! the `--key`s), timing each round trip, and checks every answer.
//!
//! ```text
//! cargo run --release -p rewritemap --example mapbench -- \
//!     --lookups 20000 --key 3001 --expect 'open{key}' -- target/release/verify-port
//! ```
//!
//! It prints one JSON line on stdout: `lookups`, `warmup`, `p50_us`, `p90_us`,
//! `p99_us`, `max_us`, `min_us`, `mean_us`, `wall_s`, the child's peak and
//! current resident memory (`peak_rss_kb` = VmHWM, `rss_kb` = VmRSS, read from
//! `/proc/<pid>/status` before its stdin is closed) and the CPU time the child
//! and its waited-for children used per measured lookup (`cpu_us_per_lookup`,
//! from `/proc/<pid>/stat`, in 10 ms ticks, so only meaningful over many
//! lookups).
//!
//! # Failure modes
//! A wrong answer, a missing answer within `--timeout-ms`, or a program that
//! does not exit 0 on end of input stops the run with a message on stderr
//! (including the program's stderr) and exit status 1: a benchmark of wrong
//! answers is worthless. Bad options exit 2.
//!
//! # The stand-in VM
//! `mapbench listen --port-file F --count-file C [--threads N]` is the
//! listener a benchmark of a port probe needs: it listens on a free loopback
//! port (written to F), accepts and closes every connection on N threads, so
//! that its accept queue never fills even at tens of thousands of probes a
//! second, and rewrites C with the number of connections accepted so far
//! every 20 ms. It runs until killed.
//!
//! # A launch, timed against the port
//! `mapbench launch --key PORT [--ready-key K]... [--expect T] -- PROGRAM ARGS`
//! measures one lookup of a port that nothing listens on yet (a launcher's
//! key), against the moment that port starts listening: a thread connects
//! to `127.0.0.1:PORT` every `--poll-us` until a connection is accepted. The
//! `--ready-key`s are asked first (answers not checked), so that the
//! program's own start-up is not measured, as Apache starts its maps long
//! before the first request. It prints one JSON line: `answer`, `answer_ms`
//! (key written to answer read), `port_open_ms` (key written to the port
//! opening; `null` if it did not open within `--open-wait-ms` after the
//! answer), `open_to_answer_ms` (answer_ms - port_open_ms; negative when the
//! answer came first), `open_window_us` and the map's `peak_rss_kb` and
//! `rss_kb` after the lookup. The port opened between the last refused
//! connect and the accepted one, `open_window_us` apart; `port_open_ms` is
//! the earlier of the two, so `open_to_answer_ms` is an upper bound.

// Printing the result line is this program's whole job.
#![allow(clippy::print_stdout)]

use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use rewritemap::client::MapProcess;

/// Benchmark a RewriteMap prg: program: per-lookup round-trip latency and
/// memory, with every answer checked.
#[derive(Debug, Parser)]
struct Args {
    /// Lookups before measuring (answers are still checked).
    #[arg(long, value_name = "N", default_value_t = 200)]
    warmup: u64,

    /// Measured lookups [default: 10000, or unlimited with --duration-s].
    #[arg(long, value_name = "N")]
    lookups: Option<u64>,

    /// Stop measuring after this many seconds (or --lookups, if sooner).
    #[arg(long, value_name = "S")]
    duration_s: Option<f64>,

    /// A key to ask; repeat to cycle over several keys.
    #[arg(long = "key", value_name = "KEY", required = true)]
    keys: Vec<String>,

    /// Every answer must equal this; `{key}` stands for the key asked.
    #[arg(long, value_name = "TEMPLATE", conflicts_with = "expect_prefix")]
    expect: Option<String>,

    /// Every answer must start with this.
    #[arg(long, value_name = "P")]
    expect_prefix: Option<String>,

    /// Give up on one answer after this long.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,

    /// A name for this run, copied into the JSON line.
    #[arg(long, value_name = "NAME", default_value = "")]
    label: String,

    /// The map program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
    command: Vec<OsString>,
}

/// `mapbench listen`: a loopback listener that accepts and closes every
/// connection and counts them.
#[derive(Debug, Parser)]
#[command(name = "mapbench listen")]
struct ListenArgs {
    /// Write the port listened on to this file (once listening).
    #[arg(long, value_name = "FILE")]
    port_file: PathBuf,

    /// Keep the number of accepted connections in this file.
    #[arg(long, value_name = "FILE")]
    count_file: PathBuf,

    /// Threads calling accept.
    #[arg(long, value_name = "N", default_value_t = 2)]
    threads: usize,
}

/// `mapbench launch`: one lookup of a port nothing listens on yet, timed
/// against the moment the port starts listening.
#[derive(Debug, Parser)]
#[command(name = "mapbench launch")]
struct LaunchArgs {
    /// The key: a loopback port nothing listens on yet.
    #[arg(long, value_name = "PORT")]
    key: u16,

    /// Asked before the measured lookup, answer not checked, so that the
    /// program is up and reading; repeat for several.
    #[arg(long = "ready-key", value_name = "KEY")]
    ready_keys: Vec<String>,

    /// The answer must equal this; `{key}` stands for the key.
    #[arg(long, value_name = "TEMPLATE")]
    expect: Option<String>,

    /// How often the port is tried with a connect.
    #[arg(long, value_name = "US", default_value_t = 100)]
    poll_us: u64,

    /// Give up on the answer after this long.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    timeout_ms: u64,

    /// After the answer, wait at most this long for the port to open.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    open_wait_ms: u64,

    /// A name for this run, copied into the JSON line.
    #[arg(long, value_name = "NAME", default_value = "")]
    label: String,

    /// The map program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
    command: Vec<OsString>,
}

/// The check applied to every answer.
enum Expect {
    Any,
    Exact(String),
    Prefix(String),
}

impl Expect {
    fn wanted(&self, key: &str) -> String {
        match self {
            Expect::Any => "anything".to_owned(),
            Expect::Exact(template) => format!("{:?}", template.replace("{key}", key)),
            Expect::Prefix(prefix) => format!("a line starting with {prefix:?}"),
        }
    }

    fn accepts(&self, key: &str, answer: &str) -> bool {
        match self {
            Expect::Any => true,
            Expect::Exact(template) => *answer == template.replace("{key}", key),
            Expect::Prefix(prefix) => answer.starts_with(prefix.as_str()),
        }
    }
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "listen") {
        let args = ListenArgs::parse_from(std::env::args_os().skip(1));
        return match listen(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("mapbench listen: {message}");
                ExitCode::FAILURE
            }
        };
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "launch") {
        let args = LaunchArgs::parse_from(std::env::args_os().skip(1));
        return match launch(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("mapbench launch: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    if args.lookups == Some(0) {
        eprintln!("mapbench: --lookups must be at least 1");
        return ExitCode::from(2);
    }
    if let Some(s) = args.duration_s
        && !(s.is_finite() && s > 0.0)
    {
        eprintln!("mapbench: --duration-s must be a positive number of seconds");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("mapbench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark and returns the JSON result line.
fn run(args: &Args) -> Result<String, String> {
    let expect = match (&args.expect, &args.expect_prefix) {
        (Some(t), _) => Expect::Exact(t.clone()),
        (None, Some(p)) => Expect::Prefix(p.clone()),
        (None, None) => Expect::Any,
    };
    let (mut map, shown) = start_map(&args.command)?;
    let pid = map.pid();
    let timeout = Duration::from_millis(args.timeout_ms);
    let lookups_cap = match (args.lookups, args.duration_s) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => 10_000,
    };
    let stop_at = args
        .duration_s
        .map(|s| Instant::now() + Duration::from_secs_f64(s));

    let mut asked: u64 = 0;
    let mut ask = |map: &mut MapProcess| -> Result<Duration, String> {
        let key = &args.keys[(asked % args.keys.len() as u64) as usize];
        asked += 1;
        let (answer, elapsed) = map.ask(key, timeout).map_err(|e| {
            format!(
                "lookup {asked} (key {key:?}): {e}\n--- stderr of {shown} ---\n{}",
                map.stderr()
            )
        })?;
        if !expect.accepts(key, &answer) {
            return Err(format!(
                "WRONG ANSWER at lookup {asked}: key {key:?} got {answer:?}, expected {}\n\
                 --- stderr of {shown} ---\n{}",
                expect.wanted(key),
                map.stderr()
            ));
        }
        Ok(elapsed)
    };

    for _ in 0..args.warmup {
        ask(&mut map)?;
    }
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    let mut samples: Vec<u64> = Vec::with_capacity(lookups_cap.min(10_000_000) as usize);
    while (samples.len() as u64) < lookups_cap && stop_at.is_none_or(|t| Instant::now() < t) {
        let elapsed = ask(&mut map)?;
        samples.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }
    let wall = started.elapsed();
    let cpu_after = cpu_ticks(pid);
    let memory = read_status(pid);

    let (status, stderr) = map
        .finish(Duration::from_secs(5))
        .map_err(|e| format!("waiting for {shown} to exit: {e}"))?;
    match status {
        Some(s) if s.success() => {}
        Some(s) => return Err(format!("{shown} exited with {s} on EOF\n{stderr}")),
        None => return Err(format!("{shown} did not exit within 5 s of EOF\n{stderr}")),
    }

    let n = samples.len() as u64;
    samples.sort_unstable();
    let total_ns: u128 = samples.iter().map(|&ns| u128::from(ns)).sum();
    let cpu_us_per_lookup = match (cpu_before, cpu_after) {
        // /proc reports CPU time in USER_HZ ticks, 100 per second on Linux.
        (Some(b), Some(a)) if n > 0 => {
            serde_json::json!(round1(a.saturating_sub(b) as f64 * 10_000.0 / n as f64))
        }
        _ => serde_json::Value::Null,
    };
    let line = serde_json::json!({
        "label": args.label,
        "keys": args.keys,
        "warmup": args.warmup,
        "lookups": n,
        "p50_us": us(percentile(&samples, 50.0)),
        "p90_us": us(percentile(&samples, 90.0)),
        "p99_us": us(percentile(&samples, 99.0)),
        "max_us": us(samples.last().copied().unwrap_or(0)),
        "min_us": us(samples.first().copied().unwrap_or(0)),
        "mean_us": if n > 0 { round1(total_ns as f64 / n as f64 / 1000.0) } else { 0.0 },
        "wall_s": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        "peak_rss_kb": memory.peak_rss_kb,
        "rss_kb": memory.rss_kb,
        "cpu_us_per_lookup": cpu_us_per_lookup,
    });
    Ok(line.to_string())
}

/// Starts the map program `command` (program and arguments) as Apache
/// does; returns it and its command line for messages.
fn start_map(command: &[OsString]) -> Result<(MapProcess, String), String> {
    let (program, program_args) = command.split_first().ok_or("no program given after --")?;
    let shown = command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let map = MapProcess::spawn(program, program_args)
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    Ok((map, shown))
}

/// Runs `mapbench launch` and returns the JSON result line.
fn launch(args: &LaunchArgs) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.key));
    if port_accepts(addr) {
        return Err(format!("{addr} already listens: nothing to launch"));
    }
    let (mut map, shown) = start_map(&args.command)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    for key in &args.ready_keys {
        map.ask(key, timeout).map_err(|e| {
            format!(
                "ready key {key:?}: {e}\n--- stderr of {shown} ---\n{}",
                map.stderr()
            )
        })?;
    }
    let watch = PortWatch::start(addr, Duration::from_micros(args.poll_us))
        .map_err(|e| format!("cannot start the port watcher: {e}"))?;
    let key = args.key.to_string();
    let sent = Instant::now();
    let asked = map.ask(&key, timeout);
    let answered = Instant::now();
    let memory = read_status(map.pid());
    let (answer, _) = asked.map_err(|e| {
        format!(
            "key {key}: {e}\n--- stderr of {shown} ---\n{}",
            map.stderr()
        )
    })?;
    if let Some(template) = &args.expect
        && answer != template.replace("{key}", &key)
    {
        return Err(format!(
            "WRONG ANSWER: key {key} got {answer:?}, expected {:?}\n--- stderr of {shown} ---\n{}",
            template.replace("{key}", &key),
            map.stderr()
        ));
    }
    let opened = watch.wait(answered + Duration::from_millis(args.open_wait_ms));
    let (status, stderr) = map
        .finish(Duration::from_secs(5))
        .map_err(|e| format!("waiting for {shown} to exit: {e}"))?;
    match status {
        Some(s) if s.success() => {}
        Some(s) => return Err(format!("{shown} exited with {s} on EOF\n{stderr}")),
        None => return Err(format!("{shown} did not exit within 5 s of EOF\n{stderr}")),
    }
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1000.0;
    let signed_ms = |from: Instant, to: Instant| match to.checked_duration_since(from) {
        Some(d) => ms(d),
        None => -ms(from - to),
    };
    let line = serde_json::json!({
        "label": args.label,
        "key": key,
        "answer": answer,
        "answer_ms": ms(answered - sent),
        "port_open_ms": opened.map(|o| signed_ms(sent, o.after)),
        "open_to_answer_ms": opened.map(|o| signed_ms(o.after, answered)),
        "open_window_us": opened.map(|o| round1((o.before - o.after).as_secs_f64() * 1e6)),
        "peak_rss_kb": memory.peak_rss_kb,
        "rss_kb": memory.rss_kb,
    });
    Ok(line.to_string())
}

/// True if a connection to `addr` is accepted (by the kernel, for a
/// listening socket); a refused connect on loopback fails at once. A
/// connect whose source port happens to be the port itself connects to
/// itself (TCP simultaneous open) with nothing listening: not counted.
fn port_accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        .is_ok_and(|s| s.local_addr().is_ok_and(|local| local != addr))
}

/// When a port started listening: after `after` (a connect was refused
/// then) and before `before` (a connect started then was accepted).
#[derive(Debug, Clone, Copy)]
struct Opened {
    after: Instant,
    before: Instant,
}

/// A thread that tries a port with a connect every `every` until one is
/// accepted; dropped, it stops at its next try.
struct PortWatch {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Option<Opened>>>,
}

impl PortWatch {
    fn start(addr: SocketAddr, every: Duration) -> std::io::Result<PortWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("port-watch".into())
            .spawn(move || {
                let mut refused_at = Instant::now();
                loop {
                    let tried_at = Instant::now();
                    if port_accepts(addr) {
                        return Some(Opened {
                            after: refused_at,
                            before: tried_at,
                        });
                    }
                    refused_at = tried_at;
                    if stopped.load(Ordering::Relaxed) {
                        return None;
                    }
                    thread::sleep(every);
                }
            })?;
        Ok(PortWatch {
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until the port opens or `deadline` passes.
    fn wait(mut self, deadline: Instant) -> Option<Opened> {
        let thread = self.thread.take()?;
        while !thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        self.stop.store(true, Ordering::Relaxed);
        thread.join().ok().flatten()
    }
}

impl Drop for PortWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(ns: u64) -> f64 {
    round1(ns as f64 / 1000.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Resident memory of the child, in kB.
#[derive(Debug, Default)]
struct Memory {
    peak_rss_kb: Option<u64>,
    rss_kb: Option<u64>,
}

fn read_status(pid: u32) -> Memory {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Memory::default();
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Memory {
        peak_rss_kb: field("VmHWM:"),
        rss_kb: field("VmRSS:"),
    }
}

/// utime + stime + cutime + cstime of `pid`, in USER_HZ ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields restart after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11.
    fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum()
}

/// Listens on a free loopback port, accepts and closes connections forever.
fn listen(args: &ListenArgs) -> Result<(), String> {
    use nix::sys::socket::{Backlog, listen};
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    // listen() again on a listening socket sets its queue: the largest the
    // kernel allows (net.core.somaxconn) instead of std's default.
    listen(&listener, Backlog::MAXALLOWABLE).map_err(|e| format!("listen: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?
        .port();
    let accepted = Arc::new(AtomicU64::new(0));
    for _ in 0..args.threads.max(1) {
        let listener = listener
            .try_clone()
            .map_err(|e| format!("cloning the listener: {e}"))?;
        let accepted = Arc::clone(&accepted);
        thread::spawn(move || {
            loop {
                // Accept and drop at once: the connection closes.
                match listener.accept() {
                    Ok(_) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    // Out of descriptors or memory: do not spin on it.
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        });
    }
    // The count file exists before the port file: a reader that has seen
    // the port can read the count.
    let mut reported = accepted.load(Ordering::Relaxed);
    write_atomically(&args.count_file, reported)?;
    write_atomically(&args.port_file, port)?;
    loop {
        let now = accepted.load(Ordering::Relaxed);
        if now != reported {
            write_atomically(&args.count_file, now)?;
            reported = now;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `value` and a newline to `path` through a temporary file and a
/// rename, so a reader never sees a partial number.
fn write_atomically(path: &Path, value: impl std::fmt::Display) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, format!("{value}\n")).map_err(|e| format!("writing {tmp:?}: {e}"))?;
    fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}
