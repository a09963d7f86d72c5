//! `verify-port`'s command line, as a library so that the man page
//! (`crates/manpages`) is generated from the very definition `--help` prints:
//! [`cli::Args`]. The program itself is `main.rs`.

#![deny(missing_docs)]

pub mod cli;
