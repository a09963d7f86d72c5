//! The map file, re-read when it changes: one `stat` per lookup, a read
//! only after a change, and never a bad file in place of a good map.
//!
//! A change is seen in the file's fingerprint: device, inode, size, mtime and
//! ctime. `cp` keeps the inode but changes size or times; a rename brings a
//! new inode; ctime also catches `cp -p`, which copies the mtime. A file is
//! read so that a read cannot be torn: the open file is `fstat`ed before and
//! after the read, the byte count must equal its size, and the path must
//! still name the same file afterwards; otherwise it is read again, up to
//! [`ATTEMPTS`] times, [`PAUSE`] apart.
//!
//! `cp` truncates the file and then writes it, so a reader can meet it empty
//! or, between two writes, cut short. Once the map has read the file, a new
//! version that is refused as a whole (empty, see [`MapFile::parse`]) or
//! whose last line has no newline (cut mid-line) is taken for a copy in
//! progress: the last good map stays, nothing is logged, and the file is read
//! again at the first lookup [`SETTLE`] later, unless it changes before (the
//! copy goes on: the next lookup reads it, and a good file gets the usual
//! `reloaded` line). Only a version that is still bad after [`SETTLE`] is
//! logged as an error, or, without its final newline, used with a warning.
//! A cut that falls exactly after a newline cannot be told from a whole
//! file; the writer's next write changes the fingerprint and the next lookup
//! reads the rest. `server-map switch` (write a temp file, rename it) never
//! shows a partial file at all. At start there is no good map to keep, so a
//! bad file is logged at once.
//!
//! Timestamps are coarse (a kernel tick, or a second on some filesystems):
//! two writes of the same size within one tick can leave the fingerprint
//! unchanged. Like git's "racily clean" index entries, a file whose mtime
//! was less than [`RACY`] old when it was read is read once more at the first
//! lookup after mtime + [`RACY`].

use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::mapfile::{MAX_FILE, MapFile, Severity};

/// How many times a file that changes while it is read is read again.
pub const ATTEMPTS: u32 = 5;

/// The pause between attempts, and how long a file without a final newline
/// must stay unchanged before it is believed.
pub const PAUSE: Duration = Duration::from_millis(1);

/// A file read less than this long after its mtime is read once more later.
pub const RACY: Duration = Duration::from_secs(2);

/// How long a new version that looks like a copy in progress (refused as a
/// whole, or without its final newline) is given to be completed before it
/// is believed (and, if bad, logged). Much longer than any `cp` of a map
/// takes, even on a loaded machine; it only delays the error line of a file
/// that is really bad, never an answer (the last good map answers meanwhile).
pub const SETTLE: Duration = Duration::from_millis(500);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    /// The fingerprint of a file's metadata.
    pub fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn modified(&self) -> Option<SystemTime> {
        let secs = u64::try_from(self.mtime.0).ok()?;
        let nanos = u32::try_from(self.mtime.1).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }
}

/// Why a map file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Opening, reading or `stat`ing failed.
    Io(io::Error),
    /// A directory, FIFO, device... in the file's place.
    NotRegular,
    /// Larger than [`MAX_FILE`] bytes (its size).
    TooLarge(u64),
    /// It changed during each of [`ATTEMPTS`] reads.
    KeptChanging,
    /// Not a file to trust: not owned by root or us, not readable by
    /// others, or in a directory someone else could change (the why).
    Untrusted(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "cannot be read: {e}"),
            ReadError::NotRegular => f.write_str("is not a regular file"),
            ReadError::TooLarge(size) => {
                write!(f, "is {size} bytes; a map file may have at most {MAX_FILE}")
            }
            ReadError::KeptChanging => {
                write!(f, "kept changing while being read ({ATTEMPTS} attempts)")
            }
            ReadError::Untrusted(why) => write!(f, "is not read: {why}"),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads a map file whole, so that a concurrent `cp` or rename cannot tear
