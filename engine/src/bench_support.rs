//! Fixtures for `herald-bench`'s in-process benchmarks, behind the
//! `bench-support` feature: the fan-out step of a loop (subscriber lookup in
//! the loop's topic index, slab access, generation check, refcounted enqueue
//! and flush-list marking) without sockets, using the same functions as the
//! reactor. Not part of the public API.

use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;

use crate::{
    config::ServerConfig,
    conn::Outbox,
    metrics::LoopStats,
    protocol::WireProtocol,
    pubsub::{ConnId, LoopTopics, Sub, TopicRegistry},
};

/// One loop's worth of subscribers of one topic, with their outboxes.
#[derive(Debug)]
pub struct FanoutFixture {
    topic: Arc<str>,
    topics: LoopTopics<Sub>,
    outboxes: Slab<(u32, Outbox)>,
    config: ServerConfig,
    stats: LoopStats,
    dirty: Vec<usize>,
}

impl FanoutFixture {
    /// `subscribers` connections subscribed to one topic on one loop.
    pub fn new(subscribers: usize) -> Self {
        let topic: Arc<str> = Arc::from("bench:topic");
        let mut topics = LoopTopics::new(0, Arc::new(TopicRegistry::default()));
        let mut outboxes = Slab::with_capacity(subscribers);
        for generation in 0..subscribers as u32 {
            let key = outboxes.insert((generation, Outbox::default()));
            let sub = Sub::plain(WireProtocol::PhoenixV2);
            topics.subscribe(&topic, ConnId::new(key, generation), sub);
        }
        Self {
            topic,
            topics,
            outboxes,
            config: ServerConfig::default(),
            stats: LoopStats::default(),
            dirty: Vec::with_capacity(subscribers),
        }
    }

    /// Queues `frame` to every subscriber, as a loop delivers a broadcast.
    /// Returns how many were queued.
    pub fn broadcast(&mut self, frame: &Bytes) -> usize {
        let mut delivered = 0;
        for (id, _) in self.topics.local().subscribers(&self.topic) {
            let key = id.key();
            let Some((generation, outbox)) = self.outboxes.get_mut(key) else {
                continue;
            };
            if *generation != id.generation() {
                continue;
            }
            delivered += usize::from(outbox.fan_out(
                key,
                frame,
                1,
                None,
                &self.config,
                &self.stats,
                &mut self.dirty,
            ));
        }
        delivered
    }

    /// Empties every queue that was marked, as a flush that wrote
    /// everything would (dropping each subscriber's reference).
    pub fn drain(&mut self) {
        for key in self.dirty.drain(..) {
            if let Some((_, outbox)) = self.outboxes.get_mut(key) {
                outbox.dirty = false;
                outbox.queue.clear();
            }
        }
    }
}

/// A loop's topic index with many topics, for insert/remove/lookup timing.
#[derive(Debug)]
pub struct TopicIndexFixture {
    topics: LoopTopics<Sub>,
    names: Vec<String>,
}

impl TopicIndexFixture {
    /// `topics` topic names (`room:0`, `room:1`, ...), none subscribed yet.
    pub fn new(topics: usize) -> Self {
        Self {
            topics: LoopTopics::new(0, Arc::new(TopicRegistry::default())),
            names: (0..topics).map(|i| format!("room:{i}")).collect(),
        }
    }

    /// Subscribes connection `conn` to topic number `topic` (registry
    /// included), as a join does.
    pub fn subscribe(&mut self, topic: usize, conn: u64) {
        let name = &self.names[topic % self.names.len()];
        let sub = Sub::plain(WireProtocol::PhoenixV2);
        self.topics.subscribe(name, ConnId::from_bits(conn), sub);
    }

    /// Unsubscribes it again.
    pub fn unsubscribe(&mut self, topic: usize, conn: u64) {
        let name = &self.names[topic % self.names.len()];
        self.topics.unsubscribe(name, ConnId::from_bits(conn));
    }

    /// Looks topic number `topic` up in the shared registry, as a
    /// broadcaster does; returns its subscriber count.
    pub fn lookup(&self, topic: usize) -> u64 {
        self.topics
            .registry()
            .subscriber_count(&self.names[topic % self.names.len()])
    }
}
