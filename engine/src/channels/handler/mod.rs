//! The channels layer as a [`Handler`] of the event-loop server: decodes
//! each endpoint's wire protocol, routes topics to channels, keeps each
//! connection's joined topics, and decides per subscription how a broadcast
//! reaches it.

use std::{
    any::Any,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use bytes::Bytes;
use serde_json::value::RawValue;

mod recovery;

pub(crate) use recovery::Recovering;
use recovery::{Held, forget_recovery, is_recovering};

use super::{
    LeaveReason, Reply,
    context::{ChannelInfo, JoinInfo, Removal, send_presence_state},
    deferred::{ConnectDecision, JoinAnswer, Via},
    engine::{Call, CallSite, Mount},
    history::{Histories, RecoveryAnswer, StreamPosition, requested},
    presence::{PresenceTracker, Tracked},
    stats::{ChannelCounters, count},
    timers::Timers,
};
use crate::{
    broadcast::{Broadcast, Delivery},
    handshake::Request,
    protocol::{
        Encoding, WireProtocol, amber,
        phoenix::{self, OwnedRef, Ref, Status},
    },
    pubsub::{Sub, SubscriptionKind},
    reactor::{Accept, AppMessage, Conn, Connecting, Decision, Later, Reject, Service},
    wire::{CloseCode, Utf8Bytes},
};

/// The reply to a join or push of a topic no route matches.
const UNMATCHED_TOPIC: &str = "unmatched topic";
/// The subject of the message an Amber client gets when its join is
/// refused (payload: the refusal, `{"reason": ...}`).
pub(crate) const AMBER_JOIN_ERROR: &str = "join_error";
/// The reply past the per-connection channel limit.
const TOO_MANY_CHANNELS: &str = "too many channels joined";

/// A connection's state in the channels layer.
pub(crate) struct ChannelConn {
    endpoint: u16,
    protocol: WireProtocol,
    /// The socket's assigns; taken out while a channel callback holds them.
    assigns: Option<Box<dyn Any + Send>>,
    joined: Vec<JoinInfo>,
    /// Joins left for later ([`ChannelContext::join_later`]), waiting for
    /// their answer.
    ///
    /// [`ChannelContext::join_later`]: super::ChannelContext::join_later
    pending_joins: Vec<PendingJoin>,
    /// The id of the last join left for later.
    pub(crate) next_join_id: u64,
    /// Set by `join_later` during a join callback: the id it gave out.
    pub(crate) deferred_join: Option<u64>,
    /// Server-side subscriptions: (topic, the joined topic that made it).
    pub(crate) infos: Vec<(Arc<str>, Arc<str>)>,
    /// The socket's id, to name the connection with once it opens.
    socket_id: Option<Box<str>>,
    /// The presences this connection tracks, untracked when their channel
    /// ends.
    pub(crate) tracked: Vec<Tracked>,
    /// Pushes made by a join callback, sent after its reply.
    pub(crate) after_join: Vec<Bytes>,
    /// Whether the join being handled asked for `presence_state` after its
    /// reply.
    pub(crate) presence_state_after_join: bool,
    /// Whether the channel whose callback is running asked to stop.
    pub(crate) stopping: bool,
    /// Each channel's own assigns, by joined topic.
    pub(crate) channel_assigns: Vec<(Arc<str>, Box<dyn Any + Send>)>,
    /// Joined topics recovering their history.
    recovering: Vec<Recovering>,
}

/// A join waiting for its [`JoinLater`](super::JoinLater) answer.
#[derive(Debug)]
struct PendingJoin {
    join: JoinInfo,
    msg_ref: Option<OwnedRef>,
    id: u64,
    /// The position the client asked to recover from.
    recover: Option<StreamPosition>,
}

impl ChannelConn {
    /// The channels (by joined topic) that subscribe to `topic` on the
    /// server side.
    fn server_subscribers(&self, topic: &str) -> Vec<Arc<str>> {
        self.infos
            .iter()
            .filter(|(info, _)| &**info == topic)
            .map(|(_, owner)| Arc::clone(owner))
            .collect()
    }
}

/// Sets the connection's one entry in the topic index for `topic` to what
/// its channels hold there: the client's join (alone, or with server-side
/// subscriptions beside it), server-side subscriptions only, or nothing. A
/// connection's subscriptions to one topic compose: each gets its own
/// delivery, and ending one leaves the others.
pub(crate) fn resubscribe(conn: &mut Conn<'_, ChannelConn>, topic: &str) {
    let state = conn.state();
    let with_server = state.infos.iter().any(|(info, _)| &**info == topic);
    let recovering = is_recovering(state, topic);
    let endpoint = state.endpoint;
    let join = state
        .joined
        .iter()
        .find(|join| &*join.topic == topic)
        .map(|join| (join.protocol, join.route));
    match (join, with_server) {
        (Some((protocol, route)), with_server) => {
            let kind = SubscriptionKind::Join {
                endpoint,
                route,
                with_server,
                recovering,
            };
            conn.subscribe_as(
                topic,
                Sub {
                    protocol,
                    kind,
                    deflate: false,
                },
            );
        }
        (None, true) => {
            conn.subscribe_as(topic, Sub::server());
        }
        (None, false) => {
            conn.unsubscribe(topic);
        }
    }
}

impl std::fmt::Debug for ChannelConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConn")
            .field("endpoint", &self.endpoint)
            .field("joined", &self.joined)
            .finish()
    }
}

