#![no_main]
//! See `engine::fuzzing::wal_segment` for what is fed in and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::wal_segment(data));
