//! Scripted messages encoded as a client sends them, decoded in chunks: the
//! same messages come back. The oracle is `herald::fuzzing::round_trip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::round_trip(data));
