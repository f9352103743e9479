//! What a channel callback can do: read and change the connection's
//! assigns, push to its client, reply, broadcast, and subscribe on the
//! server side.

use std::{any::Any, sync::Arc, time::Duration};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{
    JoinLater, Reply,
    handler::{ChannelConn, resubscribe},
    history::Histories,
    presence::{PRESENCE_STATE, PresenceError, PresenceTracker},
    timers::Timers,
};
use crate::{
    broadcast::Broadcast,
    conn::SendError,
    protocol::{
        WireProtocol, amber,
        phoenix::{self, OwnedRef, Ref, ref_or_null},
    },
    reactor::{AppMessage, Conn, ConnHandle},
    wire::CloseCode,
};

/// One joined topic of a connection.
#[derive(Debug, Clone)]
pub(crate) struct JoinInfo {
    pub(crate) topic: Arc<str>,
    /// The join ref (none for Amber, which has no refs).
    pub(crate) join_ref: Option<OwnedRef>,
    pub(crate) protocol: WireProtocol,
    pub(crate) route: u16,
}

impl JoinInfo {
    /// The join ref to write in messages of this channel.
    pub(crate) fn join_ref(&self) -> Ref<'_> {
        ref_or_null(self.join_ref.as_ref())
    }
}

/// The context of one channel callback, for the topic it concerns.
pub struct ChannelContext<'c, 'a, A> {
    pub(crate) assigns: &'c mut A,
    pub(crate) conn: &'c mut Conn<'a, ChannelConn>,
    pub(crate) join: &'c JoinInfo,
    /// The ref of the push being handled, if it carried one.
    pub(crate) msg_ref: Option<Ref<'c>>,
    pub(crate) replied: bool,
    /// Whether this is the join callback: pushes wait for the join reply.
    pub(crate) joining: bool,
    pub(crate) presence: &'c PresenceTracker,
    pub(crate) timers: &'c Timers,
    pub(crate) history: &'c Histories,
}

/// An application message for one channel of a connection (what
/// [`Channel::handle_app_info`](super::Channel::handle_app_info) receives).
pub(crate) struct ChannelInfo {
    pub(crate) topic: Arc<str>,
    pub(crate) message: Arc<dyn Any + Send + Sync>,
}

/// Ends a connection's channel of `topic`, as if it stopped (what
/// [`EngineHandle::unsubscribe`](super::EngineHandle::unsubscribe) sends).
pub(crate) struct Removal {
    pub(crate) topic: Arc<str>,
}

/// A channel of a connection, for other threads: sends it application
/// messages (its [`handle_app_info`](super::Channel::handle_app_info)).
/// `Clone + Send + Sync`; a message for a connection or channel that has
/// gone is dropped.
#[derive(Debug, Clone)]
pub struct ChannelHandle {
    conn: ConnHandle,
    topic: Arc<str>,
}

impl ChannelHandle {
    /// Hands `message` to the channel on its connection's loop.
    pub fn send<T: Any + Send + Sync>(&self, message: T) -> Result<(), SendError> {
        self.conn.send_info(channel_info(&self.topic, message))
    }
}

/// A later reply to a client's push (Phoenix's `socket_ref` with
/// `reply/2`): answer from any thread, once. `Send + Sync`.
#[derive(Debug)]
pub struct ReplyHandle {
    conn: ConnHandle,
    join_ref: Option<OwnedRef>,
    msg_ref: OwnedRef,
    topic: Arc<str>,
}

impl ReplyHandle {
    /// Sends the reply.
    pub fn reply(self, status: phoenix::Status, response: &Reply) -> Result<(), SendError> {
        let frame = phoenix::reply(
            ref_or_null(self.join_ref.as_ref()),
            self.msg_ref.get(),
            &self.topic,
            status,
            response.as_raw(),
        );
        self.conn.send_frame(frame)
    }
}

/// `message` for the channel of `topic`.
fn channel_info<T: Any + Send + Sync>(topic: &Arc<str>, message: T) -> AppMessage {
    Arc::new(ChannelInfo {
        topic: Arc::clone(topic),
        message: Arc::new(message),
    })
}

impl<A> std::fmt::Debug for ChannelContext<'_, '_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelContext")
            .field("topic", &self.join.topic)
            .field("join_ref", &self.join.join_ref)
            .finish()
    }
}

impl<A> ChannelContext<'_, '_, A> {
    /// The topic, such as `room:lobby`.
    pub fn topic(&self) -> &str {
        &self.join.topic
    }

    /// The connection's assigns, shared by its channels.
    pub fn assigns(&mut self) -> &mut A {
        self.assigns
    }