/// the read (see the module docs). Refuses what is not a regular file, a
/// file larger than [`MAX_FILE`], and a file that kept changing.
pub fn read_settled(path: &Path) -> Result<(Vec<u8>, Fingerprint), ReadError> {
    for _ in 0..ATTEMPTS {
        if let Some(read) = read_once(path)? {
            return Ok(read);
        }
        thread::sleep(PAUSE);
    }
    Err(ReadError::KeptChanging)
}

/// One attempt: `None` if the file changed during the read.
fn read_once(path: &Path) -> Result<Option<(Vec<u8>, Fingerprint)>, ReadError> {
    // O_NONBLOCK: a FIFO put in the file's place must not hang the open
    // (and with it every request of the site).
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let before = file.metadata()?;
    if !before.is_file() {
        return Err(ReadError::NotRegular);
    }
    trusted_source(path, &before)?;
    if before.len() > MAX_FILE as u64 {
        return Err(ReadError::TooLarge(before.len()));
    }
    let bytes = read_capped(&mut file, before.len())?;
    let after = Fingerprint::of(&file.metadata()?);
    let settled = Fingerprint::of(&before) == after
        && bytes.len() as u64 == after.size
        && same_file(path, &after)?;
    if !settled {
        return Ok(None);
    }
    if bytes.last().is_some_and(|&b| b != b'\n') {
        // Perhaps a writer between two writes: believe it once it is still.
        thread::sleep(PAUSE);
        if !same_file(path, &after)? {
            return Ok(None);
        }
    }
    Ok(Some((bytes, after)))
}

/// The rule for a map file that root may read (the launcher reads
/// balance.conf as root): it is owned by root or by us; it is readable by
/// others (routing data is no secret, so a symlink to a secret such as
/// /etc/shadow is refused before a byte is read); and the directories of its
/// real path pass the rule of `vmpool::safedir::SafeDir` (owned by root or
/// us, not writable by others), so no one else can swap it.
fn trusted_source(path: &Path, meta: &Metadata) -> Result<(), ReadError> {
    if !vmpool::files::trusted_owner(meta.uid()) {
        return Err(ReadError::Untrusted(format!(
            "it is owned by uid {}, neither root nor the reader",
            meta.uid()
        )));
    }
    if meta.mode() & 0o004 == 0 {
        return Err(ReadError::Untrusted(
            "it is not readable by others: a map file holds nothing secret (chmod 644 it)".into(),
        ));
    }
    let real = fs::canonicalize(path)?;
    if let Some(dir) = real.parent()
        && let Err(e) = vmpool::safedir::SafeDir::open(dir)
    {
        return Err(ReadError::Untrusted(format!("its directory: {e}")));
    }
    Ok(())
}

fn read_capped(file: &mut File, size: u64) -> io::Result<Vec<u8>> {
    let cap = MAX_FILE as u64 + 1;
    let mut bytes = Vec::with_capacity(size.min(cap) as usize);
    file.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// True if `path` (still) names the file with fingerprint `expected`.
fn same_file(path: &Path, expected: &Fingerprint) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Fingerprint::of(&meta) == *expected),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// True for a file that may be a `cp` caught between its truncation and
/// its last write: refused as a whole (empty, or not yet a map), or a last
/// line without its newline.
fn looks_mid_copy(bytes: &[u8], parsed: &Result<MapFile, crate::mapfile::Rejected>) -> bool {
    parsed.is_err() || bytes.last().is_some_and(|&b| b != b'\n')
}

/// What the last `stat` of the path found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Nothing yet, or the last read was torn: read at the next lookup.
    Unknown,
    /// A file with this fingerprint.
    File(Fingerprint),
    /// No file at the path.
    Missing,
    /// `stat` failed otherwise.
    Unstatable(ErrorKind),
}

