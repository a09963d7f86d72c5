//! A note `server-map stop` leaves in the pid directory before it signals a
//! VM (`<port>.stopping`, holding the pid), so that the launcher watching the
//! VM logs its exit as an operator's stop, not as a stranger's kill. The
//! launcher takes (reads and removes) the note when it logs the exit; a note
//! for another pid is left for its own VM.

use std::io::Read;

use crate::safedir::{Access, SafeDir};

fn name(port: u16) -> String {
    format!("{port}.stopping")
}

/// Leaves the note for `pid` on `port` (temp file, rename).
pub fn write(dir: &SafeDir, port: u16, pid: u32) -> std::io::Result<()> {
    dir.replace(&name(port), format!("{pid}\n").as_bytes(), 0o644)
}

/// True if `port` has a note for `pid` (left in place).
pub fn is_for(dir: &SafeDir, port: u16, pid: u32) -> bool {
    let Ok(mut file) = dir.open_file(&name(port), Access::Read) else {
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
pub fn take(dir: &SafeDir, port: u16, pid: u32) -> bool {
    let ours = is_for(dir, port, pid);
    if ours {
        let _ = dir.remove(&name(port));
    }
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_taken_once_and_only_for_its_pid() {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = &SafeDir::open(top.path()).expect("dir");
        assert!(!take(dir, 3001, 42));
        write(dir, 3001, 42).expect("write");
        assert!(!take(dir, 3001, 43), "another pid");
        assert!(!take(dir, 3002, 42), "another port");
        assert!(take(dir, 3001, 42));
        assert!(!take(dir, 3001, 42), "taken");
    }
}
