//! herald's benchmarks: the pieces of the `herald-bench` load generator
//! ([`client`], [`proc_stats`]) and the fixtures of the criterion benches.
//!
//! The criterion benches in `benches/` measure the hot-path pieces in memory;
//! they build their inputs here so every bench feeds the decoder exactly
//! what a client would send.

pub mod client;
pub mod compare;
pub mod http_publisher;
pub mod proc_stats;
pub mod progress;
pub mod report;
pub mod tls;
pub mod tracker;

use bytes::BytesMut;
use herald::wire::{OpCode, client_frame};

/// A masking key that is not all zeroes, so masking does real work.
pub const KEY: [u8; 4] = [0x5a, 0xc3, 0x96, 0x0f];

/// `count` masked, final frames of `opcode`, each carrying `payload`, back
/// to back as they would sit in a read buffer.
///
/// # Examples
///
/// ```
/// use herald::wire::OpCode;
/// use herald_bench::masked_frames;
///
/// let wire = masked_frames(3, OpCode::Text, b"hi");
/// assert_eq!(wire.len(), 3 * (2 + 4 + 2));
/// ```
pub fn masked_frames(count: usize, opcode: OpCode, payload: &[u8]) -> BytesMut {
    let mut wire = BytesMut::new();
    for _ in 0..count {
        client_frame(&mut wire, true, opcode, KEY, payload);
    }
    wire
}

/// `len` bytes of text: ASCII with a multi-byte character every 16 bytes
/// when `mixed`, so UTF-8 validation leaves its ASCII fast path.
///
/// # Examples
///
/// ```
/// let text = herald_bench::text_payload(64, true);
/// assert_eq!(text.len(), 64);
/// assert!(std::str::from_utf8(&text).is_ok());
/// ```
pub fn text_payload(len: usize, mixed: bool) -> Vec<u8> {
    let mut text = String::with_capacity(len + 4);
    while text.len() < len {
        if mixed && text.len() % 16 == 14 && text.len() + 2 <= len {
            text.push('é');
        } else {
            text.push(char::from(b'a' + (text.len() % 26) as u8));
        }
    }
    text.into_bytes()
}
