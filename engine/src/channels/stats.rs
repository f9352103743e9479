//! Counters of the channels layer, shared by every loop.
//!
//! Joins, leaves and client messages are rare next to deliveries (which the
//! server's per-loop counters count), so these are shared atomics, updated
//! with [`add`](crate::metrics::add).

use crate::metrics::counters;

counters! {
    /// The live counters.
    live ChannelCounters {}
    /// A snapshot of the channels layer's counters.
    ///
    /// # Examples
    ///
    /// ```
    /// let stats = herald::channels::ChannelStats::default();
    /// assert_eq!(stats.joins, 0);
    /// ```
    snapshot ChannelStats;
    /// Channel joins accepted.
    joins: Counter "channel_joins_total",
    /// Channel joins refused: by the channel, for an unknown topic, or past
    /// the per-connection channel limit.
    joins_refused: Counter "channel_joins_refused_total",
    /// Channels ended: left, rejoined, crashed, or their connection closed.
    leaves: Counter "channel_leaves_total",
    /// Channel messages received from clients on joined topics.
    client_messages: Counter "channel_messages_total",
    /// Publications appended to a topic's history (with an offset).
    history_appends: Counter "history_appends_total",
    /// Joins that asked to recover from an earlier position.
    recoveries: Counter "history_recoveries_total",
    /// Recoveries that delivered every missed publication.
    recovered: Counter "history_recovered_total",
    /// Recoveries refused: the stream's epoch changed (its storage was
    /// lost, or it expired).
    recovery_failed_epoch: Counter "history_recovery_failed_epoch_total",
    /// Recoveries refused: more publications missed than one join
    /// recovers.
    recovery_failed_too_many: Counter "history_recovery_failed_too_many_total",
    /// Recoveries refused: missed publications already dropped from the
    /// history (its size or TTL), or an offset the stream never reached.
    recovery_failed_gone: Counter "history_recovery_failed_gone_total",
    /// Recoveries refused: the history store could not be read.
    recovery_failed_unavailable: Counter "history_recovery_failed_unavailable_total",
    /// Channels ended with `phx_error` because publications of their topic
    /// never reached this node or loop (a full mailbox, a broker outage):
    /// their clients join again and recover.
    gap_resyncs: Counter "history_gap_resyncs_total",
}

/// Adds one to a shared counter.
#[inline]
pub(crate) fn count(counter: &std::sync::atomic::AtomicU64) {
    crate::metrics::add(counter, 1);
}