impl Seen {
    fn stat(path: &Path) -> Seen {
        match fs::metadata(path) {
            Ok(meta) => Seen::File(Fingerprint::of(&meta)),
            Err(e) if e.kind() == ErrorKind::NotFound => Seen::Missing,
            Err(e) => Seen::Unstatable(e.kind()),
        }
    }
}

/// A map file that follows its changes. [`ReloadingMap::current`] costs one
/// `stat` while the file is unchanged.
#[derive(Debug)]
pub struct ReloadingMap {
    path: PathBuf,
    name: String,
    map: MapFile,
    seen: Seen,
    /// The bytes of the last file read, good or refused: the same bytes again
    /// (after `touch`, a racy recheck, or a rename of an identical copy)
    /// change nothing and log nothing.
    last_read: Option<Vec<u8>>,
    /// `last_read` parsed; it is the map being served.
    last_read_good: bool,
    /// The file was missing or unreadable since `last_read`.
    failing: bool,
    /// A torn read was logged; not again until a read succeeds.
    torn_logged: bool,
    /// When to read once more a file whose mtime was too recent to trust.
    recheck_at: Option<SystemTime>,
    /// A version that looks like a copy in progress, and when to read it
    /// again to see whether it stayed that way.
    settling: Option<(Fingerprint, Instant)>,
    /// How many maps have been installed (see [`ReloadingMap::loads`]).
    loads: u64,
    /// False for the first read, at start: a bad file then is logged at
    /// once, since there is no earlier map to keep while it settles.
    started: bool,
}

impl ReloadingMap {
    /// Loads `path`. Never fails: a file that cannot be used now is logged
    /// and the map is empty (every key `NULL`) until the file is good.
    pub fn new(path: impl Into<PathBuf>) -> ReloadingMap {
        let path = path.into();
        let mut map = ReloadingMap {
            name: path.display().to_string(),
            path,
            map: MapFile::empty(),
            seen: Seen::Unknown,
            last_read: None,
            last_read_good: false,
            failing: false,
            torn_logged: false,
            recheck_at: None,
            settling: None,
            loads: 0,
            started: false,
        };
        map.reload(Seen::stat(&map.path));
        map.started = true;
        map
    }

    /// The map to answer from: the file as it is now, or the last good map
    /// if the file is not usable. One `stat` when nothing changed.
    pub fn current(&mut self) -> &MapFile {
        let now = Seen::stat(&self.path);
        let recheck_due = self.recheck_at.is_some_and(|at| SystemTime::now() >= at);
        let settled = self
            .settling
            .is_some_and(|(_, until)| Instant::now() >= until);
        if now != self.seen || settled {
            self.reload(now);
        } else if recheck_due {
            tracing::debug!(
                "{}: reading again, its mtime was too recent to trust",
                self.name
            );
            self.reload(now);
        }
        &self.map
    }

    /// The map served now, as of the last look at the file (no `stat`).
    pub fn served(&self) -> &MapFile {
        &self.map
    }

    /// The file's path, as the log lines name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many maps have been installed since [`ReloadingMap::new`]: it
    /// grows by one at each `loaded` or `reloaded`, so a caller can tell
    /// that [`ReloadingMap::current`] answers from another map than before.
    pub fn loads(&self) -> u64 {
        self.loads
    }