/// The channels layer's handler.
pub(crate) struct ChannelsHandler {
    pub(crate) mounts: Vec<Mount>,
    pub(crate) max_channels: usize,
    pub(crate) counters: Arc<ChannelCounters>,
    pub(crate) presence: Arc<PresenceTracker>,
    pub(crate) timers: Arc<Timers>,
    pub(crate) history: Arc<Histories>,
}

/// How a channel callback ended.
#[derive(Debug)]
enum Ran {
    /// A join callback returned its result.
    Joined(super::JoinResult),
    /// Another callback returned.
    Done,
    /// It panicked (or could not run: no such route, assigns taken).
    Failed,
}

impl ChannelsHandler {
    fn mount(&self, conn: &mut Conn<'_, ChannelConn>) -> Option<&Mount> {
        self.mounts.get(usize::from(conn.state().endpoint))
    }

    /// Runs one channel callback with the connection's assigns, catching
    /// panics. Returns `None` if it panicked.
    fn run(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        join: &JoinInfo,
        msg_ref: Option<Ref<'_>>,
        call: Call<'_>,
    ) -> Ran {
        let endpoint = usize::from(conn.state().endpoint);
        let Some(mount) = self.mounts.get(endpoint) else {
            return Ran::Failed;
        };
        let Some(mut assigns) = conn.state().assigns.take() else {
            return Ran::Failed;
        };
        // A stop asked for belongs to this callback only (see `settle`).
        conn.state().stopping = false;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let site = CallSite {
                join,
                msg_ref,
                presence: &self.presence,
                timers: &self.timers,
                history: &self.history,
            };
            mount.endpoint.call(&mut *assigns, conn, site, call)
        }));
        conn.state().assigns = Some(assigns);
        match outcome {
            Ok(Some(result)) => Ran::Joined(result),
            Ok(None) => Ran::Done,
            Err(_) => {
                conn.count_panic();
                tracing::error!(
                    topic = &*join.topic,
                    "a channel callback panicked; closing the channel"
                );
                Ran::Failed
            }
        }
    }

    /// After a callback of a joined channel: a panic crashes the channel,
    /// and a [`stop`](super::ChannelContext::stop) ends it.
    fn settle(&self, conn: &mut Conn<'_, ChannelConn>, join: &JoinInfo, ran: Ran) {
        let stopping = std::mem::take(&mut conn.state().stopping);
        if let Ran::Failed = ran {
            self.crash(conn, join);
        } else if stopping && Self::joined(conn, &join.topic).is_some() {
            self.stop_channel(conn, join);
        }
    }

    /// Ends a channel that asked to: `phx_close` to a Phoenix client, its
    /// `handle_leave`, and its subscriptions go.
    fn stop_channel(&self, conn: &mut Conn<'_, ChannelConn>, join: &JoinInfo) {
        self.end_channel(conn, join, LeaveReason::Stopped);
    }

    /// Ends a channel from the server's side: `phx_close` to a Phoenix
    /// client, its `handle_leave` with `reason`, and its subscriptions go.
    fn end_channel(&self, conn: &mut Conn<'_, ChannelConn>, join: &JoinInfo, reason: LeaveReason) {
        if join.protocol == WireProtocol::PhoenixV2 {
            let _ = conn.send_frame(phoenix::close(join.join_ref(), &join.topic));
        }
        self.run(conn, join, None, Call::Leave(reason));
        conn.state().stopping = false;
        self.forget(conn, &join.topic);
    }

    /// Ends a channel whose topic's stream skipped offsets on their way
    /// here: `phx_error` to a Phoenix client (which joins again and
    /// recovers the missed ones), `handle_leave` with [`LeaveReason::Gap`],
    /// and its subscriptions go.
    fn resync(&self, conn: &mut Conn<'_, ChannelConn>, topic: &str) {
        // Amber clients cannot recover: they go on without what was lost.
        let Some(join) = Self::joined(conn, topic).filter(|join| self.history_rule(join).is_some())
        else {
            return;
        };
        count(&self.counters.gap_resyncs);
        tracing::info!(
            topic,
            "publications never reached this node's loop; the client rejoins to recover them"
        );
        if join.protocol == WireProtocol::PhoenixV2 {
            let _ = conn.send_frame(phoenix::error(join.join_ref(), &join.topic));
        }
        self.run(conn, &join, None, Call::Leave(LeaveReason::Gap));
        conn.state().stopping = false;
        self.forget(conn, topic);
    }

    /// Ends a channel after a panic: `phx_error` to a Phoenix client, and
    /// its subscriptions go.
    fn crash(&self, conn: &mut Conn<'_, ChannelConn>, join: &JoinInfo) {
        if join.protocol == WireProtocol::PhoenixV2 {
            let _ = conn.send_frame(phoenix::error(join.join_ref(), &join.topic));
        }
        self.forget(conn, &join.topic);
    }

    /// Removes a joined topic and the server-side subscriptions it made;
    /// other subscriptions to the same topics stay.
    fn forget(&self, conn: &mut Conn<'_, ChannelConn>, topic: &str) {
        count(&self.counters.leaves);
        let presence = &self.presence;
        let state = conn.state();
        state.joined.retain(|join| &*join.topic != topic);
        state.channel_assigns.retain(|(owner, _)| &**owner != topic);
        forget_recovery(state, topic);
        state.tracked.retain(|tracked| {
            let ends = &*tracked.topic == topic;
            if ends {
                presence.untrack(tracked);
            }
            !ends
        });
        let mut gone = Vec::new();
        state.infos.retain(|(info, owner)| {
            let keep = &**owner != topic;
            if !keep {
                gone.push(Arc::clone(info));
            }
            keep
        });
        resubscribe(conn, topic);
        for info in gone {
            resubscribe(conn, &info);
        }
    }

    fn joined(conn: &mut Conn<'_, ChannelConn>, topic: &str) -> Option<JoinInfo> {
        conn.state()
            .joined
            .iter()
            .find(|join| &*join.topic == topic)
            .cloned()
    }

    // ---- Phoenix V2 ------------------------------------------------------------

    fn phoenix_text(&self, conn: &mut Conn<'_, ChannelConn>, text: &str) {
        let message = match phoenix::decode_text(text) {
            Ok(message) => message,
            Err(err) => {
                tracing::debug!(%err, "dropped a malformed Phoenix message");
                return;
            }
        };
        let phoenix::Payload::Json(payload) = message.payload else {
            return;
        };
        let (join_ref, msg_ref) = (message.join_ref, message.msg_ref);
        match (&*message.topic, &*message.event) {
            (phoenix::HEARTBEAT_TOPIC, phoenix::HEARTBEAT) => {
                let frame = phoenix::reply(
                    Ref::NULL,
                    msg_ref,
                    phoenix::HEARTBEAT_TOPIC,
                    Status::Ok,
                    Reply::empty().as_raw(),
                );
                let _ = conn.send_frame(frame);
            }
            (topic, phoenix::JOIN) => self.join(conn, topic, join_ref, Some(msg_ref), payload),
            (topic, phoenix::LEAVE) => self.leave(conn, topic, join_ref, Some(msg_ref)),
            (topic, event) => self.message(conn, topic, event, join_ref, Some(msg_ref), payload),
        }
    }

    fn phoenix_reply(
        conn: &mut Conn<'_, ChannelConn>,
        join_ref: Ref<'_>,
        msg_ref: Option<Ref<'_>>,
        topic: &str,
        status: Status,
        response: &Reply,
    ) {
        if conn.state().protocol != WireProtocol::PhoenixV2 {
            return;
        }
        let msg_ref = msg_ref.unwrap_or(Ref::NULL);
        let frame = phoenix::reply(join_ref, msg_ref, topic, status, response.as_raw());
        let _ = conn.send_frame(frame);
    }

    /// The error reply for a topic no route matches, or one not joined.
    fn unmatched(
        conn: &mut Conn<'_, ChannelConn>,
        join_ref: Ref<'_>,
        msg_ref: Option<Ref<'_>>,
        topic: &str,
    ) {
        Self::phoenix_reply(
            conn,
            join_ref,
            msg_ref,
            topic,
            Status::Error,
            &Reply::reason(UNMATCHED_TOPIC),
        );
    }

    // ---- Amber -------------------------------------------------------------------

    fn amber_text(&self, conn: &mut Conn<'_, ChannelConn>, text: &str) {
        let message = match amber::decode(text) {
            Ok(message) => message,
            Err(err) => {
                tracing::debug!(%err, "dropped a malformed Amber message");
                return;
            }
        };
        let payload = message.payload.unwrap_or(RawValue::NULL);
        // Amber has no refs.
        let no_ref = Ref::NULL;
        match message.event {
            amber::Event::Join => self.join(conn, &message.topic, no_ref, None, payload),
            amber::Event::Leave => self.leave(conn, &message.topic, no_ref, None),
            amber::Event::Message => {
                let subject = &message.subject;
                self.message(conn, &message.topic, subject, no_ref, None, payload);
            }
        }
    }

    // ---- Both protocols ----------------------------------------------------------

    fn join(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        topic: &str,
        join_ref: Ref<'_>,
        msg_ref: Option<Ref<'_>>,
        payload: &RawValue,
    ) {
        let protocol = conn.state().protocol;
        let Some(route) = self
            .mount(conn)
            .and_then(|mount| mount.endpoint.route(topic))
        else {
            count(&self.counters.joins_refused);
            return Self::unmatched(conn, join_ref, msg_ref, topic);
        };
        if let Some(old) = Self::joined(conn, topic) {
            self.replace(conn, &old);
        }
        // A join of a topic whose earlier join waits for its answer
        // replaces it: that answer will find nothing to finish.
        conn.state()
            .pending_joins
            .retain(|p| &*p.join.topic != topic);
        let state = conn.state();
        if state.joined.len() + state.pending_joins.len() >= self.max_channels {
            count(&self.counters.joins_refused);
            let refusal = Reply::reason(TOO_MANY_CHANNELS);
            return Self::phoenix_reply(conn, join_ref, msg_ref, topic, Status::Error, &refusal);
        }
        let join = JoinInfo {
            topic: Arc::from(topic),
            join_ref: OwnedRef::keep(join_ref),
            protocol,
            route,
        };
        let recover = match self.history_rule(&join).map(|_| requested(payload)) {
            Some(Err(invalid)) => {
                count(&self.counters.joins_refused);
                let refusal = Reply::reason(invalid);
                return Self::phoenix_reply(
                    conn,
                    join_ref,
                    msg_ref,
                    topic,
                    Status::Error,
                    &refusal,
                );
            }
            Some(Ok(recover)) => recover,
            None => None,
        };
        let ran = self.run(conn, &join, None, Call::Join(payload));
        self.conclude_join(conn, join, msg_ref, ran, recover);
    }

    /// Joins, refuses, or (if the callback called `join_later`) waits.
    fn conclude_join(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        join: JoinInfo,
        msg_ref: Option<Ref<'_>>,
        ran: Ran,
        recover: Option<StreamPosition>,
    ) {
        let topic = &*Arc::clone(&join.topic);
        if let Some(id) = conn.state().deferred_join.take() {
            self.discard_join(conn, topic);
            if !matches!(ran, Ran::Failed) {
                let msg_ref = msg_ref.and_then(OwnedRef::keep);
                let pending = PendingJoin {
                    join,
                    msg_ref,
                    id,
                    recover,
                };
                conn.state().pending_joins.push(pending);
                return;
            }
        }
        let join_ref = join.join_ref();
        let (status, response) = match ran {
            Ran::Joined(Ok(response)) => {
                count(&self.counters.joins);
                conn.state().joined.push(join.clone());
                if let Some(rule) = self.history_rule(&join) {
                    return self.start_recovery(conn, join, msg_ref, response, rule, recover);
                }
                resubscribe(conn, topic);
                Self::phoenix_reply(conn, join_ref, msg_ref, topic, Status::Ok, &response);
                return self.after_join(conn, &join);
            }
            Ran::Joined(Err(response)) => (Status::Error, response),
            Ran::Done | Ran::Failed => (Status::Error, Reply::reason("join crashed")),
        };
        count(&self.counters.joins_refused);
        self.discard_join(conn, topic);
        if join.protocol == WireProtocol::Amber {
            // Amber has no replies: the refusal comes as a message the
            // client's channel can listen for.
            let _ = conn.send_frame(amber::message(topic, AMBER_JOIN_ERROR, response.as_raw()));
        }
        Self::phoenix_reply(conn, join_ref, msg_ref, topic, status, &response);
    }

    /// The answer to a join left for later: finish it, unless it was
    /// replaced or left meanwhile.
    fn join_answered(&self, conn: &mut Conn<'_, ChannelConn>, answer: &JoinAnswer) {
        let pending = &mut conn.state().pending_joins;
        let Some(at) = pending
            .iter()
            .position(|p| p.id == answer.id && p.join.topic == answer.topic)
        else {
            return;
        };
        let PendingJoin {
            join,
            msg_ref,
            recover,
            ..
        } = pending.swap_remove(at);
        let msg_ref = msg_ref.as_ref().map(OwnedRef::get);
        let ran = match &answer.message {
            Some(message) => self.run(conn, &join, None, Call::JoinAnswer(&**message)),
            None => Ran::Joined(Err(Reply::reason("join not answered"))),
        };
        self.conclude_join(conn, join, msg_ref, ran, recover);
    }

    /// After an accepted join's reply: the `presence_state` its callback
    /// asked for, then what it pushed.
    fn after_join(&self, conn: &mut Conn<'_, ChannelConn>, join: &JoinInfo) {
        let state = conn.state();
        let pushes = std::mem::take(&mut state.after_join);
        if std::mem::take(&mut state.presence_state_after_join) {
            send_presence_state(conn, join, &self.presence);
        }
        for frame in pushes {
            let _ = conn.send_frame(frame);
        }
    }

    /// After a refused join: what its callback pushed or tracked goes.
    fn discard_join(&self, conn: &mut Conn<'_, ChannelConn>, topic: &str) {
        let presence = &self.presence;
        let state = conn.state();
        state.after_join.clear();
        state.presence_state_after_join = false;
        state.tracked.retain(|tracked| {
            let refused = &*tracked.topic == topic;
            if refused {
                presence.untrack(tracked);
            }
            !refused
        });
    }

    /// A second join of a joined topic: Phoenix closes the old channel (with
    /// the OLD join ref) before the new join.
    fn replace(&self, conn: &mut Conn<'_, ChannelConn>, old: &JoinInfo) {
        if old.protocol == WireProtocol::PhoenixV2 {
            let _ = conn.send_frame(phoenix::close(old.join_ref(), &old.topic));
        }
        if let Ran::Failed = self.run(conn, old, None, Call::Leave(LeaveReason::Rejoined)) {
            tracing::debug!(topic = &*old.topic, "handle_leave panicked on rejoin");
        }
        self.forget(conn, &old.topic);
    }

    fn leave(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        topic: &str,
        join_ref: Ref<'_>,
        msg_ref: Option<Ref<'_>>,
    ) {
        conn.state()
            .pending_joins
            .retain(|p| &*p.join.topic != topic);
        if let Some(join) = Self::joined(conn, topic) {
            if join.protocol == WireProtocol::PhoenixV2 && join.join_ref() != join_ref {
                // A leave for an older join of this topic: Phoenix ignores
                // messages whose join ref is stale.
                return;
            }
            self.run(conn, &join, None, Call::Leave(LeaveReason::Left));
            self.forget(conn, topic);
        }
        Self::phoenix_reply(conn, join_ref, msg_ref, topic, Status::Ok, &Reply::empty());
    }

    fn message(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        topic: &str,
        event: &str,
        join_ref: Ref<'_>,
        msg_ref: Option<Ref<'_>>,
        payload: &RawValue,
    ) {
        let Some(join) = Self::joined(conn, topic) else {
            return Self::unmatched(conn, join_ref, msg_ref, topic);
        };
        if join.protocol == WireProtocol::PhoenixV2 && join.join_ref() != join_ref {
            return;
        }
        count(&self.counters.client_messages);
        let msg_ref = msg_ref.filter(|r| !r.is_null());
        let ran = self.run(conn, &join, msg_ref, Call::Message(event, payload));
        self.settle(conn, &join, ran);
    }

    /// A binary V2 push from a Phoenix client.
    fn binary(&self, conn: &mut Conn<'_, ChannelConn>, data: &[u8]) {
        let push = match phoenix::decode_binary(data) {
            Ok(push) => push,
            Err(err) => {
                tracing::debug!(%err, "dropped a malformed binary message");
                return;
            }
        };
        // Binary frames carry refs bare; replies write them as JSON.
        let join_ref = OwnedRef::from_value(push.join_ref);
        let msg_ref = (!push.msg_ref.is_empty()).then(|| OwnedRef::from_value(push.msg_ref));
        let msg_ref = msg_ref.as_ref().map(OwnedRef::get);
        let Some(join) = Self::joined(conn, push.topic) else {
            return Self::unmatched(conn, join_ref.get(), msg_ref, push.topic);
        };
        if join.join_ref() != join_ref.get() {
            return;
        }
        let ran = self.run(conn, &join, msg_ref, Call::Binary(push.event, push.data));
        self.settle(conn, &join, ran);
    }

    /// A broadcast that a subscription takes as a callback: one the
    /// client's channel intercepts, and the server-side subscriptions of
    /// the connection's channels.
    fn channel_broadcast(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        kind: SubscriptionKind,
        broadcast: &Broadcast,
    ) {
        match kind {
            SubscriptionKind::Join {
                endpoint,
                route,
                with_server,
                recovering,
            } => {
                if with_server {
                    self.deliver_to_server_subscribers(conn, broadcast);
                }
                if recovering && matches!(self.hold_or_skip(conn, broadcast), Held::Taken) {
                    return;
                }
                if self.intercepts(endpoint, route, broadcast) {
                    self.deliver_out(conn, broadcast);
                } else if with_server || recovering {
                    Self::send_shared_frame(conn, broadcast);
                }
            }
            SubscriptionKind::Server => self.deliver_to_server_subscribers(conn, broadcast),
            SubscriptionKind::Plain => {}
        }
    }

    /// The client's own delivery of a broadcast it takes as a callback:
    /// `handle_out` if its channel intercepts the event, else the shared
    /// frame.
    fn deliver_to_client(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        join: &JoinInfo,
        broadcast: &Broadcast,
    ) {
        let endpoint = conn.state().endpoint;
        if self.intercepts(endpoint, join.route, broadcast) {
            self.deliver_out(conn, broadcast);
        } else {
            Self::send_shared_frame(conn, broadcast);
        }
    }

    /// The shared frame (the compressed one, made once, if the client
    /// takes it).
    fn send_shared_frame(conn: &mut Conn<'_, ChannelConn>, broadcast: &Broadcast) {
        let encoding = Encoding {
            protocol: conn.state().protocol,
            deflate: conn.takes_compressed(),
        };
        if let Some(frame) = broadcast.frame_for(encoding) {
            let _ = conn.send_frame(frame.clone());
        }
    }

    /// Whether the channel of `route` intercepts `broadcast`'s event.
    fn intercepts(&self, endpoint: u16, route: u16, broadcast: &Broadcast) -> bool {
        broadcast.event().is_some_and(|event| {
            self.mounts
                .get(usize::from(endpoint))
                .is_some_and(|mount| mount.endpoint.intercepts(route, event))
        })
    }

    /// `handle_out` of the client's channel for an intercepted broadcast.
    fn deliver_out(&self, conn: &mut Conn<'_, ChannelConn>, broadcast: &Broadcast) {
        let (Some(event), Some(payload)) = (broadcast.event(), broadcast.payload()) else {
            return;
        };
        if let Some(join) = Self::joined(conn, broadcast.topic()) {
            let ran = self.run(conn, &join, None, Call::Out(event, payload));
            self.settle(conn, &join, ran);
        }
    }

    /// `handle_info` of every channel that subscribes to the broadcast's
    /// topic on the server side, in the order they subscribed.
    fn deliver_to_server_subscribers(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        broadcast: &Broadcast,
    ) {
        for owner in conn.state().server_subscribers(broadcast.topic()) {
            if let Some(join) = Self::joined(conn, &owner) {
                let ran = self.run(conn, &join, None, Call::Info(broadcast));
                self.settle(conn, &join, ran);
            }
        }
    }

    /// An application message for one of the connection's channels, or
    /// the server taking the client off a topic.
    fn app_info(&self, conn: &mut Conn<'_, ChannelConn>, message: &AppMessage) {
        if let Some(removal) = message.downcast_ref::<Removal>() {
            if let Some(join) = Self::joined(conn, &removal.topic) {
                self.end_channel(conn, &join, LeaveReason::Removed);
            }
            // A join still waiting for its answer is refused now.
            let pending = &mut conn.state().pending_joins;
            if let Some(at) = pending.iter().position(|p| p.join.topic == removal.topic) {
                let PendingJoin { join, msg_ref, .. } = pending.swap_remove(at);
                let msg_ref = msg_ref.as_ref().map(OwnedRef::get);
                let refused = Ran::Joined(Err(Reply::reason("removed")));
                self.conclude_join(conn, join, msg_ref, refused, None);
            }
            return;
        }
        if let Some(answer) = message.downcast_ref::<JoinAnswer>() {
            return self.join_answered(conn, answer);
        }
        if let Some(answer) = message.downcast_ref::<RecoveryAnswer>() {
            return self.recovery_answered(conn, answer);
        }
        let Some(info) = message.downcast_ref::<ChannelInfo>() else {
            return;
        };
        if let Some(join) = Self::joined(conn, &info.topic) {
            let ran = self.run(conn, &join, None, Call::AppInfo(&*info.message));
            self.settle(conn, &join, ran);
        }
    }
}

