//! The properties that the fuzz targets in `fuzz/` check, one module per
//! target, so that the same checks run twice: under `cargo +nightly fuzz`
//! (libFuzzer, coverage-guided, `scripts/fuzz`) and on stable, where
//! `tests/corpus.rs` replays every committed input as an ordinary test: the
//! hand-written seeds of `fuzz/seeds/<target>/` and the minimized corpus of
//! `fuzz/corpus/<target>/`.
//!
//! Each `check` takes the fuzzer's raw bytes and panics when a property does
//! not hold; a panic in the library under test is a finding too. The
//! production libraries carry no fuzz-only code: this crate drives them
//! through their public API only, and is never shipped (`publish = false`).
//!
//! Targets ([`TARGETS`]), each named like its fuzz target and its input
//! directories:
//! - [`key_reader`]: `rewritemap`'s key reader, one result per line;
//! - [`map_file`]: `server-map`'s balance-file parser;
//! - [`pid_record`]: `vmpool`'s pid records, parse and re-serialise;
//! - [`listen_table`]: `vmpool`'s parser of the kernel's sock_diag replies;
//! - [`live_map`]: the launcher's live map, written then read back.

#![deny(missing_docs)]

pub mod input;
pub mod key_reader;
pub mod listen_table;
pub mod live_map;
pub mod map_file;
pub mod pid_record;

/// A target's check: panics when a property does not hold for the input.
pub type Check = fn(&[u8]);

/// Every target: its name (= its corpus directory and its fuzz binary) and
/// its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("key_reader", key_reader::check),
    ("map_file", map_file::check),
    ("pid_record", pid_record::check),
    ("listen_table", listen_table::check),
    ("live_map", live_map::check),
];
