//! Starting a server, and the handles that reach it from other threads.

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

use bytes::Bytes;

use super::{
    Command, Mailbox, Relay, Service, TlsConfig, compress::compress_broadcast, listener,
    mailbox::AppMessage, route_publish, worker::Worker,
};
use crate::{
    admission::RateLimit,
    broadcast::Broadcast,
    config::{Compression, ConfigError, ServerConfig, SlowConsumerPolicy, StaticFile},
    conflation::Conflation,
    metrics::{LoopStats, ServerStats, TurnTimes},
    pubsub::{TopicEntry, TopicRegistry},
    wire::DecoderConfig,
};

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting is out of range; the error names it.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The address could not be bound (in use, not permitted).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// A loop's poller or thread could not be created (out of file
    /// descriptors, memory or threads).
    #[error("cannot start the event loops: {0}")]
    Io(#[from] io::Error),
    /// The link to other nodes could not start (its thread, or a
    /// [`Cluster`](crate::cluster::Cluster) attached to a second server);
    /// the loops were stopped again.
    #[error("cannot start the cluster bus: {0}")]
    Relay(io::Error),
}

/// For callers that report every failure as an `io::Error`: a bad setting
/// becomes `InvalidInput`, a failed bind keeps its kind.
impl From<StartError> for io::Error {
    fn from(err: StartError) -> Self {
        match err {
            StartError::Io(err) | StartError::Relay(err) => err,
            StartError::Bind { ref source, .. } => Self::new(source.kind(), err.to_string()),
            StartError::Config(_) => Self::new(io::ErrorKind::InvalidInput, err.to_string()),
        }
    }
}

/// Configures and starts a [`Server`].
///
/// Every setting has a documented default (see [`ServerConfig`]); the
/// whole configuration is checked when the server starts, and a value out of
/// range is a [`StartError::Config`] naming the setting.
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
    relay: Option<Arc<dyn Relay>>,
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
        /// How many event loops (default: the available cores, at most 64;
        /// range 1 to 64).
        loops: usize,
        /// Whether to pin each loop to a core (default `true`).
        pin_cores: bool,
        /// Connections past which new ones get 503 (default 1,000,000).
        max_connections: usize,
        /// The largest request head (default 8 KiB; larger gets 431; range
        /// 512 B to 1 MiB).
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
        /// Outbound bytes a connection may have queued (default 4 MiB;
        /// range 1 KiB to 1 GiB).
        max_queued_bytes: usize,
        /// What to do past that limit (default: close with 1013).
        slow_consumer: SlowConsumerPolicy,
        /// Outbound bytes all connections may hold queued together, split
        /// between the loops; past it the largest queues are shed first
        /// (default 1 GiB; range 1 MiB to 1 TiB).
        queue_budget: usize,
        /// How long a graceful shutdown waits for clients (default 5 s).
        shutdown_timeout: Duration,
        /// Over how long a drain spreads its 1012 closes (default 10 s).
        drain_period: Duration,
        /// Commands from other threads a loop's mailbox holds before it
        /// refuses more (default 65,536).
        mailbox_capacity: usize,
        /// Bytes per `recv` (default 16 KiB; range 512 B to 16 MiB).
        read_chunk: usize,
        /// The cores the loops are pinned to, in loop order (default: the
        /// first cores listed, one per loop).
        core_ids: Vec<usize>,
    }

    /// Conflates the topics `rule` names for subscribers that fall behind:
    /// they get the latest message per topic (or per key) instead of every
    /// message. Rules are tried in the order added; the first that matches
    /// a topic applies.
    pub fn conflate(mut self, rule: Conflation) -> Self {
        self.config.conflation.push(rule);
        self
    }

    /// Turns permessage-deflate on for the clients that offer it (browsers
    /// and Node's `ws` do), compressing as `compression` says. Default:
    /// off (see [`Compression`]).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.config.compression = Some(compression);
        self
    }

    /// Serves TLS (`wss://`, and `https://` for the health check and
    /// static files) with `tls`'s certificate, in the event loops. Default:
    /// cleartext.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = Some(tls.config);
        self
    }

    /// Limits how fast one source address may open connections: past
    /// `limit`, 429 with `Retry-After` (counted in
    /// [`ServerStats::connections_rate_limited`]). Default: no limit.
    pub fn connect_rate_per_address(mut self, limit: RateLimit) -> Self {
        self.config.connect_rate_per_address = Some(limit);
        self
    }

    /// Limits how fast the server takes connections overall: past `limit`,
    /// 503 with `Retry-After`. Default: no limit.
    pub fn connect_rate(mut self, limit: RateLimit) -> Self {
        self.config.connect_rate = Some(limit);
        self
    }

    /// Limits how fast one connection may send messages: past `limit`,
    /// [`Handler::on_rate_limited`](crate::Handler::on_rate_limited) gets
    /// the message instead (by default closing with 1008), and a client
    /// that goes on past a burst's worth is closed with 1008. Counted in
    /// [`ServerStats::messages_rate_limited`]. Default: no limit.
    pub fn message_rate(mut self, limit: RateLimit) -> Self {
        self.config.message_rate = Some(limit);
        self
    }

    /// Where to listen (default `127.0.0.1:9001`; port 0 picks a free one).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.config.addr = addr;
        self
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
        self.config.static_files.push(StaticFile {
            path: path.into(),
            content_type: content_type.into(),
            body: body.into(),
        });
        self
    }

    /// Links this node to others (see [`Cluster`](crate::cluster::Cluster)).
    pub(crate) fn relay(mut self, relay: Arc<dyn Relay>) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Whether a cluster bus is attached.
    pub(crate) fn has_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// The configuration so far.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Checks the configuration, binds the listeners and starts the loops.
    ///
    /// Fails if a setting is out of range, the address cannot be bound, or a
    /// loop cannot create its poller or thread.
    pub fn start<H: crate::Handler>(self, handler: H) -> Result<Server, StartError> {
        self.start_service(handler)
    }

    /// Starts the loops with any [`Service`] (the channels layer's own).
    pub(crate) fn start_service<S: Service>(self, service: S) -> Result<Server, StartError> {
        self.config.validate()?;
        let config = Arc::new(self.config);
        let listeners = listener::bind_listeners(config.addr, config.loops).map_err(|source| {
            StartError::Bind {
                addr: config.addr,
                source,
            }
        })?;
        let local_addr = listeners[0].local_addr()?;
        let open = Arc::new(AtomicUsize::new(0));
        let service = Arc::new(service);
        let registry = Arc::new(TopicRegistry::with_interest_hook(self.relay.clone().map(
            |relay| Box::new(move |topic: &str| relay.interest_changed(topic)) as Box<_>,
        )));
        let mut workers = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            workers.push(Worker::new(
                index,
                listener,
                Arc::clone(&config),
                Arc::clone(&service),
                Arc::clone(&open),
                Arc::clone(&registry),
                self.relay.clone(),
            )?);
        }
        let mailboxes: Arc<[Arc<Mailbox>]> = workers.iter().map(Worker::mailbox).collect();
        let stats: Arc<[Arc<LoopStats>]> = workers.iter().map(Worker::stats).collect();
        let threads = spawn_loops(&config, workers, &mailboxes)?;
        let handle = ServerHandle {
            mailboxes,
            stats,
            local_addr,
            open,
            registry,
            relay: self.relay,
            compression: config.compression,
        };
        let mut server = Server {
            handle,
            threads,
            relay_thread: None,
        };
        if let Some(relay) = &server.handle.relay {
            match relay.start(server.handle.clone()) {
                Ok(thread) => server.relay_thread = Some(thread),
                Err(err) => {
                    server.shutdown();
                    return Err(StartError::Relay(err));
                }
            }
        }
        Ok(server)
    }
}