impl ChannelsHandler {
    /// A connection accepted with `assigns` and `socket_id`.
    fn accept(
        &self,
        via: Via,
        (assigns, socket_id): (Box<dyn Any + Send>, Option<String>),
    ) -> Accept<ChannelConn> {
        let protocol = self.mounts[usize::from(via.endpoint)].protocol;
        let state = ChannelConn {
            endpoint: via.endpoint,
            protocol,
            assigns: Some(assigns),
            joined: Vec::new(),
            pending_joins: Vec::new(),
            next_join_id: 0,
            deferred_join: None,
            infos: Vec::new(),
            socket_id: socket_id.map(String::into_boxed_str),
            tracked: Vec::new(),
            after_join: Vec::new(),
            presence_state_after_join: false,
            stopping: false,
            channel_assigns: Vec::new(),
            recovering: Vec::new(),
        };
        let accept = Accept::new(state);
        if via.phoenix_subprotocol {
            accept.subprotocol("phoenix")
        } else {
            accept
        }
    }
}

impl Service for ChannelsHandler {
    type State = ChannelConn;

    fn on_connect(&self, request: &Request, later: Later<'_>) -> Connecting<ChannelConn> {
        let Some((index, mount)) = self
            .mounts
            .iter()
            .enumerate()
            .find(|(_, mount)| mount.path == request.path())
        else {
            return Connecting::Now(Err(Reject::with_status(404)));
        };
        if mount.protocol == WireProtocol::PhoenixV2 {
            // This server speaks the V2 serializer; phoenix.js sends
            // vsn=2.0.0 itself.
            let vsn = request.query_param("vsn");
            if vsn.as_deref().is_some_and(|vsn| !vsn.starts_with("2.")) {
                return Connecting::Now(Err(Reject::with_status(400)));
            }
        }
        let via = Via {
            endpoint: index as u16,
            // Token auth travels in Sec-WebSocket-Protocol; a server that
            // reads it must echo "phoenix".
            phoenix_subprotocol: request.subprotocols().any(|p| p == "phoenix"),
        };
        match mount.endpoint.connect_later(request, later.pending(), via) {
            Ok(()) => Connecting::Later,
            Err(pending) => {
                pending.disarm();
                let decision = mount.endpoint.connect(request);
                Connecting::Now(decision.map(|decided| self.accept(via, decided)))
            }
        }
    }

