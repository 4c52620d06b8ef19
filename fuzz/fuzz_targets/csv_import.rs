#![no_main]
//! See `engine::fuzzing::csv_import` for what is fed in and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::csv_import(data));
