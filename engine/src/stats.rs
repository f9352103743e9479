//! Counters: one set per loop, written only by that loop's thread, merged
//! when read.
//!
//! The owning thread updates a counter with a relaxed load and store, not a
//! locked read-modify-write: with a single writer nothing is lost, and the
//! hot path pays a plain `mov`. Readers on other threads see values that are
//! at most a moment old.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The counters of one loop.
        #[derive(Debug, Default)]
        pub(crate) struct LoopStats {
            $( pub(crate) $name: AtomicU64, )*
            /// How long this loop's turns take.
            pub(crate) turns: TurnHistogram,
        }

        /// A snapshot of the server's counters, summed over its loops.
        ///
        /// # Examples
        ///
        /// ```
        /// let stats = herald::ServerStats::default();
        /// assert_eq!(stats.connections_accepted, 0);
        /// ```
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct ServerStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl ServerStats {
            pub(crate) fn add(&mut self, loop_stats: &LoopStats) {
                $( self.$name += loop_stats.$name.load(Relaxed); )*
            }
        }
    };
}

counters! {
    /// TCP connections accepted.
    connections_accepted,
    /// Connections that completed the WebSocket handshake.
    connections_opened,
    /// Connections closed, for any reason, after they opened.
    connections_closed,
    /// Handshakes answered with an error status (4xx, 503) or that timed out.
    handshakes_refused,
    /// Messages received from clients (text, binary, ping, pong, close).
    messages_received,
    /// Publishes (broadcasts) this loop delivered to its subscribers.
    publishes_handled,
    /// Frames queued for subscribers by publishes (one per subscriber).
    published_deliveries,
    /// Bytes handed to the kernel by `writev`.
    bytes_written,
    /// Connections closed because a frame broke RFC 6455.
    protocol_errors,
    /// Connections closed by the slow-consumer policy.
    slow_consumer_closes,
    /// Frames dropped unsent: by `DropOldest`, or queued when a slow
    /// consumer was closed.
    frames_dropped,
    /// Sends refused because the connection was already closing.
    sends_after_close,
    /// Commands from other threads for connections that had gone.
    commands_for_closed_connections,
    /// Connections closed for silence past the idle timeout.
    idle_timeouts,
    /// Panics caught in application callbacks (each closed its connection
    /// with 1011).
    handler_panics,
    /// Times `accept` failed for lack of file descriptors or memory (the
    /// loop backs off and retries).
    accept_resource_errors,
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

/// Upper bounds, in microseconds, of the buckets of [`TurnTimes`]; a last
/// bucket holds the longer turns.
pub const TURN_BUCKETS_MICROS: [u64; 10] =
    [10, 50, 100, 250, 500, 1_000, 5_000, 10_000, 50_000, 100_000];

const TURN_BUCKET_COUNT: usize = TURN_BUCKETS_MICROS.len() + 1;

/// How long one loop's turns took, from waking up to polling again; written
/// only by that loop's thread.
#[derive(Debug, Default)]
pub(crate) struct TurnHistogram {
    counts: [AtomicU64; TURN_BUCKET_COUNT],
    sum_nanos: AtomicU64,
}

impl TurnHistogram {
    /// Records one turn.
    #[inline]
    pub(crate) fn record(&self, elapsed: std::time::Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = TURN_BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        bump(&self.counts[bucket], 1);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.sum_nanos, nanos);
    }
}

/// A snapshot of loop turn times, summed over the loops: a long turn delays
/// every connection of its loop, so this is the first place to look when
/// latency grows.
///
/// # Examples
///
/// ```
/// use herald::{TurnTimes, TURN_BUCKETS_MICROS};
///
/// let times = TurnTimes::default();
/// assert_eq!(times.counts.len(), TURN_BUCKETS_MICROS.len() + 1);
/// assert_eq!(times.total(), 0);
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TurnTimes {
    /// Turns per bucket (not cumulative): bucket `i` holds the turns of at
    /// most `TURN_BUCKETS_MICROS[i]` µs that did not fit bucket `i - 1`;
    /// the last one holds the rest.
    pub counts: [u64; TURN_BUCKET_COUNT],
    /// The time all turns took, in nanoseconds.
    pub sum_nanos: u64,
}

impl TurnTimes {
    /// Turns recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(crate) fn add(&mut self, histogram: &TurnHistogram) {
        for (count, bucket) in self.counts.iter_mut().zip(&histogram.counts) {
            *count += bucket.load(Relaxed);
        }
        self.sum_nanos += histogram.sum_nanos.load(Relaxed);
    }
}