    /// Pushes an event to this client only.
    pub fn push<T: Serialize + ?Sized>(&mut self, event: &str, payload: &T) {
        let Some(payload) = to_payload(payload) else {
            return;
        };
        let frame = encode_push(self.join, event, &payload);
        self.send_push(frame);
    }

    /// Sends a push to this client, or, from `handle_joined`, keeps it
    /// until the join reply has gone (as Phoenix pushes from `after_join`).
    fn send_push(&mut self, frame: Bytes) {
        if self.joining {
            self.conn.state().after_join.push(frame);
        } else {
            // A closing connection refuses; nothing more to do then.
            let _ = self.conn.send_frame(frame);
        }
    }

    /// Replies to the client's push (Phoenix `phx_reply` with the push's
    /// ref). Does nothing for a push without a ref, for Amber (which has no
    /// replies), or after a first reply.
    pub fn reply(&mut self, status: phoenix::Status, response: &Reply) {
        let Some(msg_ref) = self.msg_ref else {
            return;
        };
        if self.replied || self.join.protocol != WireProtocol::PhoenixV2 {
            return;
        }
        self.replied = true;
        let frame = phoenix::reply(
            self.join.join_ref(),
            msg_ref,
            &self.join.topic,
            status,
            response.as_raw(),
        );
        let _ = self.conn.send_frame(frame);
    }

    /// Pushes binary `data` under `event` to this client (Phoenix binary V2;
    /// Amber has no binary messages, so nothing is sent there).
    pub fn push_binary(&mut self, event: &str, data: &[u8]) {
        if self.join.protocol != WireProtocol::PhoenixV2 {
            return;
        }
        let join_ref = self.join.join_ref().value();
        match phoenix::binary_push(&join_ref, &self.join.topic, event, data) {
            Ok(frame) => self.send_push(frame),
            Err(err) => tracing::warn!(%err, "binary push not sent"),
        }
    }

    /// Replies to the client's push with binary `data` (Phoenix binary V2
    /// reply), under the same rules as [`reply`](Self::reply).
    pub fn reply_binary(&mut self, status: phoenix::Status, data: &[u8]) {
        let Some(msg_ref) = self.msg_ref else {
            return;
        };
        if self.replied || self.join.protocol != WireProtocol::PhoenixV2 {
            return;
        }
        self.replied = true;
        let join_ref = self.join.join_ref().value();
        let frame =
            phoenix::binary_reply(&join_ref, &msg_ref.value(), &self.join.topic, status, data);
        match frame {
            Ok(frame) => {
                let _ = self.conn.send_frame(frame);
            }
            Err(err) => tracing::warn!(%err, "binary reply not sent"),
        }
    }

    /// Broadcasts binary `data` under `event` to every Phoenix subscriber of
    /// this topic; this client too if `include_self`.
    pub fn broadcast_binary(&mut self, event: &str, data: &[u8], include_self: bool) {
        let topic = Arc::clone(&self.join.topic);
        let Some(entry) = self.conn.topic(&topic) else {
            return;
        };
        match Broadcast::channel_binary(&topic, event, data, &entry) {
            Ok(broadcast) => self.conn.broadcast(broadcast, include_self),
            Err(err) => tracing::warn!(%err, "binary broadcast not sent"),
        }
    }

    /// Broadcasts a client's message as it came, to every subscriber of
    /// this topic, this client included (Amber's `rebroadcast!`). The raw
    /// payload is copied into the frame as is: never parsed, validated or
    /// serialized again.
    pub fn rebroadcast(&mut self, event: &str, payload: &RawValue) {
        self.send_broadcast(event, payload.to_owned(), true);
    }

    /// Broadcasts to every subscriber of this topic, this client included.
    pub fn broadcast<T: Serialize + ?Sized>(&mut self, event: &str, payload: &T) {
        self.broadcast_to(event, payload, true);
    }

    /// Broadcasts to every subscriber of this topic but this client.
    pub fn broadcast_from<T: Serialize + ?Sized>(&mut self, event: &str, payload: &T) {
        self.broadcast_to(event, payload, false);
    }

    fn broadcast_to<T: Serialize + ?Sized>(
        &mut self,
        event: &str,
        payload: &T,
        include_self: bool,
    ) {
        if let Some(payload) = to_payload(payload) {
            self.send_broadcast(event, payload, include_self);
        }
    }

    fn send_broadcast(&mut self, event: &str, payload: Box<RawValue>, include_self: bool) {
        let topic = Arc::clone(&self.join.topic);
        if let Some(rule) = self.history.rule_for(&topic) {
            let exclude = (!include_self).then(|| self.conn.exclusion());
            self.history.publish(&topic, rule, event, payload, exclude);
            return;
        }
        let Some(entry) = self.conn.topic(&topic) else {
            return;
        };
        let broadcast = Broadcast::channel(&topic, event, payload, &entry);
        self.conn.broadcast(broadcast, include_self);
    }

