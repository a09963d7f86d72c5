//! `server-map`: Apache's `balance.conf` (`txt:`/`rnd:` map syntax) served as
//! a `RewriteMap prg:` that follows the file's changes, so that a cut-over
//! (`cp balance.confB balance.conf`, or better `server-map switch`) takes
//! effect on the very next lookup and a broken file never takes the site
//! down.
//!
//! This library is the map itself: [`MapFile`] parses a file exactly as
//! Apache's `rnd:` reader would (see [`mapfile`] for every rule) and keeps
//! line numbers for `server-map check`; [`ReloadingMap`] follows the file with
//! one `stat` per lookup; [`orphans`] finds the servers whose VM listens and
//! which a new map would leave without a route. `image-launcher` can use it to
//! learn the active set (`ALL`) from the same file.
//!
//! ```no_run
//! let mut map = server_map::ReloadingMap::new("/etc/seaside/balance.conf");
//! let mut rng = fastrand::Rng::new();
//! let answer: String = map.current().lookup("ALL", &mut rng).unwrap_or("NULL").to_owned();
//! let active: Vec<u16> = map.current().active_ports();
//! # let _ = (answer, active);
//! ```
//!
//! # Protocol
//! As a `prg:` map (via the `rewritemap` crate): one key per line in, one
//! answer line out. `app3001` -> `3001`; `ALL` (`3001|3002|3003`) -> one of
//! them, uniformly at random, on every lookup; an unknown key -> `NULL`, so
//! that Apache's `${SERVERS:key|default}` applies. An empty alternative
//! (`3001||3002`) is answered `NULL` too, never with an empty line: Apache
//! would take an empty line as a *found* empty value.
//!
//! # Files
//! - The map file, `balance.conf`: `key value` per line, `#` comments,
//!   parsed as described in [`mapfile`]. Use an absolute path in Apache's
//!   `prg:` line: Apache starts the program in its own directory.
//! - `balance.confA` / `balance.confB`: the two sets to switch between; they
//!   are never read by the map, only copied over `balance.conf`.
//! - With `status --pid-dir DIR`: image-launcher's pid records,
//!   `DIR/<port>.pid` (read only).
//!
//! # Failure modes
//! - A file that cannot be read, is not a regular file, is empty, larger
//!   than 1 MiB, holds a NUL byte or invalid UTF-8, has no entry, or has been
//!   deleted never replaces the last good map: the map keeps answering from
//!   it, and the error is logged once per change of the file. If there has
//!   never been a good map (bad file at start), every key is `NULL`.
//! - A file that changes while it is read is read again (see [`reload`]).
//! - A cut-over by `cp` is quiet: a new version read empty or cut short (a
//!   copy in progress) keeps the last good map without a word and is read
//!   again shortly ([`reload::SETTLE`]); only a version that stays bad is
//!   logged as an error.
//! - A file with errors that are not fatal (duplicate keys, empty
//!   alternatives, ports out of range...) is used as Apache would use it,
//!   and each error is logged once when it is loaded. `server-map check`
//!   lists them; `server-map switch` refuses such a file.
//!
//! # Command line
//! [`cli`] is the command line of the program (`main.rs`), here so that the
//! man pages are generated from the very definitions `--help` prints.

#![deny(missing_docs)]

pub mod cli;
pub mod mapfile;
pub mod orphans;
pub mod reload;

pub use mapfile::{ALL, Diagnostic, MapFile, Rejected, Severity, Value};
pub use orphans::{Orphan, OrphanWatch};
pub use reload::{ReadError, ReloadingMap, read_settled};
