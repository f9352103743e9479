//! Arbitrary bytes as a cluster bus envelope (what a broker hands a node):
//! no panic, and what decodes re-encodes to the same bytes. The oracle is
//! `herald::fuzzing::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::envelope(data));