    fn reload(&mut self, now: Seen) {
        self.recheck_at = None;
        let settling = self.settling.take();
        match now {
            Seen::Missing => {
                return self.fail(now, "is missing (deleted, renamed away or never created)");
            }
            Seen::Unstatable(kind) => return self.fail(now, format!("cannot be examined: {kind}")),
            Seen::File(_) | Seen::Unknown => {}
        }
        let (bytes, fingerprint) = match read_settled(&self.path) {
            Ok(read) => read,
            Err(ReadError::KeptChanging) => {
                // Read again at the next lookup, whatever the stat says.
                self.seen = Seen::Unknown;
                if !self.torn_logged {
                    self.torn_logged = true;
                    let e = ReadError::KeptChanging;
                    tracing::warn!("{}: {e}; {}", self.name, self.kept());
                }
                return;
            }
            Err(e) => return self.fail(now, e),
        };
        self.torn_logged = false;
        self.seen = Seen::File(fingerprint);
        if self.last_read.as_deref() == Some(&bytes[..]) {
            self.schedule_recheck(&fingerprint);
            if std::mem::replace(&mut self.failing, false) && self.last_read_good {
                tracing::info!("{} is back, unchanged: {}", self.name, self.map.summary());
            }
            return;
        }
        let parsed = MapFile::parse(&bytes);
        if self.started && looks_mid_copy(&bytes, &parsed) {
            match settling {
                Some((seen, until)) if seen == fingerprint && Instant::now() >= until => {}
                Some((seen, until)) if seen == fingerprint => {
                    self.settling = Some((seen, until));
                    return;
                }
                _ => {
                    tracing::debug!(
                        "{}: empty or cut short, perhaps a copy in progress: reading it again in {SETTLE:?}",
                        self.name
                    );
                    self.settling = Some((fingerprint, Instant::now() + SETTLE));
                    return;
                }
            }
        }
        self.schedule_recheck(&fingerprint);
        self.failing = false;
        self.last_read_good = match parsed {
            Ok(map) => {
                self.install(map);
                true
            }
            Err(rejected) => {
                tracing::error!(
                    "{}: refused: {} (server-map check {} says more); {}",
                    self.name,
                    rejected.briefly(),
                    self.name,
                    self.kept()
                );
                false
            }
        };
        self.last_read = Some(bytes);
    }

    fn install(&mut self, map: MapFile) {
        let verb = if self.map.is_empty() {
            "loaded"
        } else {
            "reloaded"
        };
        tracing::info!("{verb} {}: {}", self.name, map.summary());
        self.loads += 1;
        // By line number only, never with the file's content (the
        // ErrorLog is read by more people than the file).
        for diag in map.diagnostics() {
            let shown = diag.brief_in(&self.name);
            match diag.severity {
                Severity::Error => tracing::error!("{shown}"),
                Severity::Warning => tracing::warn!("{shown}"),
            }
        }
        self.map = map;
    }

    /// Records a failure (logged once: the next lookup sees the same `stat`
    /// and does nothing) and keeps the last good map.
    fn fail(&mut self, now: Seen, why: impl fmt::Display) {
        self.seen = now;
        self.failing = true;
        tracing::error!("{}: {why}; {}", self.name, self.kept());
    }

    fn kept(&self) -> String {
        if self.map.is_empty() {
            "no good map yet: every key answers NULL".to_owned()
        } else {
            format!("keeping the last good map ({})", self.map.summary())
        }
    }

    fn schedule_recheck(&mut self, fingerprint: &Fingerprint) {
        let Some(modified) = fingerprint.modified() else {
            return;
        };
        let young = SystemTime::now()
            .duration_since(modified)
            .map_or(true, |age| age < RACY);
        if young {
            self.recheck_at = modified.checked_add(RACY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;

    fn map_of(map: &mut ReloadingMap) -> String {
        map.current().summary()
    }

    #[test]
    fn a_change_the_fingerprint_missed_is_found_by_the_racy_recheck() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("balance.conf");
        fs::write(&path, "app1 1\napp2 2\nALL 1\n").expect("write A");
        let mut map = ReloadingMap::new(&path);
        assert_eq!(map_of(&mut map), "3 keys, ALL = 1");
        assert!(map.recheck_at.is_some(), "a file written just now is racy");

        fs::write(&path, "app1 1\napp2 2\nALL 2\n").expect("write B");
        // As if B had landed in the same tick as A: same fingerprint.
        map.seen = Seen::stat(&path);
        map.recheck_at = Some(SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(map_of(&mut map), "3 keys, ALL = 1", "missed, for now");
        map.recheck_at = Some(SystemTime::UNIX_EPOCH);
        assert_eq!(map_of(&mut map), "3 keys, ALL = 2", "found by the recheck");
    }

    #[test]
    fn an_old_file_is_not_racy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("balance.conf");
        fs::write(&path, "app1 1\nALL 1\n").expect("write");
        let old = SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_times(FileTimes::new().set_modified(old)))
            .expect("age it");
        let map = ReloadingMap::new(&path);
        assert_eq!(map.recheck_at, None);
    }

    #[test]
    fn a_missing_file_at_start_gives_an_empty_map_then_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("balance.conf");
        let mut map = ReloadingMap::new(&path);
        assert!(map.current().is_empty());
        fs::write(&path, "app1 1\nALL 1\n").expect("write");
        assert_eq!(map_of(&mut map), "2 keys, ALL = 1");
    }

