//! Micro-benchmarks of the wire codec: decoding small and large masked
//! frames, unmasking, UTF-8 validation and encoding.
//!
//! Run with `cargo bench -p herald-bench --bench codec`. Decode benches copy
//! a fresh read buffer in the untimed setup of each batch, so they time the
//! decoder alone.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herald::wire::{
    Decoder, DecoderConfig, FrameBuilder, OpCode, Utf8Validator, apply_mask, apply_mask_scalar,
    server_header, text_frame,
};
use herald_bench::{KEY, masked_frames, text_payload};

/// Decodes every frame in `buf`; returns how many.
fn decode_all(buf: &mut BytesMut, config: &DecoderConfig) -> usize {
    let mut decoder = Decoder::new();
    let mut count = 0;
    while let Ok(Some(message)) = decoder.decode(buf, config) {
        black_box(message);
        count += 1;
    }
    count
}

fn decode_small_text(c: &mut Criterion) {
    const FRAMES: usize = 1024;
    let config = DecoderConfig::default();
    let mut group = c.benchmark_group("decode_small_text");
    for size in [16, 64, 128] {
        let wire = masked_frames(FRAMES, OpCode::Text, &text_payload(size, false));
        group.throughput(Throughput::Elements(FRAMES as u64));
        group.bench_function(format!("{size}B"), |b| {
            b.iter_batched_ref(
                || wire.clone(),
                |buf| assert_eq!(decode_all(buf, &config), FRAMES),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn decode_large_binary(c: &mut Criterion) {
    const FRAMES: usize = 16;
    const SIZE: usize = 64 * 1024;
    let config = DecoderConfig::default();
    let wire = masked_frames(FRAMES, OpCode::Binary, &vec![0xA5; SIZE]);
    let mut group = c.benchmark_group("decode_large");
    group.throughput(Throughput::Bytes((FRAMES * SIZE) as u64));
    group.bench_function("binary_64KiB", |b| {
        b.iter_batched_ref(
            || wire.clone(),
            |buf| assert_eq!(decode_all(buf, &config), FRAMES),
            BatchSize::SmallInput,
        );
    });
    let text = masked_frames(FRAMES, OpCode::Text, &text_payload(SIZE, false));
    group.bench_function("text_64KiB", |b| {
        b.iter_batched_ref(
            || text.clone(),
            |buf| assert_eq!(decode_all(buf, &config), FRAMES),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in [64usize, 64 * 1024] {
        let mut data = vec![0x3Cu8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("word_{size}B"), |b| {
            b.iter(|| apply_mask(black_box(&mut data), KEY, 1));
        });
        group.bench_function(format!("scalar_{size}B"), |b| {
            b.iter(|| apply_mask_scalar(black_box(&mut data), KEY, 1));
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for (name, mixed) in [("ascii", false), ("mixed", true)] {
        let text = text_payload(64 * 1024, mixed);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("{name}_64KiB_whole"), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(&text)).unwrap();
                v.finish().unwrap();
            });
        });
        group.bench_function(format!("{name}_64KiB_1KiB_chunks"), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for chunk in black_box(&text).chunks(1021) {
                    v.feed(chunk).unwrap();
                }
                v.finish().unwrap();
            });
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let payload = text_payload(64, false);
    let payload = std::str::from_utf8(&payload).unwrap();
    let mut group = c.benchmark_group("encode");
    group.bench_function("broadcast_header", |b| {
        b.iter(|| black_box(server_header(OpCode::Text, black_box(payload.len()))));
    });
    group.bench_function("text_frame_64B", |b| {
        b.iter(|| black_box(text_frame(black_box(payload))));
    });
    group.bench_function("frame_builder_64B", |b| {
        b.iter(|| {
            let mut builder = FrameBuilder::with_capacity(64);
            builder.extend_from_slice(black_box(payload.as_bytes()));
            black_box(builder.finish(OpCode::Text).unwrap())
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_small_text,
    decode_large_binary,
    unmask,
    utf8,
    encode
);
criterion_main!(benches);
