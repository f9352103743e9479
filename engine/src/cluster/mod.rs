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
//! The bus attaches to a server from above ([`Cluster::attach`]): the event
//! loops see it only as a relay that they hand what this node publishes
//! to, and know nothing of brokers. Every broadcast made on a node (from a
//! channel, from an [`EngineHandle`](crate::channels::EngineHandle), from
//! the server's publish API) is delivered to the local loops as before and
//! also handed, without blocking, to the bus thread, which publishes it in
//! an [`Envelope`] carrying the origin node's id. A node ignores envelopes
//! from itself, so nobody receives a message twice; `broadcast_from`'s
//! excluded sender lives on the origin node, where the exclusion applies as
//! usual. A receiving node encodes a channel message's frame once per
//! protocol its own subscribers speak, and fans it out like a local
//! broadcast. A disconnect by name goes on a control channel that every
//! node listens to.
//!
//! # Failure
//!
//! The bus runs on its own thread (a single-threaded tokio runtime, started
//! in `runtime.rs`, the one place the cluster starts threads), so a
//! slow or absent broker never stalls a loop: local traffic goes on. Hand-
//! offs beyond a bounded queue, and publishes made while the broker is
//! unreachable, are dropped and counted ([`ClusterStats`]) and logged once
//! per outage. The Redis bus reconnects with exponential backoff (100 ms to
//! 5 s) and subscribes again to every topic the registry holds; the NATS
//! client reconnects and resubscribes by itself. Both brokers deliver at
//! most once: a message published while a node is cut off never reaches it.

mod envelope;
#[cfg(any(feature = "redis", feature = "nats"))]
pub(crate) mod history;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redis", feature = "nats"))]
mod runtime;

use std::sync::Arc;

pub use envelope::{Content, Envelope, EnvelopeError, NodeId, VERSION};

use crate::{
    channels::{
        HistoryStore,
        history::{DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_TOPICS},
    },
    metrics::counters,
    reactor::{Relay, ServerBuilder},
};

/// This node's link to the others: attach it to a server's builder, keep it
/// to read the bus's counters. `Clone + Send + Sync`.
///
/// With [`Broker::Memory`] it attaches nothing: a single node pays nothing
/// for the bus.
///
/// # Examples
///
/// ```no_run
/// use herald::{Accept, Handler, Reject, Request, Server, cluster::{Broker, Cluster}};
///
/// struct Anyone;
///
/// impl Handler for Anyone {
///     type State = ();
///
///     fn on_connect(&self, _: &Request) -> Result<Accept<()>, Reject> {
///         Ok(Accept::new(()))
///     }
/// }
///
/// let cluster = Cluster::new(Broker::Redis { url: "redis://127.0.0.1:6379/".into() });
/// let builder = cluster.attach(Server::builder().bind("0.0.0.0:4000".parse()?));
/// let server = builder.start(Anyone)?;
/// // Reaches the subscribers of every node.
/// server.handle().publish("ticker", herald::wire::text_frame("42"));
/// println!("published to other nodes: {}", cluster.stats().unwrap().publishes);
/// server.join();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Cluster {
    broker: Broker,
    /// The bus, as the server sees it; none for a single node.
    relay: Option<Arc<dyn Relay>>,
    counters: Option<Arc<BusCounters>>,
    #[cfg(any(feature = "redis", feature = "nats"))]
    bus: Option<Arc<runtime::Bus>>,
}

impl Cluster {
    /// A link through `broker`; nothing connects until a server it is
    /// attached to starts.
    pub fn new(broker: Broker) -> Self {
        match broker {
            Broker::Memory => Self {
                broker,
                relay: None,
                counters: None,
                #[cfg(any(feature = "redis", feature = "nats"))]
                bus: None,
            },
            #[cfg(any(feature = "redis", feature = "nats"))]
            #[allow(unreachable_patterns)]
            _ => {
                let bus = Arc::new(runtime::Bus::new(broker.clone()));
                let relay: Arc<dyn Relay> = bus.clone();
                Self {
                    broker,
                    counters: Some(bus.counters()),
                    relay: Some(relay),
                    bus: Some(bus),
                }
            }
        }
    }

    /// `builder`, joined to the other nodes: what its server broadcasts
    /// reaches them, and what they broadcast reaches its subscribers. A
    /// `Cluster` serves one server.
    pub fn attach(&self, builder: ServerBuilder) -> ServerBuilder {
        match &self.relay {
            Some(relay) => builder.relay(Arc::clone(relay)),
            None => builder,
        }
    }

    /// The history store every node of this cluster shares, for
    /// [`Channels::history_store`](crate::channels::Channels::history_store):
    /// in this process for [`Broker::Memory`] (a single node), Redis
    /// streams for [`Broker::Redis`] (offsets assigned by one Lua script
    /// per publication, see the README's "History and recovery").
    ///
    /// `None` for NATS: core NATS stores nothing, and JetStream's sequence
    /// numbers are per stream, not dense per subject, so they cannot be a
    /// topic's offsets without a second store whose order would not be
    /// the one the subscribers receive.
    pub fn history_store(&self) -> Option<HistoryStore> {
        match &self.broker {
            Broker::Memory => Some(HistoryStore::memory(
                DEFAULT_HISTORY_TOPICS,
                DEFAULT_HISTORY_BYTES,
            )),
            #[cfg(feature = "redis")]
            Broker::Redis { url } => {
                let bus = Arc::clone(self.bus.as_ref()?);
                let backend = history::RedisHistory::new(bus, url);
                Some(HistoryStore {
                    backend: Arc::new(backend),
                })
            }
            #[cfg(feature = "nats")]
            Broker::Nats { .. } => None,
        }
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The bus's counters; `None` for a single node.
    pub fn stats(&self) -> Option<ClusterStats> {
        self.counters.as_deref().map(BusCounters::snapshot)
    }
}

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

counters! {
    /// The live counters, shared by the loops and the bus thread.
    live BusCounters {}
    /// A snapshot of the cluster bus's counters.
    ///
    /// # Examples
    ///
    /// ```
    /// let stats = herald::cluster::ClusterStats::default();
    /// assert_eq!(stats.publishes_dropped, 0);
    /// ```
    snapshot ClusterStats;
    /// 1 while connected to the cluster broker, else 0.
    connected: Gauge "bus_connected",
    /// Broker connections re-established after a loss.
    reconnects: Counter "bus_reconnects_total",
    /// Broadcasts published to the broker for other nodes.
    publishes: Counter "bus_publishes_total",
    /// Broadcasts not published: the hand-off queue was full or the broker
    /// was unreachable.
    publishes_dropped: Counter "bus_publishes_dropped_total",
    /// Envelopes (broadcasts, disconnects) received from other nodes.
    received: Counter "bus_received_total",
    /// Envelopes of this node's own that came back, ignored.
    received_own: Counter "bus_received_own_total",
    /// Broker messages that were not valid envelopes (dropped).
    decode_errors: Counter "bus_decode_errors_total",
    /// Topics subscribed on the broker now.
    subscriptions: Gauge "bus_subscriptions",
}
