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
