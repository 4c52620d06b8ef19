#![no_main]
//! See `engine::fuzzing::codec_round_trip` for what is fed in and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::codec_round_trip(data));
