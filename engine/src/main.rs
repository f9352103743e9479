//! The `herald` binary.
//!
//! The standalone server lands with the event-loop and channels layers; until
//! then this binary runs a short self-check of the wire codec on this machine
//! and prints what it measured, so `cargo run --release` shows the codec's
//! speed at a glance. The criterion benchmarks in `bench/` are the
//! authoritative figures.

use std::{hint::black_box, time::Instant};

use bytes::BytesMut;
use herald::wire::{Decoder, DecoderConfig, Message, OpCode, client_frame, text_frame};

fn main() {
    println!(
        "herald {}: wire codec self-check",
        env!("CARGO_PKG_VERSION")
    );
    small_text_frames();
    large_binary_frames();
    broadcast_encoding();
    println!("(the server arrives with the next releases; see README.md)");
}

/// Decodes batches of masked 64-byte text frames, UTF-8 validation included.
fn small_text_frames() {
    let payload = [b'x'; 64];
    let mut wire = BytesMut::new();
    for _ in 0..4096 {
        client_frame(&mut wire, true, OpCode::Text, [1, 2, 3, 4], &payload);
    }
    let frames = measure(200, &wire, |message| matches!(message, Message::Text(_)));
    println!(
        "  64 B masked text frames:   {:>8.1} M frames/s",
        frames / 1e6
    );
}

/// Decodes masked 64 KiB binary frames.
fn large_binary_frames() {
    let payload = vec![0xA5u8; 64 * 1024];
    let mut wire = BytesMut::new();
    for _ in 0..16 {
        client_frame(&mut wire, true, OpCode::Binary, [9, 8, 7, 6], &payload);
    }
    let frames = measure(400, &wire, |message| matches!(message, Message::Binary(_)));
    println!(
        "  64 KiB masked binary:      {:>8.1} GB/s",
        frames * payload.len() as f64 / 1e9
    );
}

/// Builds a broadcast frame (one allocation, header and payload).
fn broadcast_encoding() {
    let payload = r#"[null,null,"room:lobby","new_msg",{"body":"hello everyone"}]"#;
    let rounds = 2_000_000u32;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(text_frame(black_box(payload)));
    }
    let per_frame = start.elapsed().as_nanos() as f64 / f64::from(rounds);
    println!("  broadcast frame (60 B):    {per_frame:>8.1} ns/frame");
}

/// Decodes `wire` `rounds` times; returns frames decoded per second.
fn measure(rounds: usize, wire: &BytesMut, expected: impl Fn(&Message) -> bool) -> f64 {
    let config = DecoderConfig::default();
    let mut decoded = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut buf = wire.clone();
        let mut decoder = Decoder::new();
        while let Ok(Some(message)) = decoder.decode(&mut buf, &config) {
            assert!(expected(&message), "unexpected {message:?}");
            decoded += 1;
        }
    }
    decoded as f64 / start.elapsed().as_secs_f64()
}
