//! The live map file: what is true about the pool now, in Apache's txt/rnd
//! map syntax, so that Apache routes sticky requests (and new sessions on a
//! warm set) with its own cached `rnd:` lookup instead of a `prg:` map and
//! its one global mutex.
//!
//! ```text
//! # image-launcher (pid 4242) writes this file on every change: the VMs that are up.
//! # Apache reads it as RewriteMap LIVE "rnd:/var/lib/seaside/live.map". Do not edit.
//! app3001 3001
//! app3002 3002
//! ALL 3001|3002
//! ```
//! One `name port` line per server name of balance.conf whose VM is up, and
//! `ALL` only when every port of the active set is up (see `writer`);
//! `DRAINING p1|p2` names the VMs that asked to drain: they keep their lines
//! (their sessions stay) but take no new session (Apache never looks the key
//! up; the launcher reads it). `HOST up|drain|down` is the host as a whole,
//! for a front in front of several hosts: Apache answers it on the health
//! URL (see `vmpool::host`).
//!
//! # Publishing
//! A new version is written to a temporary file in the same directory, made
//! mode 0644, given its mtime and renamed over the map: a reader sees the old
//! version or the new one, never a torn or empty file. The file and the
//! directory are then `fsync`ed by a thread of their own, so that the disk's
//! latency never delays what Apache sees: measured on a busy ext4 disk, an
//! `fsync` before the rename made a dead VM's removal from the map take
//! 134 ms at p90 instead of 1.4 ms. (A crash before that `fsync` can leave
//! the previous version, or on some filesystems an empty file; either is
//! replaced as soon as the launcher starts, and Apache starts on both.) Apache
//! caches every answer of a txt/rnd map per child, keyed by the file's mtime
//! alone (in microseconds): two versions with the same mtime would leave the
//! second unseen. So each version's mtime is set explicitly, strictly later
//! (by at least a microsecond) than the one it replaces, even when the
//! clock is coarse or another launcher wrote the last one.
//!
//! # Reading it back
//! [`PublishedMap`] follows the file with one `stat` per question: a lookup
//! answers a port for a new session only once that port is published, so the
//! session's next request finds its VM in the map.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;
use server_map::MapFile;
use server_map::reload::Fingerprint;
use vmpool::host::{HOST, HostHealth};

/// The key of the line naming the VMs that asked to drain.
pub const DRAINING: &str = "DRAINING";

/// What the map says: the servers that are up, and the active set when it is
/// all up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveMap {
    /// `(name, port)` in balance.conf's order.
    pub servers: Vec<(String, u16)>,
    /// The active set, present only when every port of it is up.
    pub all: Option<Vec<u16>>,
    /// VMs that asked to drain.
    pub draining: Vec<u16>,
    /// The host as a whole (`None`: no `HOST` line).
    pub host: Option<HostHealth>,
}

impl LiveMap {
    /// The entries, one line each, `ALL` last (no header).
    pub fn render(&self) -> String {
        let mut text = String::new();
        for (name, port) in &self.servers {
            let _ = writeln!(text, "{name} {port}");
        }
        let joined = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join("|")
        };
        if let Some(all) = &self.all {
            let _ = writeln!(text, "ALL {}", joined(all));
        }
        if !self.draining.is_empty() {
            let _ = writeln!(text, "{DRAINING} {}", joined(&self.draining));
        }
        if let Some(host) = self.host {
            let _ = writeln!(text, "{HOST} {host}");
        }
        text
    }

    /// The whole file: a header saying what it is, then the entries. The
    /// path in the header is escaped: a line break in it would end the
    /// comment and make the rest of the path an entry (and a NUL would make
    /// the whole file unreadable).
    pub fn file_text(&self, path: &Path) -> String {
        format!(
            "# image-launcher (pid {}) writes this file on every change: the VMs that are up.\n\
             # Apache reads it as RewriteMap LIVE \"rnd:{}\". Do not edit.\n{}",
            std::process::id(),
            path.display().to_string().escape_debug(),
            self.render()
        )
    }

    /// Reads a map back as Apache would (server-map's parser, which follows
    /// Apache's rules): the entries, ALL, DRAINING and HOST. A file with no
    /// entry (nothing is up) is the empty map.
    pub fn parse(bytes: &[u8]) -> LiveMap {
        let Ok(map) = MapFile::parse(bytes) else {
            return LiveMap::default();
        };
        let ports_of = |key: &str| {
            map.get(key).map(|value| {
                value
                    .alternatives()
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u16>>()
            })
        };
        LiveMap {
            servers: map
                .servers()
                .filter(|(name, _)| !is_reserved(name))
                .map(|(n, p)| (n.to_owned(), p))
                .collect(),
            all: ports_of(server_map::ALL),
            draining: ports_of(DRAINING).unwrap_or_default(),
            host: map.get(HOST).and_then(|v| HostHealth::parse(v.text())),
        }
    }

    /// Every port that has a line.
    pub fn ports(&self) -> BTreeSet<u16> {
        self.servers.iter().map(|&(_, port)| port).collect()
    }
}

