//! Counters of the channels layer, shared by every loop.
//!
//! Joins, leaves and client messages are rare next to deliveries (which the
//! server's per-loop counters count), so these are plain shared atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! channel_counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The live counters.
        #[derive(Debug, Default)]
        pub(crate) struct ChannelCounters {
            $( pub(crate) $name: AtomicU64, )*
        }

        /// A snapshot of the channels layer's counters.
        ///
        /// # Examples
        ///
        /// ```
        /// let stats = herald::channels::ChannelStats::default();
        /// assert_eq!(stats.joins, 0);
        /// ```
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct ChannelStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl ChannelCounters {
            pub(crate) fn snapshot(&self) -> ChannelStats {
                ChannelStats { $( $name: self.$name.load(Relaxed), )* }
            }
        }
    };
}

channel_counters! {
    /// Joins the channel accepted.
    joins,
    /// Joins refused: by the channel, for an unknown topic, or past the
    /// per-connection channel limit.
    joins_refused,
    /// Channels ended: left, rejoined, crashed, or their connection closed.
    leaves,
    /// Messages from clients on joined topics.
    client_messages,
}

/// Adds one to a shared counter.
#[inline]
pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}
