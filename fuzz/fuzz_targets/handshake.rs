//! Arbitrary bytes as an upgrade request head: every check runs, nothing
//! panics. The oracle is `herald::fuzzing::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::handshake(data));
