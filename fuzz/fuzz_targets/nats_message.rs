#![no_main]
//! See `engine::fuzzing::nats_message` for what is fed in and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::nats_message(data));
