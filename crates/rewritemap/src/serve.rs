//! The map loop: one answer line per key, flushed at once, until end of input.
//!
//! Apache holds one global mutex (`rewrite-map`) for every lookup of every
//! `prg:` map while it waits for our answer, so an answer left in a buffer
//! stalls every dynamic request of the site: each answer is written with one
//! `write` and flushed before the next key is read.

use std::fmt;
use std::io::{self, BufRead, ErrorKind, Write};
use std::time::{Duration, Instant};

use crate::key::KeyReader;
use crate::signals;

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// End of input: Apache (or whoever wrote the keys) closed the pipe.
    EndOfInput,
    /// The reader of the answers went away (EPIPE).
    OutputClosed,
    /// SIGTERM. `at_rest`: every key read was answered and nothing was read
    /// ahead, so another process may carry on with the same input.
    Signalled {
        /// Nothing read and unanswered, no key split.
        at_rest: bool,
    },
}

/// Answers keys read from `input` on `output` until end of input, a broken
/// `output`, or SIGTERM (see [`signals::install`]); all three are a normal end
/// (`Ok`), told apart by [`Ended`]. On SIGTERM, keys already read are answered
/// first, so the input is left at a line boundary whenever possible.
///
/// `no` is the program's "no" answer (`closed`, `NULL`). A malformed line gets
/// it without `answer` being called, and so does a key that `answer` finds
/// malformed ([`BadKey`]); both are logged, rate-limited. An answer that
/// could not be parsed back by Apache as one line (empty, or holding a line
/// break) is replaced by `no` and logged: this loop keeps the
/// one-line-per-key contract whatever `answer` returns.
pub fn serve<R, W, A>(
    input: R,
    mut output: W,
    no: &str,
    mut answer: impl FnMut(&str) -> Result<A, BadKey>,
) -> io::Result<Ended>
where
    R: BufRead,
    W: Write,
    A: AsRef<str>,
{
    let mut keys = KeyReader::new(input);
    let mut rejects = RejectLog::default();
    let mut line = Vec::with_capacity(64);
    loop {
        if signals::stop_requested() && keys.at_rest() {
            return Ok(Ended::Signalled { at_rest: true });
        }
        let next = match keys.next_key() {
            Ok(next) => next,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        line.clear();
        match next {
            None if signals::stop_requested() => {
                return Ok(Ended::Signalled {
                    at_rest: keys.at_rest(),
                });
            }
            None => {
                tracing::debug!("end of input, stopping");
                return Ok(Ended::EndOfInput);
            }
            Some(Ok(key)) => {
                let started = Instant::now();
                match answer(key) {
                    Ok(reply) => {
                        let reply = checked_answer(key, reply.as_ref(), no);
                        tracing::debug!(?key, answer = ?reply, elapsed = ?started.elapsed(), "lookup");
                        line.extend_from_slice(reply.as_bytes());
                    }
                    Err(bad) => {
                        rejects.log(format_args!("key {key:?}: {bad}"), no);
                        line.extend_from_slice(no.as_bytes());
                    }
                }
            }
            Some(Err(rejection)) => {
                rejects.log(rejection, no);
                line.extend_from_slice(no.as_bytes());
            }
        }
        line.push(b'\n');
        if let Err(e) = write_answer(&mut output, &line) {
            if e.kind() == ErrorKind::BrokenPipe {
                tracing::debug!("stdout closed by the reader, stopping");
                return Ok(Ended::OutputClosed);
            }
            return Err(e);
        }
    }
}

/// A key that is well-formed as a line but means nothing to the program
/// (`3001|3002` for a port map, a host that is not allowed): the caller gets
/// "no" and the reason is logged, rate-limited like every rejected line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey(pub String);

impl BadKey {
    /// A rejection with a reason for the log.
    pub fn new(reason: impl Into<String>) -> Self {
        BadKey(reason.into())
    }
}

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadKey {}

fn write_answer(output: &mut impl Write, line: &[u8]) -> io::Result<()> {
    output.write_all(line)?;
    output.flush()
}

/// Returns `reply` if Apache can read it back as exactly the answer we mean,
/// else `no`. An empty line would be a *found* empty value to Apache (its
/// `|default` would not apply), and a line break would desynchronise the map.
pub(crate) fn checked_answer<'a>(key: &str, reply: &'a str, no: &'a str) -> &'a str {
    if reply.is_empty() || reply.contains(['\n', '\r']) {
        tracing::error!(
            ?key,
            ?reply,
            "answer is not a single non-empty line; answering {no:?}"
        );
        no
    } else {
        reply
    }
}

/// Logs rejected lines, at most [`RejectLog::BURST`] per
/// [`RejectLog::WINDOW`]: a client that sends garbage on every request must
/// not flood Apache's error log. What was held back is counted and reported.
#[derive(Debug, Default)]
struct RejectLog {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RejectLog {
    const BURST: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(60);

    fn log(&mut self, what: impl fmt::Display, no: &str) {
        let now = Instant::now();
        let expired = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Self::WINDOW);
        if expired {
            if self.suppressed > 0 {
                tracing::warn!(
                    "{} more rejected lines were not logged in the last {:?}",
                    self.suppressed,
                    Self::WINDOW
                );
            }
            *self = RejectLog {
                window_start: Some(now),
                ..RejectLog::default()
            };
        }
        if self.logged < Self::BURST {
            self.logged += 1;
            tracing::warn!("rejected {what}; answering {no:?}");
        } else {
            self.suppressed += 1;
        }
    }
}
