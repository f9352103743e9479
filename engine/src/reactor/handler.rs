//! The low-level, per-connection API, after Azu's channel: one callback per
//! WebSocket event, called on the connection's own loop thread.
//!
//! Callbacks must not block: a loop serves thousands of connections. Work
//! that blocks belongs on another thread, which answers through a
//! [`ConnHandle`].

use std::sync::Arc;

use bytes::Bytes;
use thin_vec::ThinVec;

use super::{ConnHandle, Connecting, Decision, Later, LoopContext, compress, mailbox::AppMessage};
use crate::{
    broadcast::{Broadcast, Delivery},
    conn::{Outbox, SendError},
    handshake::Request,
    metrics::bump,
    protocol::WireProtocol,
    pubsub::{ConnId, Sub, SubscriptionKind, TopicEntry},
    wire::{CloseCode, Utf8Bytes, binary_frame, text_frame},
};

/// The application's side of a WebSocket endpoint.
///
/// Every method but [`on_connect`](Self::on_connect) has a default that
/// does nothing; pings are answered with pongs by the server itself, before
/// [`on_ping`](Self::on_ping) is called.
///
/// # Examples
///
/// An echo server:
///
/// ```no_run
/// use bytes::Bytes;
/// use herald::{Accept, Conn, Handler, Reject, Request, Server, wire::Utf8Bytes};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     type State = ();
///
///     fn on_connect(&self, _request: &Request) -> Result<Accept<()>, Reject> {
///         Ok(Accept::new(()))
///     }
///
///     fn on_message(&self, conn: &mut Conn<'_, ()>, text: Utf8Bytes) {
///         let _ = conn.send_text(&text);
///     }
///
///     fn on_binary(&self, conn: &mut Conn<'_, ()>, data: Bytes) {
///         let _ = conn.send_binary(&data);
///     }
/// }
///
/// let server = Server::builder().bind("127.0.0.1:9001".parse()?).start(Echo)?;
/// server.join();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Per-connection state, created by `on_connect` and owned by the
    /// connection's loop.
    type State: Send + 'static;

    /// Decides whether to accept an upgrade request: authorize it (query
    /// parameters, headers, cookies, peer), create the connection's state,
    /// and optionally choose a subprotocol among
    /// [`Request::subprotocols`].
    fn on_connect(&self, request: &Request) -> Result<Accept<Self::State>, Reject>;

    /// The handshake is complete; the connection is open.
    fn on_open(&self, conn: &mut Conn<'_, Self::State>) {
        let _ = conn;
    }

    /// A text message.
    fn on_message(&self, conn: &mut Conn<'_, Self::State>, text: Utf8Bytes) {
        let _ = (conn, text);
    }

    /// A binary message.
    fn on_binary(&self, conn: &mut Conn<'_, Self::State>, data: Bytes) {
        let _ = (conn, data);
    }

    /// A ping (already answered with a pong).
    fn on_ping(&self, conn: &mut Conn<'_, Self::State>, payload: Bytes) {
        let _ = (conn, payload);
    }

    /// A pong, solicited by the server's heartbeat or not.
    fn on_pong(&self, conn: &mut Conn<'_, Self::State>, payload: Bytes) {
        let _ = (conn, payload);
    }

    /// The connection has ended, once per opened connection: with the code
    /// the client sent (1005 if its close frame had none), the code the
    /// server closed with, or 1006 if the TCP connection ended without a
    /// close handshake. Sends from here are discarded.
    fn on_close(&self, conn: &mut Conn<'_, Self::State>, code: CloseCode, reason: &str) {
        let _ = (conn, code, reason);
    }

    /// A message past the connection's
    /// [`message_rate`](crate::ServerBuilder::message_rate) (`text` for a
    /// text message), not given to `on_message`. Default: close with 1008;
    /// a protocol with replies may answer with an error instead (the server
    /// closes with 1008 anyway once the client sends a burst's worth more).
    fn on_rate_limited(&self, conn: &mut Conn<'_, Self::State>, text: Option<&str>) {
        let _ = text;
        conn.close(CloseCode::POLICY_VIOLATION, "message rate exceeded");
    }

    /// The server has just pinged this connection (every
    /// [`ping_interval`](crate::ServerConfig::ping_interval)), for protocols
    /// with heartbeats of their own (Amber's `ping` text frame).
    fn on_heartbeat(&self, conn: &mut Conn<'_, Self::State>) {
        let _ = conn;
    }
}

