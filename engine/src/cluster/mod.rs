//! The cluster bus: many herald nodes joined through an existing broker
//! (Redis pub/sub or NATS), never a protocol of our own.
//!
//! # How a broadcast crosses nodes
//!
//! A node subscribes on the broker only to the topics that have local
//! subscribers: the topic registry calls the bus when a topic gains its
//! first subscriber on this node or loses its last, and the bus thread
//! re-reads the registry and subscribes or unsubscribes. Bus traffic scales
//! with interest, not with the number of topics in the cluster.
//!
//! Every broadcast made on a node (from a channel, from an
//! [`EngineHandle`](crate::channels::EngineHandle), from the server's
//! publish API) is delivered to the local loops as before and also handed,
//! without blocking, to the bus thread, which publishes it in an
//! [`Envelope`] carrying the origin node's id. A node ignores envelopes
//! from itself, so nobody receives a message twice; `broadcast_from`'s
//! excluded sender lives on the origin node, where the exclusion applies as
//! usual. A receiving node encodes a channel message's frame once per
//! protocol its own subscribers speak, and fans it out like a local
//! broadcast.
//!
//! # Failure
//!
//! The bus runs on its own thread (a single-threaded tokio runtime), so a
//! slow or absent broker never stalls a loop: local traffic goes on. Hand-
//! offs beyond a bounded queue, and publishes made while the broker is
//! unreachable, are dropped and counted ([`ClusterStats`]) and logged once
//! per outage. The Redis bus reconnects with exponential backoff (100 ms to
//! 5 s) and subscribes again to every topic the registry holds; the NATS
//! client reconnects and resubscribes by itself. Both brokers deliver at
//! most once: a message published while a node is cut off never reaches it.

mod envelope;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redis", feature = "nats"))]
mod runtime;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use envelope::{Content, Envelope, EnvelopeError, NodeId, VERSION};
#[cfg(any(feature = "redis", feature = "nats"))]
pub(crate) use runtime::{Bus, BusReceiver, spawn};

/// Which broker joins this node to the others.
///
/// # Examples
///
/// ```
/// use herald::cluster::Broker;
///
/// assert_eq!(Broker::default(), Broker::Memory);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Broker {
    /// None: a single node, and no cost for the bus at all.
    #[default]
    Memory,
    /// Redis pub/sub, e.g. `redis://127.0.0.1:6379/`.
    #[cfg(feature = "redis")]
    Redis {
        /// The server's URL.
        url: String,
    },
    /// Core NATS, e.g. `nats://127.0.0.1:4222`.
    #[cfg(feature = "nats")]
    Nats {
        /// The server's URL.
        url: String,
    },
}

impl Broker {
    /// A short name for logs and metrics: `memory`, `redis` or `nats`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            #[cfg(feature = "redis")]
            Self::Redis { .. } => "redis",
            #[cfg(feature = "nats")]
            Self::Nats { .. } => "nats",
        }
    }
}

macro_rules! bus_counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The live counters, shared by the loops and the bus thread.
        #[derive(Debug, Default)]
        #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
        pub(crate) struct BusCounters {
            $( pub(crate) $name: AtomicU64, )*
        }

        /// A snapshot of the cluster bus's counters.
        ///
        /// # Examples
        ///
        /// ```
        /// let stats = herald::cluster::ClusterStats::default();
        /// assert_eq!(stats.publishes_dropped, 0);
        /// ```
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct ClusterStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
        impl BusCounters {
            pub(crate) fn snapshot(&self) -> ClusterStats {
                ClusterStats { $( $name: self.$name.load(Relaxed), )* }
            }
        }
    };
}

bus_counters! {
    /// 1 while connected to the broker, else 0.
    connected,
    /// Times the connection was re-established after a loss.
    reconnects,
    /// Envelopes published to the broker.
    publishes,
    /// Broadcasts that could not be published: the hand-off queue was full
    /// or the broker was unreachable.
    publishes_dropped,
    /// Envelopes received from other nodes and delivered locally.
    received,
    /// Envelopes of this node's own that came back, ignored.
    received_own,
    /// Envelopes that could not be decoded (counted and dropped).
    decode_errors,
    /// Topics subscribed on the broker now.
    subscriptions,
}

#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
impl BusCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn set(counter: &AtomicU64, value: u64) {
        counter.store(value, Relaxed);
    }
}
