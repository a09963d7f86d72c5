//! Fuzz target: the launcher's live map: written, then read back the same.
//! The properties are in `fuzz_checks::live_map`, which the stable tests
//! also run on every file of `fuzz/corpus/live_map/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::live_map::check(data));
