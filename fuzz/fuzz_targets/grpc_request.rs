#![no_main]
//! See `engine::fuzzing::grpc_request` for what is fed in and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::grpc_request(data));
