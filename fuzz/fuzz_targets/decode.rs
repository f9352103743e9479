//! Arbitrary bytes in arbitrary chunkings: no panic, bounded memory, same
//! result as a one-shot parse. The oracle is `herald::fuzzing::decode_in_chunks`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::decode_in_chunks(data));