/// Starts one thread per loop, pinned as configured.
fn spawn_loops<S: Service>(
    config: &ServerConfig,
    workers: Vec<Worker<S>>,
    mailboxes: &Arc<[Arc<Mailbox>]>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let cores = match (config.pin_cores, config.core_ids.is_empty()) {
        (false, _) => Vec::new(),
        (true, true) => core_affinity::get_core_ids().unwrap_or_default(),
        (true, false) => config
            .core_ids
            .iter()
            .map(|&id| core_affinity::CoreId { id })
            .collect(),
    };
    let mut threads = Vec::new();
    for (index, mut worker) in workers.into_iter().enumerate() {
        worker.set_peers(Arc::clone(mailboxes));
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
    Ok(threads)
}

/// A running server. Dropping it does not stop it: call
/// [`shutdown`](Self::shutdown), or [`join`](Self::join) to serve until a
/// [`ServerHandle`] shuts it down.
#[derive(Debug)]
pub struct Server {
    handle: ServerHandle,
    /// The loops' threads.
    threads: Vec<JoinHandle<()>>,
    /// The relay's thread, stopped once the loops are done.
    relay_thread: Option<JoinHandle<()>>,
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

    /// Drains for a deploy: stops accepting, closes every client with
    /// 1012 ("service restart") in batches over the drain period (clients
    /// reconnect, to another node, a few at a time), waits for them up to
    /// the shutdown timeout, and returns once the loops have exited. A
    /// cluster bus keeps delivering other nodes' broadcasts meanwhile.
    pub fn drain(self) {
        self.handle.drain();
        self.join();
    }

    /// Waits until the server has shut down (through a [`ServerHandle`]).
    pub fn join(self) {
        for thread in self.threads {
            // A loop thread that panicked has already dropped its sockets;
            // there is nothing more to clean up here.
            let _ = thread.join();
        }
        if let Some(thread) = self.relay_thread {
            if let Some(relay) = &self.handle.relay {
                relay.stop();
            }
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
    relay: Option<Arc<dyn Relay>>,
    /// permessage-deflate, if on: broadcasts published through this handle
    /// are compressed here, once.
    compression: Option<Compression>,
}

impl ServerHandle {
    /// Starts a graceful shutdown (see [`Server::shutdown`]) and returns at
    /// once.
    pub fn shutdown(&self) {
        for mailbox in self.mailboxes.iter() {
            // A loop that has already stopped has nothing left to shut down.
            let _ = mailbox.post(Command::Shutdown);
        }
        if let Some(relay) = &self.relay {
            relay.stop();
        }
    }

    /// Starts a drain (see [`Server::drain`]) and returns at once.
    pub fn drain(&self) {
        for mailbox in self.mailboxes.iter() {
            // A loop that has already stopped has nothing left to drain.
            let _ = mailbox.post(Command::Drain);
        }
    }

    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends `frame` to every connection subscribed to `topic` (see
    /// [`Conn::subscribe`](crate::Conn::subscribe)), on every loop, and on
    /// every node with a cluster. The frame is encoded by the caller, once;
    /// each loop with subscribers gets it through its mailbox. Returns how
    /// many loops of this node it was sent to (0: no subscribers here).
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

    /// Sends a broadcast to this node's loops and, through the relay, to
    /// the other nodes. Returns how many local loops it was sent to.
    pub(crate) fn broadcast(&self, broadcast: Broadcast) -> usize {
        if let Some(relay) = &self.relay {
            relay.forward(&broadcast);
        }
        self.broadcast_local(broadcast)
    }

    /// Sends a broadcast to this node's loops only (what came from another
    /// node).
    pub(crate) fn broadcast_local(&self, mut broadcast: Broadcast) -> usize {
        compress_broadcast(&mut broadcast, &self.registry, self.compression);
        route_publish(&self.registry, &self.mailboxes, &Arc::new(broadcast), None)
    }

    /// Closes, with 1001 (clients reconnect), every connection named `id`
    /// (see [`Conn::set_id`](crate::Conn::set_id)), on every loop and, with
    /// a cluster, every node. Returns how many of this node's loops were
    /// asked.
    pub fn disconnect(&self, id: &str) -> usize {
        if let Some(relay) = &self.relay {
            relay.forward_disconnect(id);
        }
        self.disconnect_local(id)
    }

    /// Hands `message` to the handlers of this node's connections named
    /// `id`. Returns how many loops were asked.
    pub(crate) fn send_info(&self, id: &str, message: &AppMessage) -> usize {
        let name: Arc<str> = Arc::from(id);
        self.mailboxes
            .iter()
            .filter(|mailbox| {
                let command = Command::InfoByName {
                    name: Arc::clone(&name),
                    message: Arc::clone(message),
                };
                mailbox.post(command).is_ok()
            })
            .count()
    }

    /// Closes the connections named `id` on this node only.
    pub(crate) fn disconnect_local(&self, id: &str) -> usize {
        let id: Arc<str> = Arc::from(id);
        self.mailboxes
            .iter()
            // A stopped loop has no connections left.
            .filter(|mailbox| mailbox.post(Command::Disconnect(Arc::clone(&id))).is_ok())
            .count()
    }

    /// Whether another node may want what is broadcast here (then a
    /// broadcast is worth encoding even with no subscriber on this node).
    pub(crate) fn has_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// The link to other nodes, if any.
    pub(crate) fn relay(&self) -> Option<&Arc<dyn Relay>> {
        self.relay.as_ref()
    }

    /// What the shared index knows of `topic`: which protocols its
    /// subscribers on this node speak.
    pub(crate) fn topic(&self, topic: &str) -> Option<TopicEntry> {
        self.registry.lookup(topic)
    }

    /// Every topic with subscribers on this node.
    pub fn topics(&self) -> Vec<String> {
        self.registry
            .topics()
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// Every topic with subscribers on this node, with how many.
    pub(crate) fn topic_counts(&self) -> Vec<(Box<str>, u64)> {
        self.registry.counts()
    }

    /// How full the fullest loop's mailbox is, 0 to 1: what an API in
    /// front of the server checks to answer "busy, retry later" before
    /// publishing, rather than have broadcasts refused halfway.
    pub fn backlog(&self) -> f64 {
        self.mailboxes
            .iter()
            .map(|mailbox| mailbox.load())
            .fold(0.0, f64::max)
    }

    /// Broadcasts, sends and closes refused so far because a loop's
    /// mailbox was full.
    pub fn commands_refused(&self) -> u64 {
        self.mailboxes.iter().map(|mailbox| mailbox.refused()).sum()
    }

    /// How many connections of this node are subscribed to `topic`.
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
            loop_stats.add_to(&mut total);
        }
        total
    }

    /// How long the loops' turns took, summed over the loops.
    pub fn turn_times(&self) -> TurnTimes {
        let mut total = TurnTimes::default();
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
            .map(|loop_stats| loop_stats.snapshot())
            .collect()
    }
}
