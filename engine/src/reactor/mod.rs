//! The reactor: the only code that touches `mio`, sockets, threads and the
//! clock.
//!
//! # Threads
//!
//! A server runs one event loop per core, each on its own thread (pinned to
//! a core unless told otherwise). Each loop owns a `SO_REUSEPORT` listener,
//! its connections in a slab, a timer wheel, a pool of read buffers and a
//! mailbox; no socket is ever touched by two threads. Other threads reach a
//! loop only through its mailbox ([`ConnHandle`], [`ServerHandle`]).
//!
//! ```text
//!              clients
//!   ┌─────────────┼──────────────┐
//!   ▼ (kernel spreads accepts)   ▼
//! ┌──────────────────┐   ┌──────────────────┐
//! │ loop 0 (core 0)  │   │ loop 1 (core 1)  │   ...
//! │ listener         │   │ listener         │
//! │ slab of conns    │   │ slab of conns    │
//! │ timer wheel      │   │ timer wheel      │
//! │ mailbox ◄────────┼───┼── ConnHandle / ServerHandle (any thread)
//! └──────────────────┘   └──────────────────┘
//! ```
//!
//! # A loop turn
//!
//! 1. **Poll** for readiness, with a timeout up to the next timer tick
//!    (100 ms) when any deadline is pending, zero when reads were cut short
//!    last turn.
//! 2. **Events**, in the order the kernel reports them: accept every pending
//!    connection (backing off on `EMFILE`/`ENFILE`); drain the mailbox;
//!    read each readable socket until `WouldBlock` or a per-turn budget
//!    (the rest is read next turn, so one fast sender cannot starve the
//!    others), decoding and dispatching to the handler as bytes arrive.
//!    Handlers only queue frames; nothing is written yet.
//! 3. **Timers**: advance the wheel to now; handshakes that took too long
//!    are dropped, silent connections are pinged or closed, close
//!    handshakes that stalled are cut off.
//! 4. **Flush**: every connection that had frames queued this turn (or
//!    became writable) is written once, with `writev`, until its queue is
//!    empty or the socket would block. Connections whose close is complete
//!    are dropped here, after their last bytes went out.
//!
//! Ordering rules: a frame queued in phase 2 or 3 leaves in phase 4 of the
//! same turn; a connection is removed only in phases 2-4 and never while a
//! handler for it runs; a stale event or command (for a slot that was
//! freed and reused) is recognised by the generation in its token.

mod listener;
mod mailbox;
mod sys;
mod worker;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

pub use mailbox::ConnHandle;
pub(crate) use mailbox::{Command, Mailbox};

use bytes::Bytes;

use crate::{
    Handler,
    broadcast::Broadcast,
    config::{ServerConfig, SlowConsumerPolicy},
    conn::Outbox,
    protocol::WireProtocol,
    pubsub::{LoopTopics, Subscription, TopicEntry, TopicRegistry},
    stats::{LoopStats, ServerStats},
    wire::DecoderConfig,
};

/// What a loop shares with the callbacks it runs (through
/// [`Conn`](crate::Conn)).
#[derive(Debug)]
pub(crate) struct LoopContext {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) stats: Arc<LoopStats>,
    pub(crate) mailbox: Arc<Mailbox>,
    /// Connections with frames queued this turn, to flush at its end.
    pub(crate) dirty: Vec<usize>,
    /// This loop's position among the server's loops.
    pub(crate) loop_index: usize,
    /// This loop's topic subscriptions.
    pub(crate) topics: LoopTopics<Sub>,
    /// Every loop's mailbox, this one's included, by loop index.
    pub(crate) peers: Arc<[Arc<Mailbox>]>,
    /// Publishes made by the callback that is running, delivered when it
    /// returns (a callback cannot reach the other connections' queues).
    pub(crate) publishes: Vec<Arc<Broadcast>>,
    /// The cluster bus, if this node has a broker.
    pub(crate) bus: Option<Arc<Bus>>,
}

/// The cluster bus handle, or a type with no values when no broker is
/// compiled in.
#[cfg(any(feature = "redis", feature = "nats"))]
pub(crate) use crate::cluster::Bus;
#[cfg(not(any(feature = "redis", feature = "nats")))]
pub(crate) use no_bus::Bus;

#[cfg(not(any(feature = "redis", feature = "nats")))]
mod no_bus {
    /// No broker is compiled in: there is never a bus.
    #[derive(Debug)]
    pub(crate) enum Bus {}

    impl Bus {
        pub(crate) fn forward(&self, _: &crate::Broadcast) {
            match *self {}
        }

        pub(crate) fn stop(&self) {
            match *self {}
        }

