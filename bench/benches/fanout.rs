//! The in-process fan-out step: one broadcast frame, encoded once, queued
//! to 10,000 subscribers of one topic on one loop (topic-index lookup, slab
//! access, generation check, refcounted `Bytes` clone, flush-list marking),
//! then released as a flush would. No sockets.
//!
//! Run with `cargo bench -p herald-bench --bench fanout`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald::{bench_support::FanoutFixture, protocol::phoenix, wire::text_frame};
use serde_json::value::RawValue;

fn fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    let mut fixture = FanoutFixture::new(SUBSCRIBERS);
    let frame =
        text_frame(r#"[null,null,"room:lobby","new_msg",{"body":"0123456789abcdef0123456789"}]"#);
    group.bench_function("enqueue_10k_subscribers", |b| {
        b.iter(|| {
            assert_eq!(fixture.broadcast(black_box(&frame)), SUBSCRIBERS);
            fixture.drain();
        });
    });
    let payload =
        RawValue::from_string(r#"{"body":"0123456789abcdef0123456789"}"#.to_owned()).unwrap();
    group.bench_function("encode_once_then_enqueue_10k", |b| {
        b.iter(|| {
            let frame = phoenix::broadcast("room:lobby", "new_msg", black_box(&payload));
            assert_eq!(fixture.broadcast(&frame), SUBSCRIBERS);
            fixture.drain();
        });
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
