//! Streams kept in this process, for a single node.
//!
//! Streams live in shards, each behind its own mutex. A publication takes
//! its offset and is delivered to the loops under the shard's lock, so that
//! every loop receives a topic's publications in offset order, whichever
//! threads published them.
//!
//! Memory is bounded four ways: each stream keeps at most its rule's size;
//! a stream's publications go once its TTL has passed since the last one
//! (as Redis expires the stream key); each shard holds at most its share
//! of `max_bytes` of publications (past it, the oldest of the topic being
//! published to go first, then the streams published to least recently
//! lose theirs); and a shard forgets the stream published to least
//! recently when it holds its share of `max_topics`. A stream's epoch and
//! offset outlive its publications by [`META_TTL`], so an idle topic's
//! clients still recover "nothing missed".

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    History, HistoryBackend, HistoryError, Publication, Publish, Recovery, RecoveryRead,
    StreamPosition,
};
use crate::{broadcast::Broadcast, reactor::ServerHandle};

/// How many shards the streams are spread over.
const SHARDS: usize = 16;

/// How long a stream's epoch and offset are kept after its last
/// publication.
pub(crate) const META_TTL: Duration = Duration::from_secs(24 * 3600);

/// One topic's stream.
#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    top: u64,
    kept: VecDeque<Publication>,
    /// What `kept` holds, by [`Publication::wire_size`].
    bytes: usize,
    last_publish: Instant,
    rule: History,
}

impl Stream {
    /// Drops what the rule no longer keeps at `now`; returns the bytes
    /// freed.
    fn trim(&mut self, now: Instant) -> usize {
        let before = self.bytes;
        while self.kept.len() > self.rule.max_size() {
            self.drop_oldest();
        }
        if now.duration_since(self.last_publish) >= self.rule.max_age() {
            self.clear();
        }
        before - self.bytes
    }

    fn drop_oldest(&mut self) -> usize {
        let freed = self.kept.pop_front().map_or(0, |p| p.wire_size());
        self.bytes -= freed;
        freed
    }

    fn clear(&mut self) -> usize {
        let freed = self.bytes;
        // A burst's buffer goes back too.
        self.kept = VecDeque::new();
        self.bytes = 0;
        freed
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.to_string(),
            offset: self.top,
        }
    }

    fn oldest(&self) -> Option<u64> {
        self.kept.front().map(|publication| publication.offset)
    }

    /// The kept publications after `offset`, oldest first.
    fn after(&self, offset: u64) -> Vec<Publication> {
        self.kept
            .iter()
            .filter(|publication| publication.offset > offset)
            .cloned()
            .collect()
    }
}

#[derive(Debug, Default)]
struct Shard {
    streams: HashMap<Box<str>, Stream>,
    /// The publications all its streams hold, in bytes.
    bytes: usize,
}

impl Shard {
    /// Forgets the stream published to least recently; streams only ever
    /// read (joined, never published to) go first.
    fn evict_least_recent(&mut self) {
        let oldest = self
            .streams
            .iter()
            .min_by_key(|(_, stream)| (stream.top > 0, stream.last_publish))
            .map(|(topic, _)| topic.clone());
        if let Some(topic) = oldest
            && let Some(stream) = self.streams.remove(&topic)
        {
            self.bytes -= stream.bytes;
        }
    }

    /// Frees publications until the shard holds at most `budget` bytes:
    /// the oldest of `topic` first (down to its newest), then every
    /// publication of the streams published to least recently.
    fn shed(&mut self, topic: &str, budget: usize) {
        if let Some(stream) = self.streams.get_mut(topic) {
            while self.bytes > budget && stream.kept.len() > 1 {
                self.bytes -= stream.drop_oldest();
            }
        }
        while self.bytes > budget {
            let victim = self
                .streams
                .iter_mut()
                .filter(|(name, stream)| !stream.kept.is_empty() && &***name != topic)
                .min_by_key(|(_, stream)| stream.last_publish);
            let Some((_, stream)) = victim else {
                break;
            };
            self.bytes -= stream.clear();
        }
    }
}

/// The most publish keys kept at once; past it the oldest claims go.
const MAX_PUBLISH_KEYS: usize = 100_000;

/// Claimed publish keys and when each claim ends, oldest first.
#[derive(Debug, Default)]
struct PublishKeys {
    until: HashMap<Box<str>, Instant>,
    order: VecDeque<(Instant, Box<str>)>,
}

impl PublishKeys {
    fn claim(&mut self, key: &str, ttl: Duration, now: Instant) -> bool {
        self.expire(now);
        if self.until.get(key).is_some_and(|&until| until > now) {
            return false;
        }
        while self.until.len() >= MAX_PUBLISH_KEYS {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.until.remove(&oldest);
        }
        let until = now + ttl;
        self.until.insert(Box::from(key), until);
        self.order.push_back((until, Box::from(key)));
        true
    }

    /// Forgets claims that ended (in claim order; a longer TTL given after
    /// a shorter one waits its turn, which only keeps it longer).
    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                break;
            }
            if let Some((until, key)) = self.order.pop_front()
                && self.until.get(&key) == Some(&until)
            {
                self.until.remove(&key);
            }
        }
    }
}