    #[test]
    fn a_copy_caught_empty_or_cut_short_keeps_the_map_until_it_is_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("balance.conf");
        fs::write(&path, "app1 1\napp2 2\nALL 1\n").expect("write A");
        let mut map = ReloadingMap::new(&path);
        assert_eq!(map.loads(), 1);
        for partial in ["", "app1 1\napp2 2\nALL 2|"] {
            fs::write(&path, partial).expect("truncate or cut");
            assert_eq!(map_of(&mut map), "3 keys, ALL = 1", "{partial:?}");
            assert!(map.settling.is_some(), "{partial:?}: read again later");
            assert!(map.last_read_good, "{partial:?}: not taken as read");
        }
        fs::write(&path, "app1 1\napp2 2\nALL 2\n").expect("the whole copy");
        assert_eq!(map_of(&mut map), "3 keys, ALL = 2");
        assert_eq!(map.settling, None);
        assert_eq!(map.loads(), 2, "one reload, for the whole file");
    }

    #[test]
    fn a_file_that_stays_bad_is_taken_as_read_once_it_has_settled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("balance.conf");
        fs::write(&path, "app1 1\nALL 1\n").expect("write A");
        let mut map = ReloadingMap::new(&path);
        fs::write(&path, "").expect("truncate");
        assert_eq!(map_of(&mut map), "2 keys, ALL = 1");
        assert!(map.last_read_good, "not yet judged");
        // As if SETTLE had passed.
        map.settling = map.settling.map(|(fp, _)| (fp, Instant::now()));
        assert_eq!(
            map_of(&mut map),
            "2 keys, ALL = 1",
            "still the last good map"
        );
        assert_eq!(map.settling, None);
        assert!(!map.last_read_good, "refused (and logged) now");
        assert_eq!(map.last_read.as_deref(), Some(&b""[..]));

        // Cut short and left so: used once settled, as Apache would.
        fs::write(&path, "app1 1\napp2 2\nALL 2").expect("no final newline");
        assert_eq!(map_of(&mut map), "2 keys, ALL = 1");
        map.settling = map.settling.map(|(fp, _)| (fp, Instant::now()));
        assert_eq!(map_of(&mut map), "3 keys, ALL = 2");
    }

    #[test]
    fn a_bad_file_at_start_is_judged_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("balance.conf");
        fs::write(&path, "").expect("empty");
        let map = ReloadingMap::new(&path);
        assert_eq!(map.settling, None);
        assert_eq!(map.last_read.as_deref(), Some(&b""[..]));
        assert_eq!(map.loads(), 0);
    }

    #[test]
    fn a_settled_read_names_its_version_of_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("balance.conf");
        fs::write(&path, "app1 1\nALL 1\n").expect("write");
        let (bytes, fingerprint) = read_settled(&path).expect("read");
        assert_eq!(bytes, b"app1 1\nALL 1\n");
        assert!(same_file(&path, &fingerprint).expect("stat"));
        fs::write(&path, "app1 1\nALL 1|1\n").expect("rewrite");
        assert!(!same_file(&path, &fingerprint).expect("stat"));
    }
}
