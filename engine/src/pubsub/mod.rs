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
pub(crate) use registry::{TopicEntry, TopicRegistry};

use crate::protocol::{Encoding, WireProtocol};

/// What the local index needs to know about a subscription.
pub(crate) trait Subscription {
    /// The wire protocol the subscriber speaks, and whether it takes it
    /// compressed.
    fn encoding(&self) -> Encoding;
}

/// A connection's address on its loop: its slab key, and the generation
/// that tells it apart from earlier and later connections in the same slot
/// (slab keys are reused). Packed in one `u64`, key in the low half, so that
/// it hashes as one word and doubles as the connection's poll token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(u64);

impl ConnId {
    /// The id of the connection in slot `key` (below 2^32) with
    /// `generation`.
    pub(crate) fn new(key: usize, generation: u32) -> Self {
        debug_assert!(u32::try_from(key).is_ok(), "slab key {key} over 32 bits");
        Self((key as u64 & 0xFFFF_FFFF) | (u64::from(generation) << 32))
    }

    /// The slab key.
    pub(crate) fn key(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }

    /// The generation.
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The packed form, for a poll token.
    pub(crate) fn to_bits(self) -> u64 {
        self.0
    }

    /// An id from its packed form.
    pub(crate) fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
}

/// How a broadcast reaches one subscription of a connection to a topic.
///
/// Plain pub/sub needs only `Plain`; the channels layer above names what
/// its subscriptions are, and the reactor asks the layer's handler how to
/// deliver the other kinds (once per run of equal kinds, not per
/// subscriber).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscriptionKind {
    /// The frame encoded for the subscriber's protocol, as published.
    Plain,
    /// A client's join of a channel topic, routed to `route` of the
    /// endpoint mounted as `endpoint`: the frame, unless the channel
    /// intercepts the event (then a callback).
    Join {
        /// The endpoint's index.
        endpoint: u16,
        /// The route's index in the endpoint.
        route: u16,
        /// Whether channels of the connection also subscribe to the topic
        /// on the server side: then every broadcast is a callback, which
        /// delivers to each of them and to the client.
        with_server: bool,
        /// Whether the join is recovering its topic's history: then every
        /// broadcast is a callback, held or dropped until the client has
        /// what it missed.
        recovering: bool,
    },
    /// Channels' server-side subscriptions, without the client's join: a
    /// callback, never a frame.
    Server,
}

/// One connection's subscription to one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sub {
    /// The protocol whose frame it gets.
    pub(crate) protocol: WireProtocol,
    /// How a broadcast reaches it.
    pub(crate) kind: SubscriptionKind,
    /// Whether it takes frames compressed (its connection negotiated
    /// permessage-deflate); set by the reactor as it subscribes.
    pub(crate) deflate: bool,
}

impl Sub {
    /// A plain pub/sub subscription receiving `protocol`'s frame.
    pub(crate) fn plain(protocol: WireProtocol) -> Self {
        Self {
            protocol,
            kind: SubscriptionKind::Plain,
            deflate: false,
        }
    }

    /// Channels' server-side subscriptions without a client join: no
    /// frame, so no protocol's frame needs encoding for it.
    pub(crate) fn server() -> Self {
        Self {
            protocol: WireProtocol::Raw,
            kind: SubscriptionKind::Server,
            deflate: false,
        }
    }
}

impl Sub {
    /// What it gets: its protocol's frame, compressed or not.
    pub(crate) fn encoding(&self) -> Encoding {
        Encoding {
            protocol: self.protocol,
            deflate: self.deflate,
        }
    }
}

impl Subscription for Sub {
    fn encoding(&self) -> Encoding {
        Self::encoding(self)
    }
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
    /// then, unless the encoding changed).
    pub(crate) fn subscribe(&mut self, topic: &str, id: ConnId, subscription: T) -> Option<T> {
        let encoding = subscription.encoding();
        let outcome = self.local.insert(topic, id, subscription);
        if let Some(old) = &outcome.replaced {
            if old.encoding() == encoding {
                return outcome.replaced;
            }
            self.registry.unsubscribe(
                topic,
                self.loop_index,
                old.encoding(),
                outcome.last_of_old_encoding,
            );
        }
        self.registry
            .subscribe(topic, self.loop_index, encoding, outcome.first_of_encoding);
        outcome.replaced
    }

    /// Unsubscribes `id` from `topic`, returning its subscription.
    pub(crate) fn unsubscribe(&mut self, topic: &str, id: ConnId) -> Option<T> {
        let (subscription, last_of_encoding) = self.local.remove(topic, id)?;
        self.registry.unsubscribe(
            topic,
            self.loop_index,
            subscription.encoding(),
            last_of_encoding,
        );
        Some(subscription)
    }

    /// The subscribers of `topic` on this loop.
    pub(crate) fn local(&self) -> &LocalIndex<T> {
        &self.local
    }

    /// The subscribers of each topic on this loop, to note stream places
    /// (subscriptions change only through this type's methods).
    pub(crate) fn local_mut(&mut self) -> &mut LocalIndex<T> {
        &mut self.local
    }

    /// The shared registry.
    pub(crate) fn registry(&self) -> &TopicRegistry {
        &self.registry
    }
}

#[cfg(test)]
mod tests;