        pub(crate) fn stats(&self) -> crate::cluster::ClusterStats {
            match *self {}
        }

        pub(crate) fn interest_hook(&self) -> crate::pubsub::InterestHook {
            match *self {}
        }
    }
}

/// A connection's subscription to a topic: the protocol whose frame it
/// gets, and a tag the handler gives it meaning with (see
/// [`Handler::delivery`](crate::Handler::delivery)); 0 for plain ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sub {
    pub(crate) protocol: WireProtocol,
    pub(crate) tag: u32,
}

impl Subscription for Sub {
    fn protocol(&self) -> WireProtocol {
        self.protocol
    }
}

/// Posts `broadcast` to every loop, other than `skip`, that has subscribers
/// of its topic. Returns how many loops it was posted to.
pub(crate) fn route_publish(
    registry: &TopicRegistry,
    peers: &[Arc<Mailbox>],
    broadcast: &Arc<Broadcast>,
    skip: Option<usize>,
) -> usize {
    let Some(entry) = registry.lookup(broadcast.topic()) else {
        return 0;
    };
    let mut loops = entry.all_loops();
    let mut posted = 0;
    while loops != 0 {
        let index = loops.trailing_zeros() as usize;
        loops &= loops - 1;
        if Some(index) == skip {
            continue;
        }
        if let Some(mailbox) = peers.get(index) {
            // A loop that has stopped has no subscribers left to reach.
            if mailbox
                .post(Command::Publish(Arc::clone(broadcast)))
                .is_ok()
            {
                posted += 1;
            }
        }
    }
    posted
}

impl LoopContext {
    /// Puts a connection on this turn's flush list, once.
    #[inline]
    pub(crate) fn mark_dirty(&mut self, key: usize, outbox: &mut Outbox) {
        outbox.mark_dirty(key, &mut self.dirty);
    }

    pub(crate) fn handle_for(&self, key: usize, generation: u32) -> ConnHandle {
        ConnHandle {
            mailbox: Arc::clone(&self.mailbox),
            loop_index: self.loop_index,
            key,
            generation,
        }
    }
}

/// Configures and starts a [`Server`].
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use herald::{Server, SlowConsumerPolicy};
/// # use herald::{Accept, Handler, Reject, Request};
/// # struct App;
/// # impl Handler for App {
/// #     type State = ();
/// #     fn on_connect(&self, _: &Request) -> Result<Accept<()>, Reject> { Ok(Accept::new(())) }
/// # }
///
/// let server = Server::builder()
///     .bind("0.0.0.0:4000".parse()?)
///     .loops(4)
///     .endpoint("/socket/websocket")
///     .ping_interval(Duration::from_secs(25))
///     .slow_consumer(SlowConsumerPolicy::DropOldest)
///     .start(App)?;
/// println!("listening on {}", server.local_addr());
/// server.join();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct ServerBuilder {
    config: ServerConfig,
}

