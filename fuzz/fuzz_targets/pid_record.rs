//! Fuzz target: vmpool's pid records: parse, re-serialise, parse again.
//! The properties are in `fuzz_checks::pid_record`, which the stable tests
//! also run on every file of `fuzz/corpus/pid_record/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::pid_record::check(data));
