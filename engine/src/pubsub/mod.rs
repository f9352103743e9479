//! The topic index: who is subscribed to what, on which loop.
//!
//! Two levels, so that the broadcast path never waits on a lock:
//!
//! - [`TopicRegistry`], shared by every thread: for each topic with
//!   subscribers, which loops have subscribers of each wire protocol, and
//!   how many subscribers there are in all. A lock-free hash map
//!   (`papaya`): a broadcaster reads it without blocking, and a loop updates
//!   a topic's entry with one compare-and-swap when it gains its first or
//!   loses its last subscriber, so a broadcast is sent only to the loops
//!   that have subscribers, and encoded only for the protocols they speak.
//! - `LocalIndex`, owned by one loop: for each topic, its subscribers on
//!   that loop, in a dense map (`indexmap`) that is iterated on every
//!   broadcast and supports O(1) removal.
//!
//! `LoopTopics` keeps the two in step for one loop.

mod local;
mod registry;

use std::sync::Arc;

pub(crate) use local::LocalIndex;
pub(crate) use registry::InterestHook;
pub use registry::{MAX_LOOPS, TopicEntry, TopicRegistry};

use crate::protocol::WireProtocol;

/// What the local index needs to know about a subscription.
pub(crate) trait Subscription {
    /// The wire protocol the subscriber speaks.
    fn protocol(&self) -> WireProtocol;
}

/// Identifies a connection on its loop: slab key and generation.
pub(crate) type ConnId = u64;

/// Packs a connection's slab key and generation into a [`ConnId`].
pub(crate) fn conn_id(key: usize, generation: u32) -> ConnId {
    (key as u64) | (u64::from(generation) << 32)
}

/// One loop's subscriptions, mirrored into the shared registry.
#[derive(Debug)]
pub(crate) struct LoopTopics<T> {
    loop_index: usize,
    local: LocalIndex<T>,
    registry: Arc<TopicRegistry>,
}

impl<T: Subscription> LoopTopics<T> {
    pub(crate) fn new(loop_index: usize, registry: Arc<TopicRegistry>) -> Self {
        Self {
            loop_index,
            local: LocalIndex::default(),
            registry,
        }
    }

    /// Subscribes `id` to `topic`. Returns the subscription it replaced, if
    /// the connection was already subscribed (the registry is unchanged
    /// then, unless the protocol changed).
    pub(crate) fn subscribe(&mut self, topic: &str, id: ConnId, subscription: T) -> Option<T> {
        let protocol = subscription.protocol();
        let outcome = self.local.insert(topic, id, subscription);
        if let Some(old) = &outcome.replaced {
            if old.protocol() == protocol {
                return outcome.replaced;
            }
            self.registry.unsubscribe(
                topic,
                self.loop_index,
                old.protocol(),
                outcome.last_of_old_protocol,
            );
        }
        self.registry
            .subscribe(topic, self.loop_index, protocol, outcome.first_of_protocol);
        outcome.replaced
    }

    /// Unsubscribes `id` from `topic`, returning its subscription.
    pub(crate) fn unsubscribe(&mut self, topic: &str, id: ConnId) -> Option<T> {
        let (subscription, last_of_protocol) = self.local.remove(topic, id)?;
        self.registry.unsubscribe(
            topic,
            self.loop_index,
            subscription.protocol(),
            last_of_protocol,
        );
        Some(subscription)
    }

    /// The subscribers of `topic` on this loop.
    pub(crate) fn local(&self) -> &LocalIndex<T> {
        &self.local
    }

    /// The shared registry.
    pub(crate) fn registry(&self) -> &TopicRegistry {
        &self.registry
    }
}

#[cfg(test)]
mod tests;
