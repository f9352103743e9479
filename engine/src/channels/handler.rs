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

use super::{
    LeaveReason, Reply,
    context::JoinInfo,
    engine::{Call, Mount},
    stats::{ChannelCounters, count},
};
use crate::{
    Accept, Broadcast, Conn, Delivery, Handler, Reject, Request,
    protocol::{
        WireProtocol, amber,
        phoenix::{self, Ref, Status},
    },
    wire::{CloseCode, Utf8Bytes},
};

/// The reply to a join or push of a topic no route matches.
const UNMATCHED_TOPIC: &str = "unmatched topic";
/// The reply past the per-connection channel limit.
const TOO_MANY_CHANNELS: &str = "too many channels joined";
/// Where socket ids are subscribed, for `disconnect`.
pub(crate) const SOCKET_ID_PREFIX: &str = "herald.socket/";

/// What a subscription is, packed into the reactor's tag with the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// A client's join: gets the frame, or `handle_out` for intercepted
    /// events.
    Client,
    /// A channel's server-side subscription: `handle_info`.
    Info,
    /// The socket id: a broadcast there closes the connection.
    SocketId,
}

impl Tag {
    pub(crate) fn pack(self, endpoint: u16, route: u16) -> u32 {
        let kind = match self {
            Self::Client => 1,
            Self::Info => 2,
            Self::SocketId => 3,
        };
        (kind << 28) | (u32::from(endpoint & 0x0FFF) << 16) | u32::from(route)
    }

    fn unpack(tag: u32) -> Option<(Self, u16, u16)> {
        let kind = match tag >> 28 {
            1 => Self::Client,
            2 => Self::Info,
            3 => Self::SocketId,
            _ => return None,
        };
        Some((kind, ((tag >> 16) & 0x0FFF) as u16, tag as u16))
    }
}

/// A connection's state in the channels layer.
pub(crate) struct ChannelConn {
    endpoint: u16,
    protocol: WireProtocol,
    /// The socket's assigns; taken out while a channel callback holds them.
    assigns: Option<Box<dyn Any + Send>>,
    joined: Vec<JoinInfo>,
    /// Server-side subscriptions: (topic, the joined topic that made it).
    pub(crate) infos: Vec<(Arc<str>, Arc<str>)>,
    socket_id: Option<Arc<str>>,
}

impl std::fmt::Debug for ChannelConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConn")
            .field("endpoint", &self.endpoint)
            .field("joined", &self.joined)
            .finish()
    }
}

/// A string as JSON text, as refs are stored.
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| String::from("null"))
}

