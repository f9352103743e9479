//! Counters: one mechanism for every layer, and the metric each counter
//! is exposed as, declared once, next to the counter.
//!
//! [`counters!`] declares a set of counters: a live struct of `AtomicU64`s
//! that the engine updates, a public snapshot struct with a field per
//! counter, and, for each counter, its Prometheus name, kind and help text
//! (the counter's doc comment), listed by the snapshot's `metrics()`.
//!
//! Two ways to update, one per kind of writer:
//! - [`bump`]: a counter written by one thread only (each loop has its
//!   own [`LoopStats`], merged when read): a relaxed load and store, not a
//!   locked read-modify-write, so the hot path pays a plain `mov`;
//! - [`add`]: a counter shared by threads (the channels layer's, the
//!   cluster bus's), with `fetch_add`.
//!
//! Readers on other threads see values that are at most a moment old.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// A count that only grows.
    Counter,
    /// A value that goes up and down.
    Gauge,
}

/// One metric of a snapshot: what a Prometheus exposition (or any other
/// monitoring system) needs to publish it.
///
/// # Examples
///
/// ```
/// let stats = herald::ServerStats::default();
/// let accepted = stats
///     .metrics()
///     .find(|metric| metric.name == "connections_accepted_total")
///     .unwrap();
/// assert_eq!(accepted.help, "TCP connections accepted.");
/// assert_eq!(accepted.value, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metric {
    /// The name, without a prefix (`herald_` in the standalone server).
    pub name: &'static str,
    /// One line saying what it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The value when the snapshot was taken.
    pub value: u64,
}

impl Metric {
    /// A metric of the application's own, to publish beside the engine's.
    pub const fn new(name: &'static str, help: &'static str, kind: MetricKind, value: u64) -> Self {
        Self {
            name,
            help,
            kind,
            value,
        }
    }
}

/// Declares a set of counters: the live struct, the snapshot, and the
/// metric of each counter (see the [module docs](self)).
macro_rules! counters {
    (
        $(#[$live_attr:meta])*
        live $live:ident { $( $(#[$extra_attr:meta])* $extra:ident: $extra_ty:ty, )* }
        $(#[$snapshot_attr:meta])*
        snapshot $snapshot:ident;
        $(
            $(#[doc = $doc:literal])*
            $name:ident: $kind:ident $metric:literal,
        )*
    ) => {
        $(#[$live_attr])*
        #[derive(Debug, Default)]
        pub(crate) struct $live {
            $( pub(crate) $name: ::std::sync::atomic::AtomicU64, )*
            $( $(#[$extra_attr])* pub(crate) $extra: $extra_ty, )*
        }

        $(#[$snapshot_attr])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct $snapshot {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl $live {
            /// Adds these counters' current values to `snapshot`.
            #[allow(dead_code)]
            pub(crate) fn add_to(&self, snapshot: &mut $snapshot) {
                $( snapshot.$name += self.$name.load(::std::sync::atomic::Ordering::Relaxed); )*
            }

            /// The counters' current values.
            #[allow(dead_code)]
            pub(crate) fn snapshot(&self) -> $snapshot {
                let mut snapshot = $snapshot::default();
                self.add_to(&mut snapshot);
                snapshot
            }
        }

        impl $snapshot {
            /// Every counter as a [`Metric`](crate::Metric): its name, kind,
            /// help text and value.
            pub fn metrics(&self) -> impl Iterator<Item = $crate::metrics::Metric> + use<> {
                [$(
                    $crate::metrics::Metric {
                        name: $metric,
                        help: concat!($($doc),*).trim_ascii(),
                        kind: $crate::metrics::MetricKind::$kind,
                        value: self.$name,
                    },
                )*]
                .into_iter()
            }
        }
    };
}

pub(crate) use counters;

counters! {
    /// The counters of one loop, written only by that loop's thread.
    live LoopStats {
        /// How long this loop's turns take.
        turns: TurnHistogram,
    }
    /// A snapshot of the server's counters, summed over its loops.
    ///
    /// # Examples
    ///
    /// ```
    /// let stats = herald::ServerStats::default();
    /// assert_eq!(stats.connections_accepted, 0);
    /// ```
    snapshot ServerStats;
    /// TCP connections accepted.
    connections_accepted: Counter "connections_accepted_total",
    /// Connections that completed the WebSocket handshake.
    connections_opened: Counter "connections_opened_total",
    /// Connections closed, for any reason, after they opened.
    connections_closed: Counter "connections_closed_total",
    /// Handshakes answered with an error status (4xx, 503) or that timed out.
    handshakes_refused: Counter "handshakes_refused_total",
    /// Connections refused at accept by a connection rate limit (429 for an
    /// address, 503 overall; counted in `handshakes_refused` too).
    connections_rate_limited: Counter "connections_rate_limited_total",
    /// Messages received from clients (text, binary, ping, pong, close).
    messages_received: Counter "messages_received_total",
    /// Client messages past the connection's message rate, not handled.
    messages_rate_limited: Counter "messages_rate_limited_total",
    /// Compressed client messages inflated (permessage-deflate).
    messages_inflated: Counter "messages_inflated_total",
    /// Broadcasts a loop delivered to its subscribers (one per loop reached).
    publishes_handled: Counter "broadcasts_handled_total",
    /// Messages queued for subscribers by broadcasts (one per message and
    /// subscriber, whether it travelled alone or in a turn's batch).
    published_deliveries: Counter "deliveries_total",
    /// Bytes handed to the kernel by `writev`.
    bytes_written: Counter "bytes_written_total",
    /// Connections closed because a frame broke RFC 6455.
    protocol_errors: Counter "protocol_errors_total",
    /// Connections closed by the slow-consumer policy.
    slow_consumer_closes: Counter "slow_consumer_closes_total",
    /// Messages dropped unsent: by `DropOldest`, or queued when a slow
    /// consumer was closed.
    frames_dropped: Counter "frames_dropped_total",
    /// Messages a subscriber that fell behind was never sent because a
    /// newer one of the same conflated topic or key replaced them in its
    /// queue.
    messages_conflated: Counter "messages_conflated_total",
    /// Times a loop over its share of the queue budget shed one of its
    /// largest queues (closed it, or dropped its oldest messages).
    queue_budget_sheds: Counter "queue_budget_sheds_total",
    /// Sends refused because the connection was already closing.
    sends_after_close: Counter "sends_after_close_total",
    /// Commands from other threads for connections that had gone.
    commands_for_closed_connections: Counter "commands_for_closed_connections_total",
    /// Connections closed for silence past the idle timeout.
    idle_timeouts: Counter "idle_timeouts_total",
    /// Panics caught in application callbacks (each closed its connection
    /// with 1011, or its channel).
    handler_panics: Counter "handler_panics_total",
    /// Times `accept` failed for lack of file descriptors or memory (the
    /// loop backs off and retries).
    accept_resource_errors: Counter "accept_resource_errors_total",
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

/// Adds `n` to a counter that several threads write.
#[inline]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// Sets a gauge.
#[inline]
#[allow(dead_code)]
pub(crate) fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Relaxed);
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
