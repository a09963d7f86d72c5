//! `rewritemap`'s key reader: whatever bytes arrive, and however the reads
//! are cut, exactly one result per line, in order, each the one
//! [`check_key`] gives that line; every accepted key is what the protocol
//! allows (trimmed, no control character, at most [`MAX_LINE`]), every
//! rejection names something the line really holds, and a line that holds
//! a key (blanks and a trailing CR around it) gives exactly that key.
//!
//! Input: one byte for the `BufReader`'s capacity, two for the largest read
//! the source returns, one for how often it is interrupted (`EINTR`, which
//! the reader passes up and then resumes from), then the stream itself.

use std::io::{self, BufReader, ErrorKind, Read};

use rewritemap::client::hostile::lines_in;
use rewritemap::key::KeyReader;
use rewritemap::{MAX_LINE, Rejection, check_key};

use crate::input::Input;

/// Checks the reader on `data` (see the module doc).
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let capacity = usize::from(input.u8()) * 37 + 1;
    let max_read = usize::from(input.u16()) % (3 * MAX_LINE) + 1;
    // Never every read: the reader would never get a byte.
    let interrupt_every = match input.u8() % 8 {
        0 => 0,
        n => n + 1,
    };
    let stream = input.rest();
    let source = Flaky {
        data: stream,
        max_read,
        interrupt_every,
        reads: 0,
    };
    let mut keys = KeyReader::new(BufReader::with_capacity(capacity, source));
    let lines = lines_in(stream);
    let mut results = 0;
    loop {
        let result = match keys.next_key() {
            Ok(Some(result)) => result,
            Ok(None) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("the reader failed: {e}"),
        };
        let line = lines
            .get(results)
            .unwrap_or_else(|| panic!("more results than the {} lines", lines.len()));
        assert_eq!(result, expected(line), "line {results}: {line:?}");
        match result {
            Ok(key) => key_is_allowed(line, key),
            Err(rejection) => rejection_is_justified(line, rejection),
        }
        if let Some(key) = usable_key(line) {
            assert_eq!(result, Ok(key), "line {results}: {line:?}");
        }
        results += 1;
    }
    assert_eq!(results, lines.len(), "one result per line");
    assert_eq!(
        keys.at_rest(),
        stream.is_empty() || stream.ends_with(b"\n"),
        "at rest after the input ends, unless it ended mid-line"
    );
    let after_end = loop {
        match keys.next_key() {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other.map(|next| next.is_none()),
        }
    };
    assert!(matches!(after_end, Ok(true)), "end of input stays the end");
}

fn expected(line: &[u8]) -> Result<&str, Rejection> {
    if line.len() > MAX_LINE {
        Err(Rejection::TooLong(line.len()))
    } else {
        check_key(line)
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// An accepted key is the line without its blanks and trailing CR: nothing
/// else dropped, nothing a map could misread left in.
fn key_is_allowed(line: &[u8], key: &str) {
    assert!(line.len() <= MAX_LINE);
    assert!(!key.is_empty(), "an empty key is never accepted");
    assert!(!key.chars().any(char::is_control), "{key:?}");
    let bytes = key.as_bytes();
    assert!(!is_blank(bytes[0]) && !is_blank(bytes[bytes.len() - 1]));
    let start = line
        .windows(bytes.len())
        .position(|w| w == bytes)
        .unwrap_or_else(|| panic!("{key:?} is not in the line"));
    assert!(line[..start].iter().all(|&b| is_blank(b)), "{line:?}");
    let after = &line[start + bytes.len()..];
    let after = after.strip_suffix(b"\r").unwrap_or(after);
    assert!(after.iter().all(|&b| is_blank(b)), "{line:?}");
}

fn rejection_is_justified(line: &[u8], rejection: Rejection) {
    let text = String::from_utf8_lossy(line);
    let why = match rejection {
        Rejection::TooLong(len) => len == line.len() && len > MAX_LINE,
        Rejection::InvalidUtf8 => std::str::from_utf8(line).is_err(),
        Rejection::Nul => line.contains(&0),
        Rejection::ControlChar => text.chars().any(char::is_control),
        Rejection::Empty => line.iter().all(|&b| is_blank(b) || b == b'\r'),
    };
    assert!(why, "{rejection:?} for {line:?}");
}

/// The key the protocol promises for `line`, if it holds one: a trailing CR
/// (a CRLF client) and the blanks around the key go; what is left must be
/// UTF-8 without control characters, and the line at most [`MAX_LINE`].
fn usable_key(line: &[u8]) -> Option<&str> {
    let line_ok = line.len() <= MAX_LINE;
    let without_cr = line.strip_suffix(b"\r").unwrap_or(line);
    let start = without_cr.iter().position(|&b| !is_blank(b))?;
    let end = without_cr.iter().rposition(|&b| !is_blank(b))? + 1;
    let key = std::str::from_utf8(&without_cr[start..end]).ok()?;
    (line_ok && !key.chars().any(char::is_control)).then_some(key)
}

/// A source that returns short reads and is interrupted now and then, as a
/// pipe read by a process that takes signals is.
struct Flaky<'a> {
    data: &'a [u8],
    max_read: usize,
    interrupt_every: u8,
    reads: u64,
}

impl Read for Flaky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.interrupt_every > 0 && self.reads.is_multiple_of(u64::from(self.interrupt_every)) {
            return Err(io::Error::from(ErrorKind::Interrupted));
        }
        let n = buf.len().min(self.max_read).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