macro_rules! setters {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty ),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl ServerBuilder {
    setters! {
        /// Where to listen (default `127.0.0.1:9001`; port 0 picks a free one).
        addr: SocketAddr,
        /// How many event loops (default: the available cores; at most 64).
        loops: usize,
        /// Whether to pin each loop to a core (default `true`).
        pin_cores: bool,
        /// Connections past which new ones get 503 (default 1,000,000).
        max_connections: usize,
        /// The largest request head (default 8 KiB; larger gets 431).
        max_head_bytes: usize,
        /// Time allowed for the request head (default 10 s).
        handshake_timeout: Duration,
        /// How often to ping each connection (default 30 s).
        ping_interval: Duration,
        /// Silence after which a connection is closed (default 60 s).
        idle_timeout: Duration,
        /// How long to wait for the peer's side of a close (default 5 s).
        close_timeout: Duration,
        /// Limits on client frames and messages (default 1 MiB each).
        decoder: DecoderConfig,
        /// Outbound bytes a connection may have queued (default 4 MiB).
        max_queued_bytes: usize,
        /// What to do past that limit (default: close with 1013).
        slow_consumer: SlowConsumerPolicy,
        /// How long a graceful shutdown waits for clients (default 5 s).
        shutdown_timeout: Duration,
        /// Bytes per `recv` (default 16 KiB).
        read_chunk: usize,
        /// The cores the loops are pinned to, in loop order (default: the
        /// first cores listed, one per loop).
        core_ids: Vec<usize>,
        /// The broker joining this node to others (default
        /// [`Broker::Memory`](crate::cluster::Broker::Memory): none).
        broker: crate::cluster::Broker,
    }

    /// Where to listen; same as [`addr`](Self::addr).
    pub fn bind(self, addr: SocketAddr) -> Self {
        self.addr(addr)
    }

    /// Serves WebSocket upgrades at `path` (exact match, no query). With
    /// no endpoint declared, every path is served; once one is, other paths
    /// get 404.
    pub fn endpoint(mut self, path: impl Into<String>) -> Self {
        self.config.endpoints.push(path.into());
        self
    }

    /// Serves `body` with `content_type` to a plain `GET` of `path` (not
    /// an upgrade), for a demo page or a client script.
    pub fn static_file(
        mut self,
        path: impl Into<String>,
        content_type: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Self {
        self.config.static_files.push(crate::config::StaticFile {
            path: path.into(),
            content_type: content_type.into(),
            body: body.into(),
        });
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Binds the listeners and starts the loops.
    ///
    /// Fails if the address cannot be bound, or a loop cannot create its
    /// poller.
    pub fn start<H: Handler>(self, handler: H) -> io::Result<Server> {
        let mut config = self.config;
        // The topic registry tracks loops as bits of a u64.
        config.loops = config.loops.clamp(1, crate::pubsub::MAX_LOOPS);
        config.read_chunk = config.read_chunk.max(512);
        let config = Arc::new(config);
        let listeners = listener::bind_listeners(config.addr, config.loops)?;
        let local_addr = listeners[0].local_addr()?;
        let open = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (bus, bus_receiver) = new_bus(&config.broker);
        let registry = Arc::new(TopicRegistry::with_interest_hook(
            bus.as_ref().map(|bus| bus.interest_hook()),
        ));
        let cores = match (config.pin_cores, config.core_ids.is_empty()) {
            (false, _) => Vec::new(),
            (true, true) => core_affinity::get_core_ids().unwrap_or_default(),
            (true, false) => config
                .core_ids
                .iter()
                .map(|&id| core_affinity::CoreId { id })
                .collect(),
        };
        let mut workers = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            workers.push(worker::Worker::new(
                index,
                listener,
                Arc::clone(&config),
                Arc::clone(&handler),
                Arc::clone(&open),
                Arc::clone(&registry),
                bus.clone(),
            )?);
        }
        let mailboxes: Arc<[Arc<Mailbox>]> = workers.iter().map(worker::Worker::mailbox).collect();
        let stats: Arc<[Arc<LoopStats>]> = workers.iter().map(worker::Worker::stats).collect();
        let mut threads = Vec::new();
        for (index, mut worker) in workers.into_iter().enumerate() {
            worker.set_peers(Arc::clone(&mailboxes));
            let core = cores.get(index % cores.len().max(1)).copied();
            let thread = std::thread::Builder::new()
                .name(format!("herald-loop-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    worker.run();
                })?;
            threads.push(thread);
        }
        let handle = ServerHandle {
            mailboxes,
            stats,
            local_addr,
            open,
            registry,
            bus,
        };
        if let (Some(bus), Some(receiver)) = (&handle.bus, bus_receiver) {
            threads.push(spawn_bus(&config.broker, bus, receiver, handle.clone())?);
        }
        Ok(Server { handle, threads })
    }
}

/// The bus for `broker` and its receiving side, or neither for a single
/// node.
#[cfg(any(feature = "redis", feature = "nats"))]
fn new_bus(
    broker: &crate::cluster::Broker,
) -> (Option<Arc<Bus>>, Option<crate::cluster::BusReceiver>) {
    match broker {
        crate::cluster::Broker::Memory => (None, None),
        #[allow(unreachable_patterns)]
        _ => {
            let (bus, receiver) = Bus::new();
            (Some(bus), Some(receiver))
        }
    }
}

#[cfg(not(any(feature = "redis", feature = "nats")))]
fn new_bus(_: &crate::cluster::Broker) -> (Option<Arc<Bus>>, Option<std::convert::Infallible>) {
    (None, None)
}

#[cfg(any(feature = "redis", feature = "nats"))]
fn spawn_bus(
    broker: &crate::cluster::Broker,
    bus: &Bus,
    receiver: crate::cluster::BusReceiver,
    handle: ServerHandle,
) -> io::Result<JoinHandle<()>> {
    crate::cluster::spawn(broker.clone(), bus, receiver, handle)
}

#[cfg(not(any(feature = "redis", feature = "nats")))]
fn spawn_bus(
    _: &crate::cluster::Broker,
    bus: &Bus,
    _: std::convert::Infallible,
    _: ServerHandle,
) -> io::Result<JoinHandle<()>> {
    match *bus {}
}

/// A running server. Dropping it does not stop it: call
/// [`shutdown`](Self::shutdown), or [`join`](Self::join) to serve until a
/// [`ServerHandle`] shuts it down.
#[derive(Debug)]
pub struct Server {
    handle: ServerHandle,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// A builder with the default configuration.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the server listens on (with the port picked, if 0 was
    /// asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// A handle for other threads.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Shuts down gracefully: stops accepting, sends close 1001 to every
    /// client, waits for them up to the shutdown timeout, stops the loops,
    /// and returns once every loop thread has exited.
    pub fn shutdown(self) {
        self.handle.shutdown();
        self.join();
    }

    /// Waits until the server has shut down (through a [`ServerHandle`]).
    pub fn join(self) {
        for thread in self.threads {
            // A loop thread that panicked has already dropped its sockets;
            // there is nothing more to clean up here.
            let _ = thread.join();
        }
    }
}

/// A cheap, cloneable, `Send + Sync` handle to a running server.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    mailboxes: Arc<[Arc<Mailbox>]>,
    stats: Arc<[Arc<LoopStats>]>,
    local_addr: SocketAddr,
    open: Arc<AtomicUsize>,
    registry: Arc<TopicRegistry>,
    bus: Option<Arc<Bus>>,
}

