//! The shared, lock-free part of the topic index.

use crate::{
    config::MAX_LOOPS,
    protocol::{Encoding, WireProtocol},
};

/// What the registry knows about one topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TopicEntry {
    /// For each encoding (a wire protocol, plain or compressed), a bit per
    /// loop that has subscribers taking it.
    pub(crate) loops: [u64; Encoding::COUNT],
    /// Subscribers on all loops.
    pub(crate) subscribers: u64,
}

impl TopicEntry {
    /// The loops with any subscriber.
    pub(crate) fn all_loops(&self) -> u64 {
        self.loops.iter().fold(0, |all, loops| all | loops)
    }

    /// An entry as if some loop had subscribers speaking `protocol`: what
    /// an encoder is given to produce that protocol's frame.
    pub(crate) fn with_protocol(protocol: WireProtocol) -> Self {
        let mut entry = Self::default();
        entry.loops[Encoding::plain(protocol).index()] = 1;
        entry
    }

    /// Whether any loop has subscribers speaking `protocol`, compressed or
    /// not (the frame is encoded for both).
    pub(crate) fn has_protocol(&self, protocol: WireProtocol) -> bool {
        self.has_encoding(Encoding::plain(protocol))
            || self.has_encoding(Encoding::deflated(protocol))
    }

    /// Whether any loop has subscribers taking `encoding`.
    pub(crate) fn has_encoding(&self, encoding: Encoding) -> bool {
        self.loops[encoding.index()] != 0
    }
}

/// Which loops have subscribers for each topic; shared by every thread.
///
/// Reads never block. Writes are per-topic compare-and-swap loops, done by a
/// loop only when it gains its first or loses its last subscriber of a
/// protocol on a topic, plus the subscriber count.
pub(crate) struct TopicRegistry {
    topics: papaya::HashMap<Box<str>, TopicEntry, ahash::RandomState>,
    /// Told the topic whenever one gains its first subscriber on this node
    /// or loses its last (the cluster bus subscribes on the broker only to
    /// topics with local interest). May be called for the same change more
    /// than once, and from any loop thread: the listener re-reads the
    /// registry rather than trusting the order of calls.
    on_interest: Option<InterestHook>,
}

/// What [`TopicRegistry`] calls when a topic's local interest changes.
pub(crate) type InterestHook = Box<dyn Fn(&str) + Send + Sync>;

impl Default for TopicRegistry {
    fn default() -> Self {
        Self::with_interest_hook(None)
    }
}

impl TopicRegistry {
    /// A registry that calls `hook` when a topic gains its first subscriber
    /// or loses its last.
    pub(crate) fn with_interest_hook(on_interest: Option<InterestHook>) -> Self {
        Self {
            // Blocking resizes: the writer that grows the table migrates it
            // all at once. With papaya's default incremental resizing, a
            // table updated mostly through `compute` (as this one is) was
            // measured leaving lookups at ~500 ns instead of ~60 ns, and
            // lookups are what every broadcast does; joins are rarer and can
            // pay for the migration.
            topics: papaya::HashMap::builder()
                .hasher(ahash::RandomState::new())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            on_interest,
        }
    }

    fn interest_changed(&self, topic: &str) {
        if let Some(hook) = &self.on_interest {
            hook(topic);
        }
    }

    /// Every topic with subscribers on this node.
    pub(crate) fn topics(&self) -> Vec<Box<str>> {
        self.topics.pin().keys().cloned().collect()
    }

    /// Every topic with subscribers on this node, with how many.
    pub(crate) fn counts(&self) -> Vec<(Box<str>, u64)> {
        self.topics
            .pin()
            .iter()
            .map(|(topic, entry)| (topic.clone(), entry.subscribers))
            .collect()
    }
}

impl std::fmt::Debug for TopicRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicRegistry")
            .field("topics", &self.topics.len())
            .finish()
    }
}

impl TopicRegistry {
    /// The entry for `topic`, if it has subscribers.
    pub(crate) fn lookup(&self, topic: &str) -> Option<TopicEntry> {
        self.topics.pin().get(topic).copied()
    }

    /// Subscribers of `topic` on all loops.
    pub(crate) fn subscriber_count(&self, topic: &str) -> u64 {
        self.lookup(topic).map_or(0, |entry| entry.subscribers)
    }

    /// Topics with subscribers.
    #[cfg(test)]
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Counts a new subscriber on `loop_index`; sets the loop's bit for
    /// `encoding` if it is the loop's first of that encoding.
    pub(crate) fn subscribe(
        &self,
        topic: &str,
        loop_index: usize,
        encoding: Encoding,
        first_on_loop: bool,
    ) {
        let bit = loop_bit(loop_index);
        let topics = self.topics.pin();
        let outcome = topics.compute(Box::from(topic), |current| {
            let mut entry = current.map(|(_, entry)| *entry).unwrap_or_default();
            entry.subscribers += 1;
            if first_on_loop {
                entry.loops[encoding.index()] |= bit;
            }
            papaya::Operation::<_, ()>::Insert(entry)
        });
        if matches!(outcome, papaya::Compute::Inserted(..)) {
            self.interest_changed(topic);
        }
    }

    /// Counts a subscriber gone from `loop_index`; clears the loop's bit if
    /// it was the loop's last of `encoding`, and forgets the topic when no
    /// subscriber is left anywhere.
    pub(crate) fn unsubscribe(
        &self,
        topic: &str,
        loop_index: usize,
        encoding: Encoding,
        last_on_loop: bool,
    ) {
        let bit = loop_bit(loop_index);
        let topics = self.topics.pin();
        let outcome = topics.compute(Box::from(topic), |current| {
            let Some((_, entry)) = current else {
                return papaya::Operation::Abort(());
            };
            let mut entry = *entry;
            entry.subscribers = entry.subscribers.saturating_sub(1);
            if last_on_loop {
                entry.loops[encoding.index()] &= !bit;
            }
            if entry.subscribers == 0 {
                papaya::Operation::Remove
            } else {
                papaya::Operation::Insert(entry)
            }
        });
        if matches!(outcome, papaya::Compute::Removed(..)) {
            self.interest_changed(topic);
        }
    }
}

fn loop_bit(loop_index: usize) -> u64 {
    debug_assert!(loop_index < MAX_LOOPS);
    1 << (loop_index % MAX_LOOPS)
}
