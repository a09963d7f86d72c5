//! `server-map drain-host on|off|status --live-map FILE`: the operator's
//! drain of a whole host, for a front (HAProxy) in front of several hosts.
//!
//! `on` creates the flag `FILE.drain` next to the live map, `off` removes
//! it; the live map's writer (image-launcher) sees it at its next check and
//! writes `HOST drain` (or, after `off`, `HOST up` or `down`) into the live
//! map, which Apache answers on the health URL (404 for drain), and the
//! front sends the host no new session while its sessions go on. Both wait
//! (at most `--wait-s`) until the live map says so, so that the command
//! returns when the drain is in effect, or says why it is not.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use server_map::cli::{Action, DrainHostArgs};
use server_map::{MapFile, read_settled};
use vmpool::HostHealth;
use vmpool::files::checked_dir;
use vmpool::host::{HOST, drain_flag_for, is_drained, set_drained};

/// How often the live map is read while waiting.
const POLL: Duration = Duration::from_millis(20);

pub fn drain_host(out: &mut impl Write, args: &DrainHostArgs) -> anyhow::Result<ExitCode> {
    let map = &args.live_map;
    if args.action == Action::Status {
        return status(out, map);
    }
    let on = args.action == Action::On;
    // The flag is created as root: only in a directory no one else can
    // write in.
    let dir = map.parent().unwrap_or(Path::new("."));
    checked_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .with_context(|| format!("--live-map {}", map.display()))?;
    let note = format!(
        "drained by server-map drain-host on (pid {}, uid {})\n",
        std::process::id(),
        nix::unistd::getuid()
    );
    let flag = drain_flag_for(map);
    let changed = set_drained(map, on, &note).with_context(|| {
        format!(
            "{} {}",
            if on { "creating" } else { "removing" },
            flag.display()
        )
    })?;
    let done = |health: Option<HostHealth>| match health {
        Some(HostHealth::Drain) => on,
        Some(_) => !on,
        None => false,
    };
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    let mut health = live_health(map);
    while !done(health) && Instant::now() < deadline {
        thread::sleep(POLL);
        health = live_health(map);
    }
    let what = match (on, changed) {
        (true, true) => format!("drained: {} created", flag.display()),
        (true, false) => format!("already drained ({} was there)", flag.display()),
        (false, true) => format!("drain ended: {} removed", flag.display()),
        (false, false) => format!("not drained ({} was not there)", flag.display()),
    };
    if done(health) {
        let health = health.map_or("unknown", HostHealth::as_str);
        writeln!(
            out,
            "host {what}; the live map says HOST {health}: {}",
            meaning(health)
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::bail!(
        "host {what}, but after {} s the live map {} says {}: no image-launcher with --live-map {} \
         writes it (is Apache serving the site?); the flag stays and takes effect once one does",
        args.wait_s,
        map.display(),
        health.map_or_else(|| "no HOST".to_owned(), |h| format!("HOST {h}")),
        map.display()
    )
}

fn status(out: &mut impl Write, map: &Path) -> anyhow::Result<ExitCode> {
    let flag = drain_flag_for(map);
    let drained = is_drained(map);
    let health = live_health(map);
    let flag_line = if drained {
        let age = std::fs::symlink_metadata(&flag)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| format!(" for {}", crate::status::uptime(d.as_secs())))
            .unwrap_or_default();
        format!("drained by the operator{age} ({})", flag.display())
    } else {
        "not drained by the operator".to_owned()
    };
    let word = health.map_or("unknown", HostHealth::as_str);
    writeln!(out, "host: {word}: {}", meaning(word))?;
    writeln!(out, "  {flag_line}")?;
    if health.is_none() {
        writeln!(
            out,
            "  the live map {} has no HOST line: no image-launcher with --live-map writes it",
            map.display()
        )?;
    } else if drained != (health == Some(HostHealth::Drain)) && drained {
        writeln!(
            out,
            "  the live map does not say drain yet: its writer has not seen the flag"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a health word means to a front.
fn meaning(word: &str) -> &'static str {
    match word {
        "up" => "it takes new sessions (the health URL answers 200)",
        "drain" => {
            "its sessions go on, no new one comes (the health URL answers 404: the front drains it)"
        }
        "down" => {
            "no VM is up and none can be started (the health URL answers 503: the front sends it nothing)"
        }
        _ => "the health URL answers 503 (down)",
    }
}

/// The live map's HOST line, if it has a readable one.
fn live_health(map: &Path) -> Option<HostHealth> {
    let (bytes, _) = read_settled(map).ok()?;
    let parsed = MapFile::parse(&bytes).ok()?;
    HostHealth::parse(parsed.get(HOST)?.text())
}
