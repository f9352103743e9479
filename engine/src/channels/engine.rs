//! Mounting endpoints, starting the engine, and the handle that broadcasts
//! from anywhere.

use std::{
    any::Any,
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::value::RawValue;

use super::{
    Channel, ChannelContext, JoinResult, LeaveReason, Socket, TopicPattern,
    census::{
        CENSUS_EVERY, CENSUS_TAG, Census, Listener, LocalRound, NodeSummary, TopicEvent,
        TopicEventFn,
    },
    context::{ChannelInfo, JoinInfo, Removal},
    deferred::{ConnectAnswer, Via},
    handler::{ChannelConn, ChannelsHandler},
    history::{
        DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_TOPICS, Histories, History, HistoryRules,
        HistoryStore,
    },
    presence::{PRESENCE_DIFF, PresenceTracker},
    stats::{ChannelCounters, ChannelStats},
    timers::Timers,
};
use crate::{
    broadcast::Broadcast,
    config::ConfigError,
    handshake::Request,
    protocol::{MessageError, WireProtocol, phoenix::Ref},
    pubsub::TopicEntry,
    reactor::{
        AppMessage, Conn, PendingConnect, Reject, Relay, Server, ServerBuilder, ServerHandle,
        StartError, SyncHandler,
    },
};

/// A socket and the channels its topics route to.
///
/// # Examples
///
/// ```
/// # use herald::channels::{Channel, ChannelContext, Endpoint, JoinResult, Reply, Socket};
/// # use herald::{Reject, Request};
/// # use serde_json::value::RawValue;
/// # struct Anyone;
/// # impl Socket for Anyone {
/// #     type Assigns = ();
/// #     fn connect(&self, _: &Request) -> Result<(), Reject> { Ok(()) }
/// # }
/// # struct Room;
/// # impl Channel<()> for Room {
/// #     fn handle_joined(&self, _: &mut ChannelContext<'_, '_, ()>, _: &RawValue) -> JoinResult { Ok(Reply::empty()) }
/// #     fn handle_message(&self, ctx: &mut ChannelContext<'_, '_, ()>, event: &str, payload: &RawValue) {
/// #         ctx.rebroadcast(event, payload);
/// #     }
/// # }
/// // "room:lobby" and "room:42" go to Room; "lobby" only to Room too.
/// let endpoint = Endpoint::new(Anyone).channel("room:*", Room).channel("lobby", Room);
/// # let _ = endpoint;
/// ```
pub struct Endpoint<S: Socket> {
    socket: S,
    routes: Vec<Route<S::Assigns>>,
}

/// A topic pattern and the channel its topics go to.
type Route<A> = (TopicPattern, Box<dyn Channel<A>>);

impl<S: Socket> std::fmt::Debug for Endpoint<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field(
                "routes",
                &self.routes.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<S: Socket> Endpoint<S> {
    /// An endpoint authorizing connections with `socket`.
    pub fn new(socket: S) -> Self {
        Self {
            socket,
            routes: Vec::new(),
        }
    }

    /// Routes topics matching `pattern` (exact, or a prefix ending in `*`,
    /// as Phoenix and Amber declare them) to `channel`. The first matching
    /// route wins.
    pub fn channel(mut self, pattern: &str, channel: impl Channel<S::Assigns>) -> Self {
        self.routes
            .push((TopicPattern::new(pattern), Box::new(channel)));
        self
    }
}

/// A channel callback, untyped.
pub(crate) enum Call<'p> {
    Join(&'p RawValue),
    Message(&'p str, &'p RawValue),
    Binary(&'p str, &'p [u8]),
    Leave(LeaveReason),
    Out(&'p str, &'p RawValue),
    Info(&'p Broadcast),
    AppInfo(&'p (dyn Any + Send + Sync)),
    JoinAnswer(&'p (dyn Any + Send + Sync)),
}

/// An endpoint with its socket's assigns type erased, so that endpoints of
/// different sockets can be mounted on one server.
pub(crate) trait ErasedEndpoint: Send + Sync {
    fn connect(&self, request: &Request) -> Result<(Box<dyn Any + Send>, Option<String>), Reject>;
    /// Hands the request to the socket's `connect_later`; `Err` gives it
    /// back, to be decided with `connect`.
    fn connect_later(
        &self,
        request: &Request,
        pending: PendingConnect,
        via: Via,
    ) -> Result<(), PendingConnect>;
    /// Reads what a [`ConnectAnswer`] sent back.
    fn connect_decided(
        &self,
        outcome: Box<dyn Any + Send>,
    ) -> Result<(Box<dyn Any + Send>, Option<String>), Reject>;
    fn route(&self, topic: &str) -> Option<u16>;
    fn intercepts(&self, route: u16, event: &str) -> bool;
    fn call(
        &self,
        assigns: &mut (dyn Any + Send),
        conn: &mut Conn<'_, ChannelConn>,
        site: CallSite<'_>,
        call: Call<'_>,
    ) -> Option<JoinResult>;
}

/// Which channel a callback runs for, and what it may use besides the
/// connection.
pub(crate) struct CallSite<'c> {
    pub(crate) join: &'c JoinInfo,
    /// The ref of the push being handled, if it carried one.
    pub(crate) msg_ref: Option<Ref<'c>>,
    pub(crate) presence: &'c PresenceTracker,
    pub(crate) timers: &'c Timers,
    pub(crate) history: &'c Histories,
}

impl<S: Socket> ErasedEndpoint for Endpoint<S> {
    fn connect(&self, request: &Request) -> Result<(Box<dyn Any + Send>, Option<String>), Reject> {
        let assigns = self.socket.connect(request)?;
        let id = self.socket.id(&assigns);
        Ok((Box::new(assigns), id))
    }

    fn connect_later(
        &self,
        request: &Request,
        pending: PendingConnect,
        via: Via,
    ) -> Result<(), PendingConnect> {
        let answer = ConnectAnswer::<S::Assigns>::new(pending, via);
        self.socket
            .connect_later(request, answer)
            .map_err(|answer| answer.into_parts().0)
    }

    fn connect_decided(
        &self,
        outcome: Box<dyn Any + Send>,
    ) -> Result<(Box<dyn Any + Send>, Option<String>), Reject> {
        let outcome = outcome
            .downcast::<Result<S::Assigns, Reject>>()
            .map_err(|_| Reject::with_status(500))?;
        let assigns = (*outcome)?;
        let id = self.socket.id(&assigns);
        Ok((Box::new(assigns), id))
    }

    fn route(&self, topic: &str) -> Option<u16> {
        self.routes
            .iter()
            .position(|(pattern, _)| pattern.matches(topic))
            .and_then(|index| u16::try_from(index).ok())
    }

    fn intercepts(&self, route: u16, event: &str) -> bool {
        self.routes
            .get(usize::from(route))
            .is_some_and(|(_, channel)| channel.intercepts().contains(&event))
    }

    fn call(
        &self,
        assigns: &mut (dyn Any + Send),
        conn: &mut Conn<'_, ChannelConn>,
        site: CallSite<'_>,
        call: Call<'_>,
    ) -> Option<JoinResult> {
        let (_, channel) = self.routes.get(usize::from(site.join.route))?;
        let assigns = assigns.downcast_mut::<S::Assigns>()?;
        let mut ctx = ChannelContext {
            assigns,
            conn,
            join: site.join,
            msg_ref: site.msg_ref,
            replied: false,
            joining: matches!(call, Call::Join(_) | Call::JoinAnswer(_)),
            presence: site.presence,
            timers: site.timers,
            history: site.history,
        };
        match call {
            Call::Join(payload) => return Some(channel.handle_joined(&mut ctx, payload)),
            Call::Message(event, payload) => channel.handle_message(&mut ctx, event, payload),
            Call::Binary(event, data) => channel.handle_binary(&mut ctx, event, data),
            Call::Leave(reason) => channel.handle_leave(&mut ctx, reason),
            Call::Out(event, payload) => channel.handle_out(&mut ctx, event, payload),
            Call::Info(broadcast) => channel.handle_info(&mut ctx, broadcast),
            Call::AppInfo(message) => channel.handle_app_info(&mut ctx, message),
            Call::JoinAnswer(answer) => {
                return Some(channel.handle_join_answer(&mut ctx, answer));
            }
        }
        None
    }
}

/// An endpoint mounted on a path.
pub(crate) struct Mount {
    pub(crate) path: String,
    pub(crate) protocol: WireProtocol,
    pub(crate) endpoint: Box<dyn ErasedEndpoint>,
}

/// Mounts channel endpoints on paths and starts the engine.
///
/// See the [module docs](super) for a complete example.
#[must_use = "nothing is served until `start` is called"]
pub struct Channels {
    mounts: Vec<Mount>,
    max_channels: usize,
    presence_down_after: Duration,
    census_every: Duration,
    on_topic_event: Option<Arc<TopicEventFn>>,
    history: HistoryRules,
    history_store: HistoryStore,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field(
                "paths",
                &self.mounts.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .field("max_channels", &self.max_channels)
            .finish()
    }
}

impl Default for Channels {
    fn default() -> Self {
        Self::new()
    }
}

impl Channels {
    /// No endpoints yet; at most 100 channels per connection, as Phoenix.
    pub fn new() -> Self {
        Self {
            mounts: Vec::new(),
            max_channels: 100,
            presence_down_after: Duration::from_secs(30),
            census_every: CENSUS_EVERY,
            on_topic_event: None,
            history: HistoryRules::default(),
            history_store: HistoryStore::memory(DEFAULT_HISTORY_TOPICS, DEFAULT_HISTORY_BYTES),
        }
    }

    /// Keeps history for the topics matching `pattern` (exact, or a prefix
    /// ending in `*`; the first matching rule wins): each publication gets
    /// an offset, and a Phoenix client that joins again with its last
    /// position gets what it missed (see [`History`] and the README's
    /// "History and recovery"). Off by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald::channels::{Channels, History};
    ///
    /// let channels = Channels::new()
    ///     .history("chat_room:*", History::new().size(200).ttl(Duration::from_secs(600)));
    /// # let _ = channels;
    /// ```
    pub fn history(mut self, pattern: &str, rule: History) -> Self {
        self.history.push(pattern, Some(rule));
        self
    }

    /// Keeps no history for the topics matching `pattern`, whatever later
    /// [`history`](Self::history) rules say (rules are tried in order).
    pub fn no_history(mut self, pattern: &str) -> Self {
        self.history.push(pattern, None);
        self
    }

    /// Where history is kept: by default in this process
    /// ([`HistoryStore::memory`], 100,000 topics and 256 MiB at most), which serves a
    /// single node only; a cluster takes
    /// [`Cluster::history_store`](crate::cluster::Cluster::history_store).
    pub fn history_store(mut self, store: HistoryStore) -> Self {
        self.history_store = store;
        self
    }

    /// Serves `endpoint` at `path` with the Phoenix Channels V2 protocol
    /// (the `phoenix` npm client connects to `{path}?vsn=2.0.0`; Phoenix's
    /// own default path is `/socket/websocket`).
    pub fn phoenix<S: Socket>(self, path: &str, endpoint: Endpoint<S>) -> Self {
        self.mount(path, WireProtocol::PhoenixV2, endpoint)
    }

    /// Serves `endpoint` at `path` with Amber's channel protocol (amber.js).
    pub fn amber<S: Socket>(self, path: &str, endpoint: Endpoint<S>) -> Self {
        self.mount(path, WireProtocol::Amber, endpoint)
    }

    fn mount<S: Socket>(
        mut self,
        path: &str,
        protocol: WireProtocol,
        endpoint: Endpoint<S>,
    ) -> Self {
        self.mounts.push(Mount {
            path: path.to_owned(),
            protocol,
            endpoint: Box::new(endpoint),
        });
        self
    }

    /// Channels one connection may join (default 100); more get the error
    /// reply `{"reason":"too many channels joined"}`.
    pub fn max_channels(mut self, limit: usize) -> Self {
        self.max_channels = limit;
        self
    }

    /// With a cluster bus: how long a node may stay silent before the
    /// others take it for gone and its presences leave (default 30 s, as
    /// Phoenix; nodes say they are alive every second). A node that stops
    /// cleanly says so, and its presences leave at once.
    pub fn presence_down_after(mut self, period: Duration) -> Self {
        self.presence_down_after = period;
        self
    }

    /// How often this node counts its topics and, with a cluster bus, tells
    /// the other nodes (default 1 s): how fresh cluster-wide counts
    /// ([`EngineHandle::cluster_subscriber_count`]) and topic events are.
    pub fn census_every(mut self, every: Duration) -> Self {
        self.census_every = every.max(Duration::from_millis(10));
        self
    }

    /// Calls `listener` when a topic gets its first or loses its last
    /// subscriber in the cluster (checked every
    /// [`census_every`](Self::census_every)), and when a presence key gets
    /// its first or loses its last presence on a topic (as it is tracked or
    /// untracked on this node). Each event is raised by the node where the
    /// change happened; see [`TopicEvent`] for how exact that is. The
    /// listener runs on the engine's threads, loops included, and under
    /// the presence lock (so that events keep the order of the changes): it
    /// must only queue the event.
    pub fn on_topic_event(mut self, listener: impl Fn(TopicEvent) + Send + Sync + 'static) -> Self {
        self.on_topic_event = Some(Arc::new(listener));
        self
    }

    /// Starts the engine on a server configured by `builder` (address,
    /// loops, limits); the endpoints' paths are added to it.
    pub fn start(self, builder: ServerBuilder) -> Result<Engine, StartError> {
        if builder.has_relay() && !self.history.is_empty() && !self.history_store.backend.shared() {
            return Err(StartError::Config(ConfigError::Conflict(
                "history on a cluster needs the cluster's store: Channels::history_store(cluster.history_store())",
            )));
        }
        let builder = self.mounts.iter().fold(builder, |builder, mount| {
            builder.endpoint(mount.path.clone())
        });
        let counters = Arc::new(ChannelCounters::default());
        let history = Arc::new(Histories {
            rules: self.history,
            store: self.history_store,
            counters: Arc::clone(&counters),
        });
        let incarnation = RandomState::new().hash_one(0u8);
        let presence = Arc::new(PresenceTracker::new(incarnation));
        if let Some(listener) = &self.on_topic_event {
            presence.observe(Listener(Arc::clone(listener)));
        }
        let timers = Arc::new(Timers::default());
        let handler = ChannelsHandler {
            mounts: self.mounts,
            max_channels: self.max_channels,
            counters: Arc::clone(&counters),
            presence: Arc::clone(&presence),
            timers: Arc::clone(&timers),
            history: Arc::clone(&history),
        };
        let server = builder.start_service(handler)?;
        history.store.backend.attach(server.handle());
        let relay = server.handle().relay().cloned();
        let node = relay.as_ref().map_or(incarnation, |relay| relay.node_id());
        let census = Arc::new(Census::new(node, self.presence_down_after));
        let handle = EngineHandle {
            server: server.handle(),
            counters,
            presence,
            census,
            history,
        };
        if let Some(relay) = &relay {
            let listener = self.on_topic_event.clone();
            link_cluster(&handle, relay, self.presence_down_after, listener);
        }
        let presence_thread = spawn_presence_sender(handle.clone()).map_err(StartError::Io)?;
        let timer_thread = timers.spawn().map_err(StartError::Io)?;
        let listener = self.on_topic_event.clone();
        let census = spawn_census(handle.clone(), self.census_every, listener);
        let threads = vec![
            presence_thread,
            timer_thread,
            census.map_err(StartError::Io)?,
        ];
        let presence_sender = PresenceSender {
            tracker: Arc::clone(&handle.presence),
            timers,
            threads,
        };
        Ok(Engine {
            server,
            handle,
            _presence_sender: presence_sender,
        })
    }
}

/// Replicates presence and topic counts with the other nodes through
/// `relay`: their messages reach the tracker or the census on the relay's
/// thread, and the tracker's answers go straight back.
fn link_cluster(
    handle: &EngineHandle,
    relay: &Arc<dyn Relay>,
    down_after: Duration,
    listener: Option<Arc<TopicEventFn>>,
) {
    handle.presence.link(relay.node_id(), down_after);
    let tracker = Arc::clone(&handle.presence);
    let census = Arc::clone(&handle.census);
    // Weak: the relay holds the handler.
    let relay_back = Arc::downgrade(relay);
    let engine = handle.clone();
    relay.set_sync_handler(SyncHandler(Arc::new(move |origin, message| {
        let now = Instant::now();
        if message.starts_with(CENSUS_TAG) {
            let events = census.receive(origin, message, now);
            if let Some(listener) = &listener {
                events.into_iter().for_each(|event| listener(event));
            }
            return;
        }
        if message.starts_with(UNSUBSCRIBE_TAG) {
            if let Ok(Unsubscribe { unsubscribe }) = serde_json::from_slice(message) {
                engine.unsubscribe_here(&unsubscribe.0, &unsubscribe.1);
            }
            return;
        }
        let replies = tracker.sync_receive(origin, message, now);
        if let Some(relay) = relay_back.upgrade() {
            for reply in replies {
                relay.forward_sync(reply);
            }
        }
    })));
}

/// Another node's [`EngineHandle::unsubscribe`]: `(socket id, topic)`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Unsubscribe {
    unsubscribe: (String, String),
}

/// The start of every [`Unsubscribe`] on the control channel.
const UNSUBSCRIBE_TAG: &[u8] = b"{\"unsubscribe\":";

/// Starts the thread that counts this node's topics every `every`, raises
/// the topic events of its changes, and tells the other nodes; it ends
/// when the engine does.
fn spawn_census(
    handle: EngineHandle,
    every: Duration,
    listener: Option<Arc<TopicEventFn>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("herald-census".into())
        .spawn(move || {
            let relay = handle.server.relay().cloned();
            let mut next = Instant::now();
            while !handle.presence.is_stopped() {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(PRESENCE_TICK));
                    continue;
                }
                next = now + every;
                handle.history.store.backend.sweep();
                let server = &handle.server;
                let local = LocalRound {
                    topics: server.topic_counts(),
                    connections: server.connections() as u64,
                    deliveries: server.stats().published_deliveries,
                };
                let (events, messages) = handle.census.round(local, now);
                if let Some(listener) = &listener {
                    events.into_iter().for_each(|event| listener(event));
                }
                if let Some(relay) = &relay {
                    messages
                        .into_iter()
                        .for_each(|message| relay.forward_sync(message));
                }
            }
        })
}

/// How often the presence thread wakes with nothing to send: heartbeats and
/// the down period are checked at this pace.
const PRESENCE_TICK: Duration = Duration::from_millis(250);

/// Starts the thread that sends this node's clients each topic's coalesced
/// presence diff once its window has passed (every node sends its own
/// clients the diffs of every node's changes), and, with a cluster, tells
/// the other nodes of this one's changes; it ends when the engine does,
/// saying goodbye to the other nodes.
fn spawn_presence_sender(handle: EngineHandle) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("herald-presence".into())
        .spawn(move || {
            let relay = handle.server.relay().cloned();
            while !handle.presence.is_stopped() {
                for (topic, diff) in handle.presence.next_diffs(PRESENCE_TICK) {
                    handle.broadcast_here(&topic, PRESENCE_DIFF, diff);
                }
                if let Some(relay) = &relay {
                    for message in handle.presence.sync_outgoing(Instant::now()) {
                        relay.forward_sync(message);
                    }
                }
            }
            if let (Some(relay), Some(bye)) = (&relay, handle.presence.sync_bye()) {
                relay.forward_sync(bye);
            }
        })
}