/// What the event loop needs from whoever handles its connections: the
/// [`Handler`] callbacks, and how broadcasts reach subscriptions that are
/// not plain (`crate`-internal, for the channels layer).
///
/// Every [`Handler`] is a `Service` whose subscriptions are all plain; the
/// channels layer implements `Service` itself.
pub(crate) trait Service: Send + Sync + 'static {
    /// Per-connection state.
    type State: Send + 'static;

    /// See [`Handler::on_connect`]; a service may also decide later, off
    /// the loop, with a [`PendingConnect`](super::PendingConnect) from
    /// `later`.
    fn on_connect(&self, request: &Request, later: Later<'_>) -> Connecting<Self::State>;
    /// A decision a [`PendingConnect`](super::PendingConnect) sent back,
    /// on the loop.
    fn on_connect_decided(&self, decision: Decision) -> Result<Accept<Self::State>, Reject> {
        let _ = decision;
        Err(Reject::with_status(500))
    }
    /// See [`Handler::on_open`].
    fn on_open(&self, conn: &mut Conn<'_, Self::State>);
    /// See [`Handler::on_message`].
    fn on_message(&self, conn: &mut Conn<'_, Self::State>, text: Utf8Bytes);
    /// See [`Handler::on_binary`].
    fn on_binary(&self, conn: &mut Conn<'_, Self::State>, data: Bytes);
    /// See [`Handler::on_ping`].
    fn on_ping(&self, conn: &mut Conn<'_, Self::State>, payload: Bytes);
    /// See [`Handler::on_pong`].
    fn on_pong(&self, conn: &mut Conn<'_, Self::State>, payload: Bytes);
    /// See [`Handler::on_close`].
    fn on_close(&self, conn: &mut Conn<'_, Self::State>, code: CloseCode, reason: &str);
    /// See [`Handler::on_heartbeat`].
    fn on_heartbeat(&self, conn: &mut Conn<'_, Self::State>);
    /// See [`Handler::on_rate_limited`].
    fn on_rate_limited(&self, conn: &mut Conn<'_, Self::State>, text: Option<&str>);

    /// How `broadcast` reaches a subscription of `kind` (never
    /// [`SubscriptionKind::Plain`], which always gets its frame). Asked once
    /// per run of subscribers of the same kind, not per subscriber.
    fn delivery(&self, kind: SubscriptionKind, broadcast: &Broadcast) -> Delivery;

    /// A broadcast for a subscription whose [`delivery`](Self::delivery)
    /// is [`Delivery::Callback`].
    fn on_broadcast(
        &self,
        conn: &mut Conn<'_, Self::State>,
        kind: SubscriptionKind,
        broadcast: &Broadcast,
    );

    /// An application message sent to this connection from any thread.
    fn on_info(&self, _conn: &mut Conn<'_, Self::State>, _message: &AppMessage) {}

    /// Broadcasts of `topic`, a topic with history, skipped offsets on
    /// their way to this loop (see `worker/streams.rs`): those of stream
    /// `epoch` up to `last_missing` never came. Called for each of the
    /// loop's channel subscriptions of it, before the broadcast that
    /// showed the gap.
    fn on_stream_gap(
        &self,
        _conn: &mut Conn<'_, Self::State>,
        _topic: &str,
        _missing: (&str, u64),
    ) {
    }
}

impl<H: Handler> Service for H {
    type State = H::State;

    fn on_connect(&self, request: &Request, _: Later<'_>) -> Connecting<Self::State> {
        Connecting::Now(Handler::on_connect(self, request))
    }

    fn on_open(&self, conn: &mut Conn<'_, Self::State>) {
        Handler::on_open(self, conn);
    }

    fn on_message(&self, conn: &mut Conn<'_, Self::State>, text: Utf8Bytes) {
        Handler::on_message(self, conn, text);
    }

    fn on_binary(&self, conn: &mut Conn<'_, Self::State>, data: Bytes) {
        Handler::on_binary(self, conn, data);
    }

    fn on_ping(&self, conn: &mut Conn<'_, Self::State>, payload: Bytes) {
        Handler::on_ping(self, conn, payload);
    }

    fn on_pong(&self, conn: &mut Conn<'_, Self::State>, payload: Bytes) {
        Handler::on_pong(self, conn, payload);
    }

    fn on_close(&self, conn: &mut Conn<'_, Self::State>, code: CloseCode, reason: &str) {
        Handler::on_close(self, conn, code, reason);
    }

    fn on_heartbeat(&self, conn: &mut Conn<'_, Self::State>) {
        Handler::on_heartbeat(self, conn);
    }

    fn on_rate_limited(&self, conn: &mut Conn<'_, Self::State>, text: Option<&str>) {
        Handler::on_rate_limited(self, conn, text);
    }

    fn delivery(&self, _: SubscriptionKind, _: &Broadcast) -> Delivery {
        // A plain handler makes plain subscriptions only.
        Delivery::Frame
    }

    fn on_broadcast(&self, _: &mut Conn<'_, Self::State>, _: SubscriptionKind, _: &Broadcast) {}
}

/// Accepts an upgrade: the connection's state and, optionally, the chosen
/// subprotocol.
#[derive(Debug)]
pub struct Accept<S> {
    pub(crate) state: S,
    pub(crate) subprotocol: Option<String>,
}

impl<S> Accept<S> {
    /// Accepts with `state`.
    pub fn new(state: S) -> Self {
        Self {
            state,
            subprotocol: None,
        }
    }

    /// Echoes `protocol` in `Sec-WebSocket-Protocol`; it should be one the
    /// client offered.
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocol = Some(protocol.into());
        self
    }
}

/// Refuses an upgrade with an HTTP status and, optionally, a reason the
/// client reads in the response body.
///
/// # Examples
///
/// ```
/// use herald::Reject;
///
/// assert_eq!(Reject::unauthorized().status(), 401);
/// assert_eq!(Reject::with_status(999).status(), 400); // not an error status
///
/// let reject = Reject::forbidden().with_reason("origin not allowed");
/// assert_eq!(reject.reason(), Some("origin not allowed"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    status: u16,
    reason: Option<Box<str>>,
}

/// The longest reason a [`Reject`] keeps, in bytes.
const MAX_REJECT_REASON: usize = 256;

impl Reject {
    /// 401: missing or bad credentials.
    pub const fn unauthorized() -> Self {
        Self::with_status(401)
    }

    /// 403: authenticated, but not allowed.
    pub const fn forbidden() -> Self {
        Self::with_status(403)
    }

    /// Any 4xx or 5xx status; anything else becomes 400.
    pub const fn with_status(status: u16) -> Self {
        let status = if status >= 400 && status <= 599 {
            status
        } else {
            400
        };
        Self {
            status,
            reason: None,
        }
    }

    /// Says why, in the response body: one line, cut to 256 bytes, control
    /// characters replaced. Say what the client can fix ("token expired"),
    /// never a secret.
    pub fn with_reason(mut self, reason: &str) -> Self {
        let mut line = String::with_capacity(reason.len().min(MAX_REJECT_REASON));
        for c in reason.chars() {
            if line.len() + c.len_utf8() > MAX_REJECT_REASON {
                break;
            }
            line.push(if c.is_control() { ' ' } else { c });
        }
        self.reason = Some(line.into_boxed_str());
        self
    }

    /// The status sent.
    pub const fn status(&self) -> u16 {
        self.status
    }

    /// The reason sent, if one was given.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    pub(crate) fn into_parts(self) -> (u16, Option<Box<str>>) {
        (self.status, self.reason)
    }
}

/// One connection, as a callback sees it: its state, and ways to send to
/// it and close it.
///
/// Sends are queued and written at the end of the loop turn, together with
/// everything else queued for the same socket.
pub struct Conn<'a, S> {
    pub(crate) state: &'a mut S,
    pub(crate) outbox: &'a mut Outbox,
    /// The topics this connection is subscribed to.
    pub(crate) topics: &'a mut ThinVec<Arc<str>>,
    pub(crate) id: ConnId,
    pub(crate) ctx: &'a mut LoopContext,
}

impl<S> Conn<'_, S> {
    /// The connection's state.
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send_frame(text_frame(text))
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_frame(binary_frame(data))
    }

    /// Sends a frame encoded beforehand (see [`crate::wire`]), for instance
    /// one shared by many connections.
    pub fn send_frame(&mut self, frame: Bytes) -> Result<(), SendError> {
        let compression = self.ctx.config.compression;
        let frame = compress::for_connection(frame, self.outbox.deflate, compression);
        let result = self
            .outbox
            .enqueue(frame, &self.ctx.config, &self.ctx.stats);
        self.ctx.mark_dirty(self.id, self.outbox);
        result
    }

    /// Sends one frame written from several buffers, in order (a frame's
    /// own start and a payload shared with other frames): no copy of the
    /// shared part.
    pub(crate) fn send_frame_parts(&mut self, parts: &[Bytes]) -> Result<(), SendError> {
        let result = self
            .outbox
            .enqueue_parts(parts, &self.ctx.config, &self.ctx.stats);
        self.ctx.mark_dirty(self.id, self.outbox);
        result
    }

    /// The most bytes this connection may have queued (past it the
    /// slow-consumer policy applies).
    pub(crate) fn max_queued_bytes(&self) -> usize {
        self.ctx.config.max_queued_bytes
    }

    /// Whether this connection takes frames compressed (it negotiated
    /// permessage-deflate, and the server compresses).
    pub(crate) fn takes_compressed(&self) -> bool {
        self.outbox.deflate && self.ctx.config.compression.is_some()
    }

    /// Starts the close handshake with `code` and `reason` (at most 123
    /// bytes; longer reasons are cut at a character boundary). A code that
    /// may not be sent becomes 1000.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.outbox.queue_close(code, reason);
        self.ctx.mark_dirty(self.id, self.outbox);
    }

    /// Whether the connection is closing (a close frame has been queued).
    pub fn is_closing(&self) -> bool {
        self.outbox.is_closing()
    }

    /// Counts a panic caught in a callback of a layer above (channels).
    pub(crate) fn count_panic(&mut self) {
        bump(&self.ctx.stats.handler_panics, 1);
    }

    /// A handle to this connection for other threads.
    pub fn handle(&self) -> ConnHandle {
        self.ctx.handle_for(self.id)
    }

    /// Names this connection with `id` (a user, a device), so that
    /// [`ServerHandle::disconnect`](crate::ServerHandle::disconnect) can
    /// close every connection of that name, on every loop and every node.
    /// A connection has at most one name; naming it again replaces it.
    pub fn set_id(&mut self, id: &str) {
        self.ctx.names.insert(id, self.id);
    }

    /// Subscribes this connection to `topic`: frames published to it (by
    /// [`publish`](Self::publish) on any connection, or
    /// [`ServerHandle::publish`](crate::ServerHandle::publish) from any
    /// thread) are sent to it as they are. Returns `false` if it was already
    /// subscribed. Subscriptions end with the connection.
    ///
    /// This is the plain-WebSocket pub/sub of uWebSockets; the channels
    /// layer builds Phoenix and Amber topics on the same index.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.subscribe_as(topic, Sub::plain(WireProtocol::Raw))
    }

    /// Subscribes with the protocol whose frame the subscription gets and
    /// its kind, for protocol layers. Returns `false` if the connection was
    /// already subscribed (its subscription is replaced).
    pub(crate) fn subscribe_as(&mut self, topic: &str, mut sub: Sub) -> bool {
        // A connection that negotiated permessage-deflate takes broadcasts
        // compressed (once per broadcast, for all such subscribers); a
        // server-side subscription takes no frame at all.
        sub.deflate = self.takes_compressed() && sub.kind != SubscriptionKind::Server;
        if self.topics.iter().any(|t| &**t == topic) {
            self.ctx.topics.subscribe(topic, self.id, sub);
            return false;
        }
        let topic: Arc<str> = Arc::from(topic);
        self.ctx.topics.subscribe(&topic, self.id, sub);
        self.topics.push(topic);
        true
    }

    /// Unsubscribes this connection from `topic`. Returns `false` if it was
    /// not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let Some(position) = self.topics.iter().position(|t| &**t == topic) else {
            return false;
        };
        self.topics.swap_remove(position);
        self.ctx.topics.unsubscribe(topic, self.id);
        true
    }

    /// The topics this connection is subscribed to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().map(|topic| &**topic)
    }

    /// Sends `frame`, encoded once by the caller, to every subscriber of
    /// `topic` on every loop (and every node, with a cluster), except this
    /// connection. Delivered when the callback returns, within the same loop
    /// turn.
    pub fn publish(&mut self, topic: &str, frame: Bytes) {
        self.broadcast(Broadcast::raw(topic, frame), false);
    }

    /// Sends a broadcast to every subscriber of its topic on every loop;
    /// this connection too if `include_self`. Delivered when the callback
    /// returns, within the same loop turn.
    pub(crate) fn broadcast(&mut self, broadcast: Broadcast, include_self: bool) {
        let mut broadcast = if include_self {
            broadcast
        } else {
            broadcast.excluding(self.ctx.loop_index, self.id)
        };
        let registry = self.ctx.topics.registry();
        compress::compress_broadcast(&mut broadcast, registry, self.ctx.config.compression);
        self.ctx.publishes.push(Arc::new(broadcast));
    }

    /// The place in `topic`'s stream of the last broadcast this loop
    /// delivered (for a topic with history that has subscribers here).
    pub(crate) fn stream_place(&self, topic: &str) -> Option<(Arc<str>, u64)> {
        self.ctx.topics.local().stream_place(topic).cloned()
    }

    /// Starts this loop's place in `topic`'s stream at `place` if it has
    /// none (a join's read of the history saw the stream there).
    pub(crate) fn seed_stream_place(&mut self, topic: &str, place: (Arc<str>, u64)) {
        let local = self.ctx.topics.local_mut();
        if local.stream_place(topic).is_none() {
            local.set_stream_place(topic, place);
        }
    }

    /// This connection as a broadcast names the one it excludes: its
    /// loop and its id there.
    pub(crate) fn exclusion(&self) -> (usize, ConnId) {
        (self.ctx.loop_index, self.id)
    }

    /// What the shared index knows of `topic`: which protocols its
    /// subscribers speak, so that a broadcast is encoded only for those.
    pub(crate) fn topic(&self, topic: &str) -> Option<TopicEntry> {
        self.ctx.topics.registry().lookup(topic)
    }
}