/// True for the keys of the live map's own lines (`DRAINING`, `HOST`): a
/// server of balance.conf with such a name never gets a line, which would
/// shadow the map's own (Apache reads the first line of a key).
pub fn is_reserved(name: &str) -> bool {
    name == DRAINING || name == HOST
}

/// Writes the live map (see the module doc).
#[derive(Debug)]
pub struct Publisher {
    path: PathBuf,
    dir: PathBuf,
    /// The mtime of the last version we wrote, in microseconds.
    last_mtime_us: i64,
    /// What we last wrote.
    last: Option<LiveMap>,
    /// The clock, in microseconds since the epoch.
    clock: fn() -> i64,
    /// Versions to make durable, for the syncing thread.
    to_sync: Option<mpsc::Sender<File>>,
}

impl Publisher {
    /// A publisher for `path`, whose directory has been checked.
    pub fn new(path: PathBuf) -> Publisher {
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        Publisher {
            path,
            dir,
            last_mtime_us: 0,
            last: None,
            clock: now_us,
            to_sync: None,
        }
    }

    /// A publisher whose clock is `clock` (microseconds since the epoch):
    /// for tests that need two versions within one tick of a coarse clock.
    #[doc(hidden)]
    pub fn with_clock(path: PathBuf, clock: fn() -> i64) -> Publisher {
        Publisher {
            clock,
            ..Publisher::new(path)
        }
    }

