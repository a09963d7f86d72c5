//! Fuzz target: server-map's balance-file parser.
//! The properties are in `fuzz_checks::map_file`, which the stable tests
//! also run on every file of `fuzz/corpus/map_file/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::map_file::check(data));