    /// A handle to this channel for other threads (a background job's
    /// answer comes back to [`handle_app_info`](super::Channel::handle_app_info)).
    pub fn handle(&self) -> ChannelHandle {
        ChannelHandle {
            conn: self.conn.handle(),
            topic: Arc::clone(&self.join.topic),
        }
    }

    /// Hands `message` to this channel's
    /// [`handle_app_info`](super::Channel::handle_app_info) after `delay`
    /// (Phoenix's `Process.send_after(self(), ...)`; `Duration::ZERO` is
    /// `send(self(), ...)`, as for `:after_join`). Dropped if the channel or
    /// connection has gone by then.
    pub fn send_after<T: Any + Send + Sync>(&mut self, delay: Duration, message: T) {
        let message = channel_info(&self.join.topic, message);
        self.timers.send_after(delay, self.conn.handle(), message);
    }

    /// Ends this channel once the callback returns (Phoenix's `{:stop,
    /// ...}`): the Phoenix client gets `phx_close`, and
    /// [`handle_leave`](super::Channel::handle_leave) runs with
    /// [`LeaveReason::Stopped`](super::LeaveReason::Stopped).
    pub fn stop(&mut self) {
        self.conn.state().stopping = true;
    }

    /// Closes the whole connection (every channel of it) with 1000.
    pub fn close_socket(&mut self) {
        self.conn.close(CloseCode::NORMAL, "");
    }

    /// Leaves the join being handled for later, to be decided off the loop
    /// (a backend call): hand the returned [`JoinLater`] to another
    /// thread and answer it there; the channel's
    /// [`handle_join_answer`](super::Channel::handle_join_answer) then
    /// decides on the loop. What `handle_joined` returns, pushes or tracks
    /// after this is dropped. `None` outside a join callback.
    pub fn join_later(&mut self) -> Option<JoinLater> {
        if !self.joining {
            return None;
        }
        let state = self.conn.state();
        state.next_join_id += 1;
        let id = state.next_join_id;
        state.deferred_join = Some(id);
        let topic = Arc::clone(&self.join.topic);
        Some(JoinLater::new(self.conn.handle(), topic, id))
    }

    /// Takes over the reply to the push being handled, to answer it later
    /// from any thread (Phoenix's `socket_ref`). `None` for a push without
    /// a ref, for Amber (no replies) and once replied.
    pub fn reply_later(&mut self) -> Option<ReplyHandle> {
        let msg_ref = self.msg_ref?;
        if self.replied || self.join.protocol != WireProtocol::PhoenixV2 {
            return None;
        }
        self.replied = true;
        Some(ReplyHandle {
            conn: self.conn.handle(),
            join_ref: self.join.join_ref.clone(),
            msg_ref: OwnedRef::keep(msg_ref)?,
            topic: Arc::clone(&self.join.topic),
        })
    }

    /// This channel's own assigns, beside the socket's shared ones
    /// ([`assigns`](Self::assigns)): created with `T::default()` on first
    /// use, gone with the channel.
    pub fn channel_assigns<T: Any + Send + Default>(&mut self) -> &mut T {
        let topic = &self.join.topic;
        let all = &mut self.conn.state().channel_assigns;
        let at = match all
            .iter()
            .position(|(owner, value)| owner == topic && value.is::<T>())
        {
            Some(at) => at,
            None => {
                all.retain(|(owner, _)| owner != topic);
                all.push((Arc::clone(topic), Box::new(T::default())));
                all.len() - 1
            }
        };
        all[at]
            .1
            .downcast_mut::<T>()
            .unwrap_or_else(|| unreachable!("the entry at `at` holds a T"))
    }