    /// Publishes `map` unless it is what this publisher wrote last; true if
    /// it wrote.
    pub fn publish(&mut self, map: &LiveMap) -> io::Result<bool> {
        if self.last.as_ref() == Some(map) {
            return Ok(false);
        }
        self.write(&map.file_text(&self.path))?;
        self.last = Some(map.clone());
        Ok(true)
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        let name = self
            .path
            .file_name()
            .map_or_else(|| "live.map".into(), |n| n.to_string_lossy().into_owned());
        let temp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        // A leftover of a writer that died mid-write (same pid, other boot):
        // unlink never follows a symlink.
        let _ = fs::remove_file(&temp);
        let written = self
            .write_temp(&temp, text)
            .and_then(|file| fs::rename(&temp, &self.path).map(|()| file));
        match written {
            Ok(file) => {
                self.sync_later(file);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Hands a published version to the syncing thread (started on first
    /// use), which `fsync`s the newest one it has and the directory.
    fn sync_later(&mut self, file: File) {
        if self.to_sync.is_none() {
            let (sender, receiver) = mpsc::channel::<File>();
            let dir = self.dir.clone();
            let started =
                rewritemap::signals::spawn_background("live-map-sync".into(), move || {
                    while let Ok(mut newest) = receiver.recv() {
                        while let Ok(newer) = receiver.try_recv() {
                            newest = newer;
                        }
                        let synced = newest
                            .sync_all()
                            .and_then(|()| File::open(&dir)?.sync_all());
                        if let Err(e) = synced {
                            tracing::warn!("live map: cannot fsync ({e}); it is only less durable");
                        }
                    }
                });
            if started.is_ok() {
                self.to_sync = Some(sender);
            }
        }
        if let Some(sender) = &self.to_sync {
            let _ = sender.send(file);
        }
    }

    fn write_temp(&mut self, temp: &Path, text: &str) -> io::Result<File> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(temp)?;
        // Apache's children read it as their own user, whatever our umask.
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(text.as_bytes())?;
        let mtime_us = self.next_mtime_us();
        let time = TimeSpec::new(
            mtime_us.div_euclid(1_000_000),
            mtime_us.rem_euclid(1_000_000) * 1000,
        );
        futimens(file.as_fd(), &time, &time).map_err(io::Error::from)?;
        self.last_mtime_us = mtime_us;
        Ok(file)
    }

    /// Now, but strictly after the mtime of the version in place (whoever
    /// wrote it) and of the last one we wrote.
    fn next_mtime_us(&self) -> i64 {
        let now = (self.clock)();
        let in_place = fs::metadata(&self.path).map_or(0, |m| {
            m.mtime().saturating_mul(1_000_000) + m.mtime_nsec() / 1000
        });
        now.max(in_place.max(self.last_mtime_us) + 1)
    }
}

/// The system clock in microseconds since the epoch.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The published map as a reader sees it, re-read when it changes: one
/// `stat` per question while it does not.
#[derive(Debug)]
pub struct PublishedMap {
    path: PathBuf,
    seen: Option<Fingerprint>,
    map: LiveMap,
    ports: BTreeSet<u16>,
}

impl PublishedMap {
    /// Follows `path` (a missing file is an empty map).
    pub fn new(path: PathBuf) -> PublishedMap {
        PublishedMap {
            path,
            seen: None,
            map: LiveMap::default(),
            ports: BTreeSet::new(),
        }
    }

    /// The ports published now.
    pub fn ports(&mut self) -> &BTreeSet<u16> {
        self.refresh();
        &self.ports
    }

    /// True if `port`'s VM asked to drain (no new session for it).
    pub fn draining(&mut self, port: u16) -> bool {
        self.refresh();
        self.map.draining.contains(&port)
    }

    /// The map published now.
    pub fn map(&mut self) -> &LiveMap {
        self.refresh();
        &self.map
    }

    fn refresh(&mut self) {
        let now = fs::metadata(&self.path).ok().map(|m| Fingerprint::of(&m));
        if now == self.seen {
            return;
        }
        // Replaced by rename only, so a read is never torn; a file that
        // changed again during the read is read at the next question.
        self.map = match (now, fs::read(&self.path)) {
            (Some(_), Ok(bytes)) => LiveMap::parse(&bytes),
            _ => LiveMap::default(),
        };
        self.ports = self.map.ports();
        self.seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LiveMap {
        LiveMap {
            servers: vec![("app3001".into(), 3001), ("app3002".into(), 3002)],
            all: Some(vec![3001, 3002]),
            draining: Vec::new(),
            host: None,
        }
    }

    #[test]
    fn a_map_reads_back_as_written() {
        let map = sample();
        let text = map.file_text(Path::new("/var/lib/seaside/live.map"));
        assert!(
            text.ends_with("app3001 3001\napp3002 3002\nALL 3001|3002\n"),
            "{text}"
        );
        assert_eq!(LiveMap::parse(text.as_bytes()), map);
        let draining = LiveMap {
            all: Some(vec![3001]),
            draining: vec![3002],
            ..map
        };
        let text = draining.render();
        assert!(text.ends_with("ALL 3001\nDRAINING 3002\n"), "{text}");
        assert_eq!(LiveMap::parse(text.as_bytes()), draining);
        for host in [HostHealth::Up, HostHealth::Drain, HostHealth::Down] {
            let with_host = LiveMap {
                host: Some(host),
                ..draining.clone()
            };
            let text = with_host.render();
            assert!(
                text.ends_with(&format!("DRAINING 3002\nHOST {host}\n")),
                "{text}"
            );
            assert_eq!(LiveMap::parse(text.as_bytes()), with_host);
        }
        let nothing_up = LiveMap::default();
        let text = nothing_up.file_text(Path::new("/x"));
        assert!(!text.is_empty(), "never an empty file");
        assert_eq!(LiveMap::parse(text.as_bytes()), nothing_up);
    }

    /// Found by the fuzz target `live_map`: the path in the header was
    /// written as is, so a line break in it made the rest of the path an
    /// entry of the map (here: `app3001` routed to port 9), and a NUL made
    /// the whole file unreadable.
    #[test]
    fn a_path_with_a_line_break_or_a_nul_stays_in_the_header() {
        let map = sample();
        for path in ["/srv/live\napp3001 9\n/live.map", "/srv/a\0b/live.map"] {
            let text = map.file_text(Path::new(path));
            assert_eq!(LiveMap::parse(text.as_bytes()), map, "{text:?}");
            assert_eq!(text.lines().count(), 5, "{text:?}");
        }
        let plain = map.file_text(Path::new("/var/lib/seaside/live.map"));
        assert!(
            plain.contains("\"rnd:/var/lib/seaside/live.map\""),
            "{plain}"
        );
    }

    #[test]
    fn the_maps_own_lines_are_never_read_as_servers() {
        let text = "app3001 3001\nHOST 3002\nDRAINING 3003\nHOST up\n";
        let map = LiveMap::parse(text.as_bytes());
        assert_eq!(map.servers, vec![("app3001".to_owned(), 3001)]);
        assert_eq!(
            map.host, None,
            "the first HOST line is the one Apache reads"
        );
        let map = LiveMap::parse(b"app3001 3001\nHOST sideways\n");
        assert_eq!(map.host, None);
        assert!(is_reserved("HOST") && is_reserved("DRAINING") && !is_reserved("app3001"));
    }

    #[test]
    fn a_publish_is_atomic_0644_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("live.map");
        let mut publisher = Publisher::new(path.clone());
        assert!(publisher.publish(&sample()).expect("publish"));
        assert!(!publisher.publish(&sample()).expect("again"), "unchanged");
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
        let mut reader = PublishedMap::new(path);
        assert_eq!(reader.ports(), &BTreeSet::from([3001, 3002]));
    }

    #[test]
    fn every_version_has_a_strictly_later_mtime_even_within_a_microsecond() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("live.map");
        // Another writer's version, dated a minute ahead of the clock.
        fs::write(&path, "app1 1\n").expect("write");
        let ahead = SystemTime::now() + std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_times(fs::FileTimes::new().set_modified(ahead)))
            .expect("date it");
        let mut publisher = Publisher::new(path.clone());
        // As Apache sees it: apr_time_t, microseconds.
        let apr_mtime = |path: &Path| {
            let meta = fs::metadata(path).expect("stat");
            meta.mtime() * 1_000_000 + meta.mtime_nsec() / 1000
        };
        let mut last = apr_mtime(&path);
        let mut map = sample();
        for n in 0..50u16 {
            map.servers.push((format!("app{n}"), n + 1));
            publisher.publish(&map).expect("publish");
            let mtime = apr_mtime(&path);
            assert!(mtime > last, "version {n}: {mtime} is not after {last}");
            last = mtime;
        }
    }

    #[test]
    fn the_reader_sees_each_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("live.map");
        let mut reader = PublishedMap::new(path.clone());
        assert!(reader.ports().is_empty(), "missing: empty");
        let mut publisher = Publisher::new(path);
        let mut map = sample();
        publisher.publish(&map).expect("publish");
        assert_eq!(reader.ports().len(), 2);
        map.servers.pop();
        map.all = None;
        publisher.publish(&map).expect("publish");
        assert_eq!(reader.map(), &map);
    }
}
