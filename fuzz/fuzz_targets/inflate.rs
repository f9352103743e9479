//! Arbitrary bytes as a permessage-deflate message, and through the
//! compressor and back: no panic, never past the limit, an exact round
//! trip. The oracle is `herald::fuzzing::inflate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::inflate(data));
