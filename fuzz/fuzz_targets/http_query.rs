#![no_main]
//! See `engine::fuzzing::http_query` for what is fed in and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::http_query(data));