impl<S> std::fmt::Debug for Conn<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("queued_bytes", &self.outbox.queued_bytes())
            .finish()
    }
}

/// A shared handler: keep an `Arc` to read the application's own state
/// from other threads while the server runs.
impl<H: Handler> Handler for Arc<H> {
    type State = H::State;

    fn on_connect(&self, request: &Request) -> Result<Accept<Self::State>, Reject> {
        (**self).on_connect(request)
    }

    fn on_open(&self, conn: &mut Conn<'_, Self::State>) {
        (**self).on_open(conn);
    }

    fn on_message(&self, conn: &mut Conn<'_, Self::State>, text: Utf8Bytes) {
        (**self).on_message(conn, text);
    }

    fn on_binary(&self, conn: &mut Conn<'_, Self::State>, data: Bytes) {
        (**self).on_binary(conn, data);
    }

    fn on_ping(&self, conn: &mut Conn<'_, Self::State>, payload: Bytes) {
        (**self).on_ping(conn, payload);
    }

    fn on_pong(&self, conn: &mut Conn<'_, Self::State>, payload: Bytes) {
        (**self).on_pong(conn, payload);
    }

    fn on_close(&self, conn: &mut Conn<'_, Self::State>, code: CloseCode, reason: &str) {
        (**self).on_close(conn, code, reason);
    }

    fn on_heartbeat(&self, conn: &mut Conn<'_, Self::State>) {
        (**self).on_heartbeat(conn);
    }

    fn on_rate_limited(&self, conn: &mut Conn<'_, Self::State>, text: Option<&str>) {
        (**self).on_rate_limited(conn, text);
    }
}
