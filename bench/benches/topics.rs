//! The topic index: a join (subscribe: local map and shared registry), a
//! leave (unsubscribe), and a broadcaster's lookup in the lock-free
//! registry, with 10,000 topics of 10 subscribers each in place.
//!
//! Run with `cargo bench -p herald-bench --bench topics`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use herald::bench_support::TopicIndexFixture;

const TOPICS: usize = 10_000;

fn topics(c: &mut Criterion) {
    let mut fixture = TopicIndexFixture::new(TOPICS);
    for conn in 0..10u64 {
        for topic in 0..TOPICS {
            fixture.subscribe(topic, conn);
        }
    }
    let mut group = c.benchmark_group("topic_index");
    let mut next = 0usize;
    group.bench_function("subscribe_then_unsubscribe", |b| {
        b.iter(|| {
            next = (next + 7919) % TOPICS;
            fixture.subscribe(black_box(next), 1_000_000);
            fixture.unsubscribe(black_box(next), 1_000_000);
        });
    });
    group.bench_function("first_subscriber_of_a_topic", |b| {
        // A topic's first subscriber sets the loop's bit in the registry;
        // its last clears it and forgets the topic.
        let mut fresh = TopicIndexFixture::new(TOPICS);
        b.iter(|| {
            next = (next + 7919) % TOPICS;
            fresh.subscribe(black_box(next), 1);
            fresh.unsubscribe(black_box(next), 1);
        });
    });
    group.bench_function("registry_lookup", |b| {
        b.iter(|| {
            next = (next + 7919) % TOPICS;
            black_box(fixture.lookup(black_box(next)))
        });
    });
    group.finish();
}

criterion_group!(benches, topics);
criterion_main!(benches);
