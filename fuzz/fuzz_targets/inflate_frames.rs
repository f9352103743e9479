//! A script of compressed messages through a connection that negotiated
//! permessage-deflate: no panic, nothing past the limit, the right close
//! code on failure. The oracle is `herald::fuzzing::inflate_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::inflate_frames(data));
