//! One loop's subscribers per topic, owned by the loop.

use std::{hash::BuildHasherDefault, sync::Arc};

use ahash::{AHashMap, AHasher};
use indexmap::IndexMap;

use super::{ConnId, Subscription};
use crate::protocol::Encoding;

type Subscribers<T> = IndexMap<ConnId, T, BuildHasherDefault<AHasher>>;

/// A topic's subscribers on one loop.
#[derive(Debug)]
struct TopicSubscribers<T> {
    subscribers: Subscribers<T>,
    per_encoding: [u32; Encoding::COUNT],
    /// For a topic with history: the place in its stream of the last
    /// broadcast this loop delivered since it has had subscribers.
    stream: Option<StreamPlace>,
}

/// A place in a topic's stream: its epoch and an offset.
pub(crate) type StreamPlace = (Arc<str>, u64);

impl<T> Default for TopicSubscribers<T> {
    fn default() -> Self {
        Self {
            subscribers: IndexMap::default(),
            per_encoding: [0; Encoding::COUNT],
            stream: None,
        }
    }
}

/// What an insertion changed.
#[derive(Debug)]
pub(crate) struct Inserted<T> {
    /// The subscription the connection had before, if any.
    pub(crate) replaced: Option<T>,
    /// Whether the new subscription is the first of its encoding on this
    /// loop for the topic.
    pub(crate) first_of_encoding: bool,
    /// Whether the replaced subscription was the last of its encoding.
    pub(crate) last_of_old_encoding: bool,
}

/// Subscribers by topic, for one loop.
#[derive(Debug)]
pub(crate) struct LocalIndex<T> {
    topics: AHashMap<Arc<str>, TopicSubscribers<T>>,
}

impl<T> Default for LocalIndex<T> {
    fn default() -> Self {
        Self {
            topics: AHashMap::default(),
        }
    }
}

impl<T: Subscription> LocalIndex<T> {
    /// Adds (or replaces) `id`'s subscription to `topic`.
    pub(crate) fn insert(&mut self, topic: &str, id: ConnId, subscription: T) -> Inserted<T> {
        let entry = match self.topics.get_mut(topic) {
            Some(entry) => entry,
            None => self.topics.entry(Arc::from(topic)).or_default(),
        };
        let encoding = subscription.encoding().index();
        let replaced = entry.subscribers.insert(id, subscription);
        let mut last_of_old_encoding = false;
        if let Some(old) = &replaced {
            let old_encoding = old.encoding().index();
            entry.per_encoding[old_encoding] -= 1;
            last_of_old_encoding = entry.per_encoding[old_encoding] == 0;
        }
        entry.per_encoding[encoding] += 1;
        Inserted {
            replaced,
            first_of_encoding: entry.per_encoding[encoding] == 1,
            last_of_old_encoding,
        }
    }

    /// Removes `id`'s subscription to `topic`: the subscription and whether
    /// it was the last of its encoding on this loop.
    pub(crate) fn remove(&mut self, topic: &str, id: ConnId) -> Option<(T, bool)> {
        let entry = self.topics.get_mut(topic)?;
        let subscription = entry.subscribers.swap_remove(&id)?;
        let encoding = subscription.encoding().index();
        entry.per_encoding[encoding] -= 1;
        let last = entry.per_encoding[encoding] == 0;
        if entry.subscribers.is_empty() {
            self.topics.remove(topic);
        }
        Some((subscription, last))
    }

    /// The subscribers of `topic` on this loop, in a dense order.
    pub(crate) fn subscribers(&self, topic: &str) -> impl Iterator<Item = (ConnId, &T)> {
        self.topics
            .get(topic)
            .into_iter()
            .flat_map(|entry| entry.subscribers.iter().map(|(id, sub)| (*id, sub)))
    }

    /// The place of the last broadcast of `topic` delivered here since the
    /// topic has had subscribers on this loop.
    pub(crate) fn stream_place(&self, topic: &str) -> Option<&StreamPlace> {
        self.topics.get(topic)?.stream.as_ref()
    }

    /// Notes the place of a broadcast of `topic` delivered here (nothing
    /// without subscribers: the place is forgotten with the last one).
    pub(crate) fn set_stream_place(&mut self, topic: &str, place: StreamPlace) {
        if let Some(entry) = self.topics.get_mut(topic) {
            entry.stream = Some(place);
        }
    }

    /// `id`'s subscription to `topic` on this loop, if it has one.
    pub(crate) fn subscription(&self, topic: &str, id: ConnId) -> Option<&T> {
        self.topics.get(topic)?.subscribers.get(&id)
    }

    /// Whether `topic` has subscribers taking `encoding` on this loop.
    pub(crate) fn has_encoding(&self, topic: &str, encoding: Encoding) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|entry| entry.per_encoding[encoding.index()] > 0)
    }

    /// How many subscribers `topic` has on this loop.
    #[cfg(test)]
    pub(crate) fn len(&self, topic: &str) -> usize {
        self.topics
            .get(topic)
            .map_or(0, |entry| entry.subscribers.len())
    }
}