    /// Broadcasts `event` with `payload` to every subscriber of another
    /// `topic` (Phoenix's `Endpoint.broadcast` from a channel).
    pub fn broadcast_topic<T: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        event: &str,
        payload: &T,
    ) {
        let Some(payload) = to_payload(payload) else {
            return;
        };
        if let Some(rule) = self.history.rule_for(topic) {
            self.history.publish(topic, rule, event, payload, None);
            return;
        }
        let Some(entry) = self.conn.topic(topic) else {
            return;
        };
        let broadcast = Broadcast::channel(topic, event, payload, &entry);
        self.conn.broadcast(broadcast, true);
    }

    /// Tracks this connection's presence on this channel's topic under
    /// `key` (a user id; one user's several connections are one key with
    /// several metas), with `meta`, a JSON object (`{"online_at": ...}`).
    /// Subscribers get it in the next `presence_diff`; when tracked from
    /// `handle_joined`, this client also gets the topic's `presence_state`
    /// after its join reply. Untracked when the channel ends.
    pub fn track<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        meta: &T,
    ) -> Result<(), PresenceError> {
        let tracked = self.presence.track(&self.join.topic, key, meta)?;
        let state = self.conn.state();
        state.tracked.push(tracked);
        if self.joining {
            state.presence_state_after_join = true;
        }
        Ok(())
    }

    /// Replaces the meta of this connection's presences under `key` on
    /// this topic: a `presence_diff` joins the new meta (with
    /// `phx_ref_prev`) and leaves the old. Returns whether there was one.
    pub fn update_presence<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        meta: &T,
    ) -> Result<bool, PresenceError> {
        let presence = self.presence;
        let topic = &self.join.topic;
        let mut updated = false;
        for tracked in &mut self.conn.state().tracked {
            if tracked.topic == *topic
                && &*tracked.key == key
                && let Some(new) = presence.update(tracked, meta)?
            {
                *tracked = new;
                updated = true;
            }
        }
        Ok(updated)
    }

    /// Untracks this connection's presences under `key` on this topic.
    pub fn untrack(&mut self, key: &str) {
        let presence = self.presence;
        let topic = &self.join.topic;
        self.conn.state().tracked.retain(|tracked| {
            let gone = tracked.topic == *topic && &*tracked.key == key;
            if gone {
                presence.untrack(tracked);
            }
            !gone
        });
    }

    /// Pushes this topic's presences to this client as `presence_state`
    /// (after the join reply, from `handle_joined`): for a client that
    /// watches who is present without being tracked itself.
    pub fn push_presence_state(&mut self) {
        if self.joining {
            self.conn.state().presence_state_after_join = true;
            return;
        }
        send_presence_state(self.conn, self.join, self.presence);
    }

    /// The presences on this topic, in `presence_state` form, as of the
    /// last `presence_diff` (at most one diff window old).
    pub fn presence_list(&self) -> Box<RawValue> {
        self.presence.state_json(&self.join.topic)
    }

    /// Subscribes this channel, on the server side, to `topic`: its
    /// broadcasts come to [`Channel::handle_info`](super::Channel::handle_info).
    /// Ends when the channel does. Subscriptions compose: the client may
    /// also have joined `topic` (it still gets its frames), and other
    /// channels of the connection may subscribe to it too (each gets its
    /// own `handle_info`); ending one leaves the others. Returns `false`
    /// (and does nothing) if this channel already subscribes to `topic`.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        let owner = &self.join.topic;
        let state = self.conn.state();
        let known = state
            .infos
            .iter()
            .any(|(info, by)| &**info == topic && by == owner);
        if known {
            return false;
        }
        state.infos.push((Arc::from(topic), Arc::clone(owner)));
        resubscribe(self.conn, topic);
        true
    }

    /// Ends this channel's server-side subscription to `topic`; the
    /// client's join of it and other channels' subscriptions stay.
    pub fn unsubscribe(&mut self, topic: &str) {
        let owner = &self.join.topic;
        let state = self.conn.state();
        let before = state.infos.len();
        state
            .infos
            .retain(|(info, by)| !(&**info == topic && by == owner));
        if state.infos.len() != before {
            resubscribe(self.conn, topic);
        }
    }
}

/// Serializes a payload; an unserializable one is logged and skipped.
fn to_payload<T: Serialize + ?Sized>(payload: &T) -> Option<Box<RawValue>> {
    match serde_json::value::to_raw_value(payload) {
        Ok(raw) => Some(raw),
        Err(err) => {
            tracing::warn!(%err, "channel payload could not be serialized; not sent");
            None
        }
    }
}

/// Pushes the topic's `presence_state` to one client. For Phoenix the
/// frame is this client's start and the topic's shared snapshot, so a join
/// storm does not copy the list once per joiner.
pub(crate) fn send_presence_state(
    conn: &mut Conn<'_, ChannelConn>,
    join: &JoinInfo,
    presence: &PresenceTracker,
) {
    let state = presence.state(&join.topic);
    if join.protocol == WireProtocol::PhoenixV2 {
        let close = Bytes::from_static(b"]");
        let rest = state.len() + close.len();
        let head = phoenix::push_head(join.join_ref(), &join.topic, PRESENCE_STATE, rest);
        let _ = conn.send_frame_parts(&[head, state, close]);
    } else {
        let state = presence.state_json(&join.topic);
        let _ = conn.send_frame(encode_push(join, PRESENCE_STATE, &state));
    }
}

/// A push to one client, in its protocol.
pub(crate) fn encode_push(join: &JoinInfo, event: &str, payload: &RawValue) -> Bytes {
    match join.protocol {
        WireProtocol::Amber => amber::message(&join.topic, event, payload),
        _ => phoenix::push(join.join_ref(), &join.topic, event, payload),
    }
}
