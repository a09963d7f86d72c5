//! `reload_check`: what server-map's per-lookup change check costs, measured
//! in-process, without the pipe.
//!
//! `server-map` answers every key from [`ReloadingMap::current`], which
//! `stat`s the map file to see whether it changed, then looks the key up.
//! This program times, in one process and in alternating rounds:
//!
//! - `lookup`: `N` lookups in a [`MapFile`] parsed once (no `stat`);
//! - `checked`: `N` times `current()` then the same lookup, as server-map
//!   does for every key;
//! - `stat`: `N` `stat`s of the file alone (`std::fs::metadata`).
//!
//! `checked - lookup` is the cost of the change check. Each figure is the
//! median over `--rounds` rounds, in ns per lookup. One JSON line per key:
//!
//! ```text
//! cargo run --release -p server-map --example reload_check -- balance.conf --key app3001 --key ALL
//! {"check_ns":1148.3,"checked_ns":1168.5,"key":"app3001","lookup_ns":20.3,"lookups":200000,"rounds":7,"stat_ns":1135.0}
//! {"check_ns":1146.8,"checked_ns":1168.9,"key":"ALL","lookup_ns":22.1,"lookups":200000,"rounds":7,"stat_ns":1135.8}
//! ```
//!
//! The file must be older than server-map's "racy" window (2 s), or the
//! first rounds include one re-read; it fails if the file changes during the
//! run, and if the two ways of looking up disagree on whether a key exists.

// Printing the result lines is this program's whole job.
#![allow(clippy::print_stdout)]

use std::fs;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use server_map::{MapFile, ReloadingMap};

/// Time server-map's per-lookup change check on its own.
#[derive(Debug, Parser)]
struct Args {
    /// The map file (balance.conf).
    file: PathBuf,

    /// A key to time; repeat for several (each gets its own line).
    #[arg(long = "key", value_name = "KEY", required = true)]
    keys: Vec<String>,

    /// Lookups per round and way.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    lookups: u32,

    /// Rounds; the median round is reported.
    #[arg(long, value_name = "N", default_value_t = 7)]
    rounds: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("reload_check: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.lookups == 0 || args.rounds == 0 {
        return Err("--lookups and --rounds must be at least 1".into());
    }
    let path = &args.file;
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let parsed = MapFile::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let before = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reloading = ReloadingMap::new(path);
    let mut rng = fastrand::Rng::with_seed(1);
    for key in &args.keys {
        if parsed.get(key).is_none() || reloading.current().get(key).is_none() {
            return Err(format!("key {key:?} is not in {}", path.display()));
        }
        let n = args.lookups;
        let (mut lookup, mut checked, mut stat) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            lookup.push(per_lookup(n, || {
                black_box(parsed.lookup(black_box(key), &mut rng));
            }));
            checked.push(per_lookup(n, || {
                black_box(reloading.current().lookup(black_box(key), &mut rng));
            }));
            stat.push(per_lookup(n, || {
                black_box(fs::metadata(black_box(path)).ok());
            }));
        }
        let (lookup, checked, stat) = (median(lookup), median(checked), median(stat));
        let line = serde_json::json!({
            "key": key,
            "lookups": n,
            "rounds": args.rounds,
            "lookup_ns": round1(lookup),
            "checked_ns": round1(checked),
            "check_ns": round1(checked - lookup),
            "stat_ns": round1(stat),
        });
        println!("{line}");
    }
    let after = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if before.modified().ok() != after.modified().ok() || before.len() != after.len() {
        return Err(format!("{} changed during the run", path.display()));
    }
    Ok(())
}

/// Runs `one` `n` times; nanoseconds per run.
fn per_lookup(n: u32, mut one: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        one();
    }
    duration_ns(started.elapsed()) / f64::from(n)
}

fn duration_ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
