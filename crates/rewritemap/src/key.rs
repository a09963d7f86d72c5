//! Reading keys: one per line, capped, trimmed and checked, never losing sync.
//!
//! Apache writes `key\n` and then waits for exactly one answer line. Whatever
//! a line holds, it must produce exactly one answer, so every malformed line
//! becomes a [`Rejection`] (answered with the program's "no") instead of an
//! error, and an over-long line is read through to its newline so the next
//! key starts where Apache thinks it does.

use std::fmt;
use std::io::{self, BufRead};

/// The longest line (without its newline) that can hold a key. Longer lines
/// are consumed to their newline and rejected.
pub const MAX_LINE: usize = 4096;

/// Why a line is not a usable key. Each variant is answered with "no".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The line was longer than [`MAX_LINE`] bytes; it holds the full length.
    TooLong(usize),
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// The line holds a NUL byte.
    Nul,
    /// The line holds another control character (other than the trimmed
    /// spaces, tabs and trailing CR).
    ControlChar,
    /// Nothing is left after trimming. Apache sends these, e.g. for
    /// `${PORTS:${SERVERS:app9}}` when `app9` is not in the server map.
    Empty,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::TooLong(len) => {
                write!(f, "line of {len} bytes is longer than {MAX_LINE}")
            }
            Rejection::InvalidUtf8 => f.write_str("line is not valid UTF-8"),
            Rejection::Nul => f.write_str("line holds a NUL byte"),
            Rejection::ControlChar => f.write_str("line holds a control character"),
            Rejection::Empty => f.write_str("empty key"),
        }
    }
}

/// Trims one raw line (without its `\n`) and checks that it is a usable key.
///
/// Leading and trailing spaces and tabs go, and so does a trailing CR (a key
/// typed on a Windows terminal or sent by a CRLF client).
pub fn check_key(raw: &[u8]) -> Result<&str, Rejection> {
    if raw.len() > MAX_LINE {
        return Err(Rejection::TooLong(raw.len()));
    }
    let trimmed = trim(raw);
    if trimmed.is_empty() {
        return Err(Rejection::Empty);
    }
    if trimmed.contains(&0) {
        return Err(Rejection::Nul);
    }
    let key = std::str::from_utf8(trimmed).map_err(|_| Rejection::InvalidUtf8)?;
    if key.chars().any(char::is_control) {
        return Err(Rejection::ControlChar);
    }
    Ok(key)
}

fn trim(raw: &[u8]) -> &[u8] {
    let is_blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = raw.iter().position(|b| !is_blank(b)).unwrap_or(raw.len());
    let mut end = raw.len();
    if end > start && raw[end - 1] == b'\r' {
        end -= 1;
    }
    while end > start && is_blank(&raw[end - 1]) {
        end -= 1;
    }
    &raw[start..end]
}

/// Reads lines from a [`BufRead`] with a hard cap on the memory a line may
/// take, whatever the input.
#[derive(Debug)]
pub struct KeyReader<R> {
    input: R,
    /// The kept part of the current line (at most [`MAX_LINE`] bytes).
    line: Vec<u8>,
    /// How many bytes of the current line were dropped beyond the cap.
    dropped: usize,
    /// The current line has been returned; the next call starts a new one.
    complete: bool,
    /// Bytes the input still held after the last line was taken from it.
    buffered: usize,
    /// The last line returned was ended by end of input, not by a newline.
    cut_by_eof: bool,
}

impl<R: BufRead> KeyReader<R> {
    /// Wraps `input`. Nothing is read yet.
    pub fn new(input: R) -> Self {
        KeyReader {
            input,
            line: Vec::with_capacity(64),
            dropped: 0,
            complete: false,
            buffered: 0,
            cut_by_eof: false,
        }
    }

    /// True between lines with nothing read ahead: every byte taken from the
    /// input so far has been returned as a line. Only then can another
    /// process take over the input without losing or splitting a key.
    pub fn at_rest(&self) -> bool {
        let partial = !self.complete && (!self.line.is_empty() || self.dropped > 0);
        !partial && self.buffered == 0 && !self.cut_by_eof
    }

    /// Reads the next line and checks it.
    ///
    /// Returns `Ok(None)` at end of input. A last line without a newline is
    /// still returned (a person may type `printf 3001 | verify-port`).
    /// `ErrorKind::Interrupted` is passed up, so that a caller can notice a
    /// signal while it waits for input; calling again carries on with the
    /// same line.
    pub fn next_key(&mut self) -> io::Result<Option<Result<&str, Rejection>>> {
        match self.read_line()? {
            None => Ok(None),
            Some(len) if len > MAX_LINE => Ok(Some(Err(Rejection::TooLong(len)))),
            Some(_) => Ok(Some(check_key(&self.line))),
        }
    }

    /// Reads one line into `self.line` and returns its full length (kept and
    /// dropped bytes, without the newline), or `None` at end of input.
    fn read_line(&mut self) -> io::Result<Option<usize>> {
        if self.complete {
            self.line.clear();
            self.dropped = 0;
            self.complete = false;
        }
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                self.complete = true;
                self.buffered = 0;
                let len = self.line.len() + self.dropped;
                // Sticky: once input ended mid-line, it stays so.
                self.cut_by_eof |= len > 0;
                return Ok((len > 0).then_some(len));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let taken = newline.unwrap_or(chunk.len());
            let keep = taken.min(MAX_LINE - self.line.len());
            self.line.extend_from_slice(&chunk[..keep]);
            self.dropped += taken - keep;
            let used = taken + usize::from(newline.is_some());
            self.buffered = chunk.len() - used;
            self.input.consume(used);
            if newline.is_some() {
                self.complete = true;
                return Ok(Some(self.line.len() + self.dropped));
            }
        }
    }
}