/// A running channels engine.
#[derive(Debug)]
pub struct Engine {
    server: Server,
    handle: EngineHandle,
    /// Held for its `Drop`: stops the sender once the server has stopped.
    _presence_sender: PresenceSender,
}

impl Engine {
    /// The address the engine listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// A handle for broadcasting from anywhere.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Shuts down gracefully (close 1001 to every client) and waits. With
    /// a cluster, the other nodes first drop this node's presences.
    pub fn shutdown(self) {
        self.say_goodbye();
        self.server.shutdown();
    }

    /// Drains for a deploy (close 1012 in batches, see
    /// [`Server::drain`]) and waits. With a cluster, the other nodes first
    /// drop this node's presences.
    pub fn drain(self) {
        self.say_goodbye();
        self.server.drain();
    }

    /// Tells the other nodes this one is leaving, while the bus still runs.
    fn say_goodbye(&self) {
        let Some(relay) = self.handle.server.relay() else {
            return;
        };
        if let Some(bye) = self.handle.presence.sync_bye() {
            relay.forward_sync(bye);
        }
        relay.forward_sync(self.handle.census.leave());
    }

    /// Serves until shut down through a handle.
    pub fn join(self) {
        self.server.join();
    }
}

/// The engine's own threads (the presence sender, the channel timers),
/// stopped and joined when the engine goes (after its server, which the
/// engine's methods consume first).
#[derive(Debug)]
struct PresenceSender {
    tracker: Arc<PresenceTracker>,
    timers: Arc<Timers>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for PresenceSender {
    fn drop(&mut self) {
        self.tracker.stop();
        self.timers.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Broadcasts from anywhere: web handlers, background jobs. Cheap to clone,
/// `Send + Sync`.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    server: ServerHandle,
    counters: Arc<ChannelCounters>,
    presence: Arc<PresenceTracker>,
    census: Arc<Census>,
    history: Arc<Histories>,
}

impl EngineHandle {
    /// Broadcasts `event` with `payload` to every subscriber of `topic`.
    /// The message is encoded once per wire protocol in use and reaches only
    /// the loops with subscribers. Returns how many loops it went to; for a
    /// topic with history ([`Channels::history`]), 1 once the history store
    /// took it (it takes its offset there, and a remote store delivers it
    /// when the broker brings it back), 0 if the store refused it.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        event: &str,
        payload: &T,
    ) -> Result<usize, serde_json::Error> {
        if let Some(rule) = self.history.rule_for(topic) {
            let payload = serde_json::value::to_raw_value(payload)?;
            let published = self.history.publish(topic, rule, event, payload, None);
            return Ok(usize::from(published));
        }
        // Other nodes re-encode the message itself: no frame for them.
        let Some(entry) = self.encoding_entry(topic, TopicEntry::default()) else {
            return Ok(0);
        };
        let payload = serde_json::value::to_raw_value(payload)?;
        let broadcast = Broadcast::channel(topic, event, payload, &entry);
        Ok(self.server.broadcast(broadcast))
    }

    /// The history store, to read a topic's latest publications or remove
    /// its history (see [`Channels::history`]).
    pub fn history_store(&self) -> &HistoryStore {
        &self.history.store
    }

    /// Whether `topic` keeps history.
    pub fn keeps_history(&self, topic: &str) -> bool {
        self.history.rule_for(topic).is_some()
    }

    /// Broadcasts binary `data` under `event` to every subscriber of
    /// `topic` speaking Phoenix (binary V2 layout; Amber has no binary
    /// messages). Fails if the topic or event exceeds 255 bytes.
    pub fn broadcast_binary(
        &self,
        topic: &str,
        event: &str,
        data: &[u8],
    ) -> Result<usize, MessageError> {
        // Other nodes get the Phoenix binary frame as encoded here.
        let for_other_nodes = TopicEntry::with_protocol(WireProtocol::PhoenixV2);
        let Some(entry) = self.encoding_entry(topic, for_other_nodes) else {
            return Ok(0);
        };
        let broadcast = Broadcast::channel_binary(topic, event, data, &entry)?;
        Ok(self.server.broadcast(broadcast))
    }

    /// What a broadcast to `topic` is encoded for: the protocols this
    /// node's subscribers speak, plus, with a cluster bus, those of
    /// `for_other_nodes` (and then even with no subscriber here). `None`:
    /// nobody to send to.
    fn encoding_entry(&self, topic: &str, for_other_nodes: TopicEntry) -> Option<TopicEntry> {
        let local = self.server.topic(topic);
        if !self.server.has_relay() {
            return local;
        }
        let mut entry = local.unwrap_or_default();
        for (loops, extra) in entry.loops.iter_mut().zip(for_other_nodes.loops) {
            *loops |= extra;
        }
        Some(entry)
    }

    /// Hands `message` to the channel of `topic` on every connection of
    /// this node whose socket [`id`](Socket::id) is `socket_id` (its
    /// [`Channel::handle_app_info`]), from any thread. Returns how many
    /// loops were asked. This node only: messages between nodes go through
    /// broadcasts.
    pub fn send_info<T: Any + Send + Sync>(
        &self,
        socket_id: &str,
        topic: &str,
        message: T,
    ) -> usize {
        let message: AppMessage = Arc::new(ChannelInfo {
            topic: Arc::from(topic),
            message: Arc::new(message),
        });
        self.server.send_info(socket_id, &message)
    }

    /// Takes every connection whose socket [`id`](Socket::id) is
    /// `socket_id` off `topic`, on every node: its channel ends as if it
    /// stopped (`phx_close` to a Phoenix client, then `handle_leave` with
    /// [`LeaveReason::Removed`]). Returns how many of this node's loops
    /// were asked.
    pub fn unsubscribe(&self, socket_id: &str, topic: &str) -> usize {
        if let Some(relay) = self.server.relay() {
            let order = Unsubscribe {
                unsubscribe: (socket_id.to_owned(), topic.to_owned()),
            };
            if let Ok(message) = serde_json::to_vec(&order) {
                relay.forward_sync(message.into());
            }
        }
        self.unsubscribe_here(socket_id, topic)
    }

    /// [`unsubscribe`](Self::unsubscribe) on this node only.
    fn unsubscribe_here(&self, socket_id: &str, topic: &str) -> usize {
        let removal: AppMessage = Arc::new(Removal {
            topic: Arc::from(topic),
        });
        self.server.send_info(socket_id, &removal)
    }

    /// Broadcasts to this node's subscribers of `topic` only.
    fn broadcast_here(&self, topic: &str, event: &str, payload: Box<RawValue>) {
        if let Some(entry) = self.server.topic(topic) {
            let broadcast = Broadcast::channel(topic, event, payload, &entry);
            self.server.broadcast_local(broadcast);
        }
    }

    /// Subscribers of `topic`, on all loops.
    pub fn subscriber_count(&self, topic: &str) -> u64 {
        self.server.subscriber_count(topic)
    }

    /// Subscribers of `topic` in the whole cluster: this node's now, the
    /// others' as of their last census round (see
    /// [`Channels::census_every`]). Without a cluster bus, this node's.
    pub fn cluster_subscriber_count(&self, topic: &str) -> u64 {
        self.subscriber_count(topic)
            .saturating_add(self.census.remote_count(topic))
    }

    /// Every topic with subscribers in the cluster, with its count, as
    /// [`cluster_subscriber_count`](Self::cluster_subscriber_count) gives
    /// it (unordered).
    pub fn cluster_topics(&self) -> Vec<(String, u64)> {
        let mut topics: std::collections::HashMap<String, u64> =
            self.census.remote_topics().into_iter().collect();
        for (topic, count) in self.server.topic_counts() {
            let total = topics.entry(topic.into()).or_insert(0);
            *total = total.saturating_add(count);
        }
        topics.into_iter().collect()
    }

    /// The nodes of the cluster this node has heard from in the down
    /// period, this one first (only this one without a cluster bus).
    /// Other nodes' figures are as of their last census round.
    pub fn nodes(&self) -> Vec<NodeSummary> {
        self.census.nodes(Instant::now())
    }

    /// Closes, with 1001 (clients reconnect), every connection whose socket
    /// [`id`](Socket::id) is `socket_id`, on every node. Returns how many of
    /// this node's loops were asked.
    pub fn disconnect(&self, socket_id: &str) -> usize {
        self.server.disconnect(socket_id)
    }

    /// The presences on `topic` (with a cluster bus, every node's), as the
    /// `presence_state` push has them: `{key: {"metas": [{"phx_ref": ...,
    /// ...meta}]}}`, as of the last `presence_diff` (at most one diff window,
    /// [`DIFF_WINDOW`](super::DIFF_WINDOW), old).
    pub fn presence_list(&self, topic: &str) -> Box<RawValue> {
        self.presence.state_json(topic)
    }

    /// How many keys (users) are present on `topic` (with a cluster bus, on
    /// every node).
    pub fn presence_count(&self, topic: &str) -> usize {
        self.presence.count(topic)
    }

    /// The channels layer's counters: joins, leaves, client messages.
    pub fn channel_stats(&self) -> ChannelStats {
        self.counters.snapshot()
    }

    /// The underlying server's handle (stats, shutdown).
    pub fn server(&self) -> &ServerHandle {
        &self.server
    }
}