impl ServerHandle {
    /// Starts a graceful shutdown (see [`Server::shutdown`]) and returns at
    /// once.
    pub fn shutdown(&self) {
        for mailbox in self.mailboxes.iter() {
            // A loop that has already stopped has nothing left to shut down.
            let _ = mailbox.post(Command::Shutdown);
        }
        if let Some(bus) = &self.bus {
            bus.stop();
        }
    }

    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends `frame` to every connection subscribed to `topic` (see
    /// [`Conn::subscribe`](crate::Conn::subscribe)), on every loop. The frame
    /// is encoded by the caller, once; each loop with subscribers gets it
    /// through its mailbox. Returns how many loops it was sent to (0: no
    /// subscribers).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn example(server: &herald::Server) {
    /// let frame = herald::wire::text_frame(r#"{"price": 101.5}"#);
    /// server.handle().publish("ticker:ACME", frame);
    /// # }
    /// ```
    pub fn publish(&self, topic: &str, frame: Bytes) -> usize {
        self.broadcast(Broadcast::raw(topic, frame))
    }

    /// Sends a broadcast built with its frames per protocol (what the
    /// channels layer does) to every loop with subscribers of its topic,
    /// and to the other nodes through the cluster bus, if there is one.
    /// Returns how many local loops it was sent to.
    pub fn broadcast(&self, broadcast: Broadcast) -> usize {
        if let Some(bus) = &self.bus {
            bus.forward(&broadcast);
        }
        self.broadcast_local(broadcast)
    }

    /// Sends a broadcast to this node's loops only.
    pub(crate) fn broadcast_local(&self, broadcast: Broadcast) -> usize {
        route_publish(&self.registry, &self.mailboxes, &Arc::new(broadcast), None)
    }

    /// Whether a cluster bus carries broadcasts to other nodes (then a
    /// broadcast is worth making even with no subscriber here).
    pub fn has_bus(&self) -> bool {
        self.bus.is_some()
    }

    /// The cluster bus's counters, if this node has a broker.
    pub fn cluster_stats(&self) -> Option<crate::cluster::ClusterStats> {
        self.bus.as_ref().map(|bus| bus.stats())
    }

    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
    pub(crate) fn registry(&self) -> &TopicRegistry {
        &self.registry
    }

    /// Which loops have subscribers of `topic`, by protocol, and how many
    /// subscribers there are: what a publisher checks to encode only the
    /// protocols that will be used.
    pub fn topic(&self, topic: &str) -> Option<TopicEntry> {
        self.registry.lookup(topic)
    }

    /// How many connections are subscribed to `topic`, on all loops.
    pub fn subscriber_count(&self, topic: &str) -> u64 {
        self.registry.subscriber_count(topic)
    }

    /// Connections currently held, handshaking or open.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The counters, summed over the loops.
    pub fn stats(&self) -> ServerStats {
        let mut total = ServerStats::default();
        for loop_stats in self.stats.iter() {
            total.add(loop_stats);
        }
        total
    }

    /// How long the loops' turns took, summed over the loops.
    pub fn turn_times(&self) -> crate::TurnTimes {
        let mut total = crate::TurnTimes::default();
        for loop_stats in self.stats.iter() {
            total.add(&loop_stats.turns);
        }
        total
    }

    /// The counters of each loop, in loop order: shows how connections
    /// were spread.
    pub fn stats_per_loop(&self) -> Vec<ServerStats> {
        self.stats
            .iter()
            .map(|loop_stats| {
                let mut stats = ServerStats::default();
                stats.add(loop_stats);
                stats
            })
            .collect()
    }
}
