//! What a publish carries to the loops: the topic, the frame already encoded
//! for each wire protocol that has subscribers, and, for channel protocols,
//! the event and raw payload that interceptors and server-side subscribers
//! see.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::{protocol::WireProtocol, pubsub::ConnId};

/// The event and payload of a channel broadcast.
#[derive(Debug)]
pub struct ChannelMessage {
    /// The event, such as `new_msg`.
    pub event: Box<str>,
    /// The payload, raw JSON.
    pub payload: Box<RawValue>,
}

/// A message published to a topic.
///
/// Built once by the publisher with one frame per wire protocol that has
/// subscribers; every loop with subscribers gets it, copies each frame once
/// (so that each subscriber's clone touches a refcount private to the loop),
/// and queues the frame to every subscriber, or hands the broadcast to the
/// handler for subscriptions that intercept it.
#[derive(Debug, Clone)]
pub struct Broadcast {
    topic: Arc<str>,
    message: Option<Arc<ChannelMessage>>,
    frames: [Option<Bytes>; WireProtocol::COUNT],
    /// A binary channel broadcast: its frames, not its message, are what
    /// other nodes need.
    binary: bool,
    /// The connection that must not receive it (`broadcast_from`): its
    /// loop and its id there.
    exclude: Option<(usize, ConnId)>,
}

/// How a broadcast reaches one subscription (see
/// [`Handler::delivery`](crate::Handler::delivery)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queue the frame encoded for the subscription's protocol.
    Frame,
    /// Call [`Handler::on_broadcast`](crate::Handler::on_broadcast) for it.
    Callback,
    /// Nothing.
    Skip,
}

impl Broadcast {
    /// A plain WebSocket publish: `frame` goes to raw subscribers as is.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::{Broadcast, protocol::WireProtocol, wire::text_frame};
    ///
    /// let broadcast = Broadcast::raw("ticker", text_frame("42"));
    /// assert_eq!(broadcast.topic(), "ticker");
    /// assert!(broadcast.frame(WireProtocol::Raw).is_some());
    /// assert!(broadcast.event().is_none());
    /// ```
    pub fn raw(topic: &str, frame: Bytes) -> Self {
        let mut frames: [Option<Bytes>; WireProtocol::COUNT] = Default::default();
        frames[WireProtocol::Raw.index()] = Some(frame);
        Self::frames(topic, frames)
    }

    /// Frames already encoded per protocol, with no channel message.
    pub fn frames(topic: &str, frames: [Option<Bytes>; WireProtocol::COUNT]) -> Self {
        Self {
            topic: Arc::from(topic),
            message: None,
            frames,
            binary: false,
            exclude: None,
        }
    }

    /// A channel broadcast, with its frames per protocol (`None` for
    /// protocols without subscribers).
    pub fn channel(
        topic: &str,
        message: ChannelMessage,
        frames: [Option<Bytes>; WireProtocol::COUNT],
    ) -> Self {
        Self {
            topic: Arc::from(topic),
            message: Some(Arc::new(message)),
            frames,
            binary: false,
            exclude: None,
        }
    }

    /// Marks a channel broadcast as binary (its frames carry the data).
    pub(crate) fn into_binary(mut self) -> Self {
        self.binary = true;
        self
    }

    /// Whether this is a binary channel broadcast.
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
    pub(crate) fn is_binary(&self) -> bool {
        self.binary
    }

    /// The channel message, if this is a channel broadcast.
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
    pub(crate) fn message(&self) -> Option<&ChannelMessage> {
        self.message.as_deref()
    }

    /// Excludes one connection (the sender, for `broadcast_from`).
    pub(crate) fn excluding(mut self, loop_index: usize, conn: ConnId) -> Self {
        self.exclude = Some((loop_index, conn));
        self
    }

    /// Whether the connection `conn` of loop `loop_index` is excluded.
    pub(crate) fn excludes(&self, loop_index: usize, conn: ConnId) -> bool {
        self.exclude == Some((loop_index, conn))
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The event of a channel broadcast.
    pub fn event(&self) -> Option<&str> {
        self.message.as_ref().map(|message| &*message.event)
    }

    /// The payload of a channel broadcast.
    pub fn payload(&self) -> Option<&RawValue> {
        self.message.as_ref().map(|message| &*message.payload)
    }

    /// The frame encoded for `protocol`, if there is one.
    pub fn frame(&self, protocol: WireProtocol) -> Option<&Bytes> {
        self.frames[protocol.index()].as_ref()
    }

    /// The same broadcast with private copies of the frames, for a loop
    /// other than the publisher's.
    pub(crate) fn localized(&self) -> Self {
        Self {
            topic: Arc::clone(&self.topic),
            message: self.message.clone(),
            frames: self
                .frames
                .each_ref()
                .map(|frame| frame.as_ref().map(|frame| Bytes::copy_from_slice(frame))),
            binary: self.binary,
            exclude: self.exclude,
        }
    }
}
