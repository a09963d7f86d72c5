//! The `prg:` protocol of Apache's `RewriteMap`, written once for every map
//! program of this workspace.
//!
//! Apache starts a map program once, writes one key per line on its stdin
//! and reads exactly one answer line from its stdout, holding one global
//! mutex for the whole exchange. This crate owns that loop, so that each
//! program only says how to answer one key:
//!
//! ```no_run
//! use rewritemap::{CommonArgs, LogLevel, MapProgram};
//! const MAP: MapProgram = MapProgram { name: "echo-map", no: "NULL", example_key: "x" };
//! let common = CommonArgs { log_level: LogLevel::Info };
//! MAP.start(&common).expect("logging and signals");
//! MAP.run(&[], |key| Ok::<_, rewritemap::BadKey>(format!("seen-{key}")));
//! ```
//!
//! # Protocol
//! - A key is one line, at most [`MAX_LINE`] bytes; longer lines are read
//!   through to their newline and answered "no", so the map never loses sync.
//! - Spaces, tabs and a trailing CR around a key are trimmed; an empty key,
//!   invalid UTF-8, NUL or another control character is answered "no".
//! - Exactly one answer line per key, flushed at once. Nothing else is ever
//!   written to stdout; logs go to stderr (Apache's ErrorLog) via `tracing`.
//! - End of input, a closed stdout (EPIPE) and SIGTERM end the loop quietly.
//!   On SIGTERM, a successor takes over the pipes to serve Apache's previous
//!   generation of children during a graceful restart ([`successor`]).
//!
//! # Failure modes
//! A failure to answer one key is the program's business: its answer
//! function returns "no" and logs why. An answer that Apache could not read
//! back as one line (empty, or holding a line break) is replaced by "no".
//! Rejected lines are logged at most 20 times a minute, with a count of the
//! rest, so garbage on every request cannot flood the error log.
//!
//! See `docs/protocol.md` for what Apache itself does at each edge.

#![deny(missing_docs)]

pub mod client;
pub mod key;
pub mod program;
pub mod serve;
pub mod signals;
pub mod successor;
pub mod throttle;

pub use key::{MAX_LINE, Rejection, check_key};
pub use program::{CommonArgs, LogLevel, MapProgram};
pub use serve::{BadKey, Ended, serve};