    fn on_connect_decided(&self, decision: Decision) -> Result<Accept<ChannelConn>, Reject> {
        let decision = decision
            .downcast::<ConnectDecision>()
            .map_err(|_| Reject::with_status(500))?;
        let mount = self
            .mounts
            .get(usize::from(decision.via.endpoint))
            .ok_or(Reject::with_status(500))?;
        let decided = mount.endpoint.connect_decided(decision.outcome)?;
        Ok(self.accept(decision.via, decided))
    }

    fn on_open(&self, conn: &mut Conn<'_, ChannelConn>) {
        if let Some(id) = conn.state().socket_id.take() {
            conn.set_id(&id);
        }
    }

    fn on_message(&self, conn: &mut Conn<'_, ChannelConn>, text: Utf8Bytes) {
        match conn.state().protocol {
            WireProtocol::Amber => self.amber_text(conn, &text),
            _ => self.phoenix_text(conn, &text),
        }
    }

    fn on_binary(&self, conn: &mut Conn<'_, ChannelConn>, data: Bytes) {
        if conn.state().protocol == WireProtocol::PhoenixV2 {
            self.binary(conn, &data);
        } else {
            tracing::debug!("dropped a binary message on an Amber socket");
        }
    }

    fn on_ping(&self, _: &mut Conn<'_, ChannelConn>, _: Bytes) {}

    fn on_rate_limited(&self, conn: &mut Conn<'_, ChannelConn>, text: Option<&str>) {
        let protocol = conn.state().protocol;
        let message = text.and_then(|text| phoenix::decode_text(text).ok());
        match (protocol, message) {
            // A Phoenix push waiting for its reply gets an error reply.
            (WireProtocol::PhoenixV2, Some(message)) if !message.msg_ref.is_null() => {
                let reply = Reply::reason("rate limited");
                let frame = phoenix::reply(
                    message.join_ref,
                    message.msg_ref,
                    &message.topic,
                    Status::Error,
                    reply.as_raw(),
                );
                let _ = conn.send_frame(frame);
            }
            (WireProtocol::PhoenixV2, _) => {}
            // Amber has no replies.
            _ => conn.close(CloseCode::POLICY_VIOLATION, "message rate exceeded"),
        }
    }

    fn on_pong(&self, _: &mut Conn<'_, ChannelConn>, _: Bytes) {}

    fn on_heartbeat(&self, conn: &mut Conn<'_, ChannelConn>) {
        // amber.js treats the text `ping` as liveness and reconnects after
        // 100 s without one; the WebSocket ping went out with it.
        if conn.state().protocol == WireProtocol::Amber {
            let _ = conn.send_frame(amber::heartbeat());
        }
    }

    fn on_close(&self, conn: &mut Conn<'_, ChannelConn>, _code: CloseCode, _reason: &str) {
        for join in std::mem::take(&mut conn.state().joined) {
            count(&self.counters.leaves);
            self.run(conn, &join, None, Call::Leave(LeaveReason::Disconnected));
        }
        for tracked in std::mem::take(&mut conn.state().tracked) {
            self.presence.untrack(&tracked);
        }
    }

    fn delivery(&self, kind: SubscriptionKind, broadcast: &Broadcast) -> Delivery {
        match kind {
            SubscriptionKind::Join {
                with_server: false,
                recovering: false,
                endpoint,
                route,
            } if !self.intercepts(endpoint, route, broadcast) => Delivery::Frame,
            SubscriptionKind::Plain => Delivery::Frame,
            _ => Delivery::Callback,
        }
    }

    fn on_broadcast(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        kind: SubscriptionKind,
        broadcast: &Broadcast,
    ) {
        self.channel_broadcast(conn, kind, broadcast);
    }

    fn on_info(&self, conn: &mut Conn<'_, ChannelConn>, message: &AppMessage) {
        self.app_info(conn, message);
    }

    fn on_stream_gap(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        topic: &str,
        (epoch, last_missing): (&str, u64),
    ) {
        self.stream_gap(conn, topic, epoch, last_missing);
    }
}
