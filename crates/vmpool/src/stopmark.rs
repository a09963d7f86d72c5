//! A note `server-map stop` leaves in the pid directory before it signals a
//! VM (`<port>.stopping`, holding the pid), so that the launcher watching the
//! VM logs its exit as an operator's stop, not as a stranger's kill. The
//! launcher takes (reads and removes) the note when it logs the exit; a note
//! for another pid is left for its own VM.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::files;

fn path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("{port}.stopping"))
}

/// Leaves the note for `pid` on `port` (temp file, rename).
pub fn write(dir: &Path, port: u16, pid: u32) -> io::Result<()> {
    let temp = dir.join(format!(".{port}.stopping.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp);
    let written = files::write_new(&temp, format!("{pid}\n").as_bytes(), 0o644)
        .and_then(|()| fs::rename(&temp, path(dir, port)));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// True if `port` has a note for `pid` (left in place).
pub fn is_for(dir: &Path, port: u16, pid: u32) -> bool {
    let Ok(mut file) = files::open_regular(&path(dir, port), OpenOptions::new().read(true)) else {
        return false;
    };
    let mut text = String::new();
    Read::by_ref(&mut file)
        .take(32)
        .read_to_string(&mut text)
        .is_ok()
        && text.trim().parse::<u32>() == Ok(pid)
}

/// True, and the note removed, if `port` has a note for `pid`.
pub fn take(dir: &Path, port: u16, pid: u32) -> bool {
    let ours = is_for(dir, port, pid);
    if ours {
        let _ = fs::remove_file(path(dir, port));
    }
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_taken_once_and_only_for_its_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!take(dir.path(), 3001, 42));
        write(dir.path(), 3001, 42).expect("write");
        assert!(!take(dir.path(), 3001, 43), "another pid");
        assert!(!take(dir.path(), 3002, 42), "another port");
        assert!(take(dir.path(), 3001, 42));
        assert!(!take(dir.path(), 3001, 42), "taken");
    }
}