/// The channels layer's handler.
pub(crate) struct ChannelsHandler {
    pub(crate) mounts: Vec<Mount>,
    pub(crate) max_channels: usize,
    pub(crate) counters: Arc<ChannelCounters>,
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
        msg_ref: Option<&str>,
        call: Call<'_>,
    ) -> Option<Option<super::JoinResult>> {
        let endpoint = usize::from(conn.state().endpoint);
        let mount = self.mounts.get(endpoint)?;
        let mut assigns = conn.state().assigns.take()?;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            mount
                .endpoint
                .call(join.route, &mut *assigns, conn, join, msg_ref, call)
        }));
        conn.state().assigns = Some(assigns);
        match outcome {
            Ok(result) => Some(result),
            Err(_) => {
                tracing::error!(
                    topic = &*join.topic,
                    "a channel callback panicked; closing the channel"
                );
                None
            }
        }
    }

    /// Ends a channel after a panic: `phx_error` to a Phoenix client, and
    /// its subscriptions go.
    fn crash(&self, conn: &mut Conn<'_, ChannelConn>, join: &JoinInfo) {
        if join.protocol == WireProtocol::PhoenixV2 {
            let _ = conn.send_frame(phoenix::error(Ref::stored(&join.join_ref), &join.topic));
        }
        self.forget(conn, &join.topic);
    }

    /// Removes a joined topic and the server-side subscriptions it made.
    fn forget(&self, conn: &mut Conn<'_, ChannelConn>, topic: &str) {
        count(&self.counters.leaves);
        let state = conn.state();
        state.joined.retain(|join| &*join.topic != topic);
        let mut gone = Vec::new();
        state.infos.retain(|(info, owner)| {
            let keep = &**owner != topic;
            if !keep {
                gone.push(Arc::clone(info));
            }
            keep
        });
        conn.unsubscribe(topic);
        for info in gone {
            conn.unsubscribe(&info);
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
        let Some(payload) = (match message.payload {
            phoenix::Payload::Json(payload) => Some(payload),
            phoenix::Payload::Binary(_) => None,
        }) else {
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
            (topic, phoenix::JOIN) => {
                self.join(conn, topic, join_ref.as_json(), Some(msg_ref), payload)
            }
            (topic, phoenix::LEAVE) => self.leave(conn, topic, join_ref.as_json(), Some(msg_ref)),
            (topic, event) => self.message(
                conn,
                topic,
                event,
                join_ref.as_json(),
                Some(msg_ref),
                payload,
            ),
        }
    }

    fn phoenix_reply(
        conn: &mut Conn<'_, ChannelConn>,
        join_ref: &str,
        msg_ref: Option<Ref<'_>>,
        topic: &str,
        status: Status,
        response: &Reply,
    ) {
        if conn.state().protocol != WireProtocol::PhoenixV2 {
            return;
        }
        let msg_ref = msg_ref.unwrap_or(Ref::NULL);
        let frame = phoenix::reply(
            Ref::stored(join_ref),
            msg_ref,
            topic,
            status,
            response.as_raw(),
        );
        let _ = conn.send_frame(frame);
    }

    /// The error reply for a topic no route matches, or one not joined.
    fn unmatched(
        conn: &mut Conn<'_, ChannelConn>,
        join_ref: &str,
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
        let null = RawValue::NULL;
        let payload = message.payload.unwrap_or(null);
        match message.event {
            amber::Event::Join => self.join(conn, &message.topic, "null", None, payload),
            amber::Event::Leave => self.leave(conn, &message.topic, "null", None),
            amber::Event::Message => {
                self.message(
                    conn,
                    &message.topic,
                    &message.subject,
                    "null",
                    None,
                    payload,
                );
            }
        }
    }

    // ---- Both protocols ----------------------------------------------------------

    fn join(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        topic: &str,
        join_ref: &str,
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
            // Phoenix closes the old channel (with the OLD join ref) before
            // the new join.
            if protocol == WireProtocol::PhoenixV2 {
                let _ = conn.send_frame(phoenix::close(Ref::stored(&old.join_ref), topic));
            }
            if self
                .run(conn, &old, None, Call::Leave(LeaveReason::Rejoined))
                .is_none()
            {
                tracing::debug!(topic, "handle_leave panicked on rejoin");
            }
            self.forget(conn, topic);
        }
        if conn.state().joined.len() >= self.max_channels {
            count(&self.counters.joins_refused);
            return Self::phoenix_reply(
                conn,
                join_ref,
                msg_ref,
                topic,
                Status::Error,
                &Reply::reason(TOO_MANY_CHANNELS),
            );
        }
        let join = JoinInfo {
            topic: Arc::from(topic),
            join_ref: Box::from(join_ref),
            protocol,
            route,
        };
        match self.run(conn, &join, None, Call::Join(payload)) {
            Some(Some(Ok(response))) => {
                count(&self.counters.joins);
                let endpoint = conn.state().endpoint;
                conn.subscribe_with(topic, protocol, Tag::Client.pack(endpoint, route));
                conn.state().joined.push(join);
                Self::phoenix_reply(conn, join_ref, msg_ref, topic, Status::Ok, &response);
            }
            Some(Some(Err(response))) => {
                count(&self.counters.joins_refused);
                Self::phoenix_reply(conn, join_ref, msg_ref, topic, Status::Error, &response);
            }
            Some(None) | None => {
                count(&self.counters.joins_refused);
                Self::phoenix_reply(
                    conn,
                    join_ref,
                    msg_ref,
                    topic,
                    Status::Error,
                    &Reply::reason("join crashed"),
                );
            }
        }
    }

    fn leave(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        topic: &str,
        join_ref: &str,
        msg_ref: Option<Ref<'_>>,
    ) {
        if let Some(join) = Self::joined(conn, topic) {
            if join.protocol == WireProtocol::PhoenixV2 && *join.join_ref != *join_ref {
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
        join_ref: &str,
        msg_ref: Option<Ref<'_>>,
        payload: &RawValue,
    ) {
        let Some(join) = Self::joined(conn, topic) else {
            return Self::unmatched(conn, join_ref, msg_ref, topic);
        };
        if join.protocol == WireProtocol::PhoenixV2 && *join.join_ref != *join_ref {
            return;
        }
        count(&self.counters.client_messages);
        let msg_ref = msg_ref.filter(|r| !r.is_null()).map(|r| r.as_json());
        if self
            .run(conn, &join, msg_ref, Call::Message(event, payload))
            .is_none()
        {
            self.crash(conn, &join);
        }
    }
}

impl Handler for ChannelsHandler {
    type State = ChannelConn;

    fn on_connect(&self, request: &Request) -> Result<Accept<ChannelConn>, Reject> {
        let (index, mount) = self
            .mounts
            .iter()
            .enumerate()
            .find(|(_, mount)| mount.path == request.path())
            .ok_or(Reject::with_status(404))?;
        if mount.protocol == WireProtocol::PhoenixV2 {
            // This server speaks the V2 serializer; phoenix.js sends
            // vsn=2.0.0 itself.
            let vsn = request.query_param("vsn");
            if vsn.as_deref().is_some_and(|vsn| !vsn.starts_with("2.")) {
                return Err(Reject::with_status(400));
            }
        }
        let (assigns, socket_id) = mount.endpoint.connect(request)?;
        let state = ChannelConn {
            endpoint: index as u16,
            protocol: mount.protocol,
            assigns: Some(assigns),
            joined: Vec::new(),
            infos: Vec::new(),
            socket_id: socket_id.map(Arc::from),
        };
        let accept = Accept::new(state);
        // Token auth travels in Sec-WebSocket-Protocol; a server that reads
        // it must echo "phoenix".
        Ok(if request.subprotocols().any(|p| p == "phoenix") {
            accept.subprotocol("phoenix")
        } else {
            accept
        })
    }

    fn on_open(&self, conn: &mut Conn<'_, ChannelConn>) {
        if let Some(id) = conn.state().socket_id.clone() {
            let topic = format!("{SOCKET_ID_PREFIX}{id}");
            conn.subscribe_with(&topic, WireProtocol::Raw, Tag::SocketId.pack(0, 0));
        }
    }

    fn on_message(&self, conn: &mut Conn<'_, ChannelConn>, text: Utf8Bytes) {
        match conn.state().protocol {
            WireProtocol::Amber => self.amber_text(conn, &text),
            _ => self.phoenix_text(conn, &text),
        }
    }

    fn on_binary(&self, conn: &mut Conn<'_, ChannelConn>, data: Bytes) {
        if conn.state().protocol != WireProtocol::PhoenixV2 {
            tracing::debug!("dropped a binary message on an Amber socket");
            return;
        }
        let push = match phoenix::decode_binary(&data) {
            Ok(push) => push,
            Err(err) => {
                tracing::debug!(%err, "dropped a malformed binary message");
                return;
            }
        };
        // Stored refs are JSON text; binary frames carry them bare.
        let join_ref = quote(push.join_ref);
        let msg_ref = (!push.msg_ref.is_empty()).then(|| quote(push.msg_ref));
        let Some(join) = Self::joined(conn, push.topic) else {
            let msg_ref = msg_ref.as_deref().map(Ref::stored);
            return Self::unmatched(conn, &join_ref, msg_ref, push.topic);
        };
        if *join.join_ref != *join_ref {
            return;
        }
        if self
            .run(
                conn,
                &join,
                msg_ref.as_deref(),
                Call::Binary(push.event, push.data),
            )
            .is_none()
        {
            self.crash(conn, &join);
        }
    }

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
    }

    fn delivery(&self, tag: u32, broadcast: &Broadcast) -> Delivery {
        match Tag::unpack(tag) {
            Some((Tag::Client, endpoint, route)) => {
                let intercepted = broadcast.event().is_some_and(|event| {
                    self.mounts
                        .get(usize::from(endpoint))
                        .is_some_and(|mount| mount.endpoint.intercepts(route, event))
                });
                if intercepted {
                    Delivery::Callback
                } else {
                    Delivery::Frame
                }
            }
            Some((Tag::Info | Tag::SocketId, _, _)) => Delivery::Callback,
            None => Delivery::Frame,
        }
    }

    fn on_broadcast(&self, conn: &mut Conn<'_, ChannelConn>, tag: u32, broadcast: &Broadcast) {
        match Tag::unpack(tag) {
            Some((Tag::SocketId, _, _)) => conn.close(CloseCode::GOING_AWAY, "disconnected"),
            Some((Tag::Client, _, _)) => {
                let (Some(event), Some(payload)) = (broadcast.event(), broadcast.payload()) else {
                    return;
                };
                if let Some(join) = Self::joined(conn, broadcast.topic())
                    && self
                        .run(conn, &join, None, Call::Out(event, payload))
                        .is_none()
                {
                    self.crash(conn, &join);
                }
            }
            Some((Tag::Info, _, _)) => {
                let owner = conn
                    .state()
                    .infos
                    .iter()
                    .find(|(info, _)| &**info == broadcast.topic())
                    .map(|(_, owner)| Arc::clone(owner));
                if let Some(join) = owner.and_then(|owner| Self::joined(conn, &owner))
                    && self.run(conn, &join, None, Call::Info(broadcast)).is_none()
                {
                    self.crash(conn, &join);
                }
            }
            None => {}
        }
    }
}