/// The in-process store.
#[derive(Debug)]
pub(crate) struct MemoryHistory {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    bytes_per_shard: usize,
    server: OnceLock<ServerHandle>,
    /// Makes each new epoch distinct.
    epochs: AtomicU64,
    publish_keys: Mutex<PublishKeys>,
}

impl MemoryHistory {
    pub(crate) fn new(max_topics: usize, max_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: max_topics.div_ceil(SHARDS).max(1),
            bytes_per_shard: max_bytes.div_ceil(SHARDS).max(1),
            server: OnceLock::new(),
            epochs: AtomicU64::new(0),
            publish_keys: Mutex::default(),
        }
    }

    /// Which shard holds `topic`.
    pub(super) fn shard_index(&self, topic: &str) -> usize {
        (self.hasher.hash_one(topic) as usize) % SHARDS
    }

    fn shard(&self, topic: &str) -> MutexGuard<'_, Shard> {
        self.shards[self.shard_index(topic)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A name no earlier stream of this process had, unlikely to be one
    /// of another process's.
    fn new_epoch(&self) -> Arc<str> {
        let count = self.epochs.fetch_add(1, Ordering::Relaxed);
        let mixed = self.hasher.hash_one((count, std::process::id()));
        Arc::from(format!("{:08x}", mixed as u32))
    }

    /// The stream of `topic` in `shard`, trimmed to `now` under `rule`;
    /// created (evicting the least recently published one if the shard is
    /// full) if it has none.
    fn stream<'s>(
        &self,
        shard: &'s mut Shard,
        topic: &str,
        rule: History,
        now: Instant,
    ) -> &'s mut Stream {
        if !shard.streams.contains_key(topic) {
            if shard.streams.len() >= self.per_shard {
                shard.evict_least_recent();
            }
            let stream = Stream {
                epoch: self.new_epoch(),
                top: 0,
                kept: VecDeque::new(),
                bytes: 0,
                last_publish: now,
                rule,
            };
            shard.streams.insert(Box::from(topic), stream);
        }
        let Shard { streams, bytes } = shard;
        let stream = streams.get_mut(topic).expect("inserted above");
        stream.rule = rule;
        *bytes -= stream.trim(now);
        stream
    }
}

impl HistoryBackend for MemoryHistory {
    fn publish(&self, publish: Publish<'_>) -> Result<(), HistoryError> {
        let now = Instant::now();
        let mut shard = self.shard(publish.topic);
        let stream = self.stream(&mut shard, publish.topic, publish.rule, now);
        stream.top += 1;
        stream.last_publish = now;
        let offset = stream.top;
        let publication = Publication {
            offset,
            event: publish.event.to_owned(),
            payload: publish.payload,
        };
        // Delivered under the lock: every loop gets this topic's
        // publications in offset order.
        if let Some(server) = self.server.get()
            && let Some(entry) = server.topic(publish.topic)
        {
            let mut broadcast = Broadcast::channel_at(
                publish.topic,
                &publication.event,
                publication.payload.clone(),
                &entry,
                (Arc::clone(&stream.epoch), offset),
            );
            if let Some((loop_index, conn)) = publish.exclude {
                broadcast = broadcast.excluding(loop_index, conn);
            }
            server.broadcast_local(broadcast);
        }
        let size = publication.wire_size();
        stream.kept.push_back(publication);
        stream.bytes += size;
        let freed = stream.trim(now);
        shard.bytes = shard.bytes + size - freed;
        shard.shed(publish.topic, self.bytes_per_shard);
        Ok(())
    }

    fn recover(&self, read: RecoveryRead) -> Option<Recovery> {
        read.reply.answered_now();
        let now = Instant::now();
        let mut shard = self.shard(&read.topic);
        let stream = self.stream(&mut shard, &read.topic, read.rule, now);
        Some(Recovery::decide(
            read.since.as_ref(),
            stream.position(),
            stream.oldest(),
            |since| stream.after(since),
        ))
    }

    fn latest(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<(Option<StreamPosition>, Vec<Publication>), HistoryError> {
        let now = Instant::now();
        let mut shard = self.shard(topic);
        let Shard { streams, bytes } = &mut *shard;
        let Some(stream) = streams.get_mut(topic) else {
            return Ok((None, Vec::new()));
        };
        *bytes -= stream.trim(now);
        let skip = stream.kept.len().saturating_sub(limit);
        let latest = stream.kept.iter().skip(skip).cloned().collect();
        Ok((Some(stream.position()), latest))
    }

    fn remove(&self, topic: &str) -> Result<bool, HistoryError> {
        let mut shard = self.shard(topic);
        let removed = shard.streams.remove(topic);
        if let Some(stream) = &removed {
            shard.bytes -= stream.bytes;
        }
        Ok(removed.is_some())
    }

    fn claim(&self, key: &str, ttl: Duration) -> Result<bool, HistoryError> {
        let mut keys = self
            .publish_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(keys.claim(key, ttl, Instant::now()))
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.publish_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expire(now);
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Shard { streams, bytes } = &mut *shard;
            streams.retain(|_, stream| {
                *bytes -= stream.trim(now);
                now.duration_since(stream.last_publish) < META_TTL
            });
            if streams.capacity() > 2 * streams.len() + 64 {
                streams.shrink_to_fit();
            }
        }
    }

    fn attach(&self, server: ServerHandle) {
        let _ = self.server.set(server);
    }
}
