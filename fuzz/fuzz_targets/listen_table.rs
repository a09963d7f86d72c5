//! Fuzz target: vmpool's parser of the kernel's sock_diag replies.
//! The properties are in `fuzz_checks::listen_table`, which the stable tests
//! also run on every file of `fuzz/corpus/listen_table/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::listen_table::check(data));
