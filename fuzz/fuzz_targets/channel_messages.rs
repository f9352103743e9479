//! Arbitrary bytes as Phoenix (JSON and binary) and Amber channel messages:
//! nothing panics, what decodes re-encodes. The oracle is
//! `herald::fuzzing::channel_messages`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::channel_messages(data));
