//! Fuzz target: rewritemap's key reader: one result per line, whatever the bytes.
//! The properties are in `fuzz_checks::key_reader`, which the stable tests
//! also run on every file of `fuzz/corpus/key_reader/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::key_reader::check(data));
